"""1-D k-means on sorted values with prefix sums (DESIGN §9): assignment is a searchsorted of
the midpoints, a centroid is a range sum over a count. Lloyd from quantiles; optional exact zero."""
from __future__ import annotations

import torch


def lloyd_sorted(x_sorted: torch.Tensor, centroids: torch.Tensor, iters: int = 100, pin_zero: bool = False) -> torch.Tensor:
    """Lloyd iterations on ascending 1-D data; with `pin_zero` the centroid nearest 0 stays exactly 0."""
    x = x_sorted.double()
    n = x.numel()
    prefix = torch.cat([x.new_zeros(1), x.cumsum(0)])
    c = torch.sort(centroids.double()).values
    if pin_zero:
        c[c.abs().argmin()] = 0.0
    for _ in range(iters):
        bounds = torch.searchsorted(x, (c[1:] + c[:-1]) / 2)
        starts = torch.cat([bounds.new_zeros(1), bounds])
        ends = torch.cat([bounds, bounds.new_full((1,), n)])
        counts = (ends - starts).double()
        new = torch.where(counts > 0, (prefix[ends] - prefix[starts]) / counts.clamp_min(1), c)
        if pin_zero:
            new[c.abs().argmin()] = 0.0
        new = torch.sort(new).values
        if torch.equal(new, c):
            break
        c = new
    return c.float()


def quantile_init(x_sorted: torch.Tensor, k: int) -> torch.Tensor:
    n = x_sorted.numel()
    idx = ((torch.arange(k, dtype=torch.float64) + 0.5) / k * n).long().clamp_max(n - 1)
    return x_sorted[idx].float()


def kmeans_1d(values: torch.Tensor, k: int, pin_zero: bool = False, iters: int = 100) -> torch.Tensor:
    x = torch.sort(values.flatten().float()).values
    if x.numel() == 0:
        return torch.zeros(k)
    return lloyd_sorted(x, quantile_init(x, k), iters, pin_zero)


def sse(values: torch.Tensor, centroids: torch.Tensor) -> float:
    c = torch.sort(centroids.double()).values
    x = values.flatten().double()
    idx = torch.searchsorted((c[1:] + c[:-1]) / 2, x)
    return float(((x - c[idx]) ** 2).sum())
