"""1-D k-means on sorted values with prefix sums (DESIGN §9): assignment is a searchsorted of
the midpoints, a centroid is a range sum over a count.

Lloyd alone stops in a poor local minimum at large k (445 % above the optimal SSE at k = 256 from
quantiles), so `kmeans_1d` starts from the *optimal* clustering of a compressed copy of the data
(weighted bins; exact dynamic program, divide and conquer over the monotone split points, vectorized
per layer) and polishes it with Lloyd on all values. Optional exact zero (pinned after the DP)."""
from __future__ import annotations

import numpy as np
import torch

from ..compiled import kernels as compiled_module


def lloyd_sorted(x_sorted: torch.Tensor, centroids: torch.Tensor, iters: int = 100, pin_zero: bool = False) -> torch.Tensor:
    """Lloyd iterations on ascending 1-D data; with `pin_zero` the centroid nearest 0 stays exactly 0."""
    x = x_sorted.detach().double().cpu().numpy()
    return torch.from_numpy(_lloyd(x, _prefix(x), centroids.detach().double().cpu().numpy(), iters, pin_zero)).float()


def _prefix(x: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])


def _lloyd(x: np.ndarray, prefix: np.ndarray, centroids: np.ndarray, iters: int, pin_zero: bool) -> np.ndarray:
    """Lloyd on sorted float64 values in numpy: each step is k binary searches and k range sums, so its cost
    does not grow with n (torch's per-call overhead made 300 small steps cost more than the sort)."""
    n = x.size
    c = np.sort(centroids.astype(np.float64))
    if pin_zero:
        c[np.abs(c).argmin()] = 0.0
    for _ in range(iters):
        bounds = np.searchsorted(x, (c[1:] + c[:-1]) / 2, side="left")
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [n]])
        counts = (ends - starts).astype(np.float64)
        new = np.where(counts > 0, (prefix[ends] - prefix[starts]) / np.maximum(counts, 1.0), c)
        if pin_zero:
            new[np.abs(c).argmin()] = 0.0
        new.sort()
        if np.array_equal(new, c):
            break
        c = new
    return c


def _bins(x: np.ndarray, m: int, prefix: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(means, weights) of ≤ ~m runs of the sorted values: equal-count runs, equal-width runs and the
    most extreme values on their own (heavy tails want singleton clusters there)."""
    n = x.size
    if n <= m:
        return x.astype(np.float64), np.ones(n)
    half = m // 2
    tails = min(m // 8, n // 2)
    centre, scale = x[n // 2], max(float(x[(3 * n) // 4] - x[n // 4]), 1e-30)
    # equal widths in asinh((x − median) / IQR): linear in the bulk, log in heavy tails; the edges are mapped
    # back to x (asinh is monotone), so no value is transformed
    t = np.linspace(np.arcsinh((x[0] - centre) / scale), np.arcsinh((x[-1] - centre) / scale), half + 1)[1:-1]
    edges = np.unique(np.concatenate([
        [0, n], (np.arange(1, half) * n) // half, np.searchsorted(x, centre + scale * np.sinh(t)),
        np.arange(1, tails), np.arange(n - tails, n)]))
    prefix = _prefix(x) if prefix is None else prefix
    w = np.diff(edges).astype(np.float64)
    return (prefix[edges[1:]] - prefix[edges[:-1]]) / w, w


def optimal_weighted(mu: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Exact k-means of ascending weighted points (Wang & Song's dynamic program): D_j[i] = min_l
    D_{j−1}[l] + cost(l, i), whose best l is monotone in i, so each layer is a divide and conquer.
    Compiled with numba when that is installed (the `fast` extra; 10× faster at k = 256, where numpy
    spends its time in calls on small arrays; the import costs about a second once per process), else
    run breadth-first in numpy; both give the same answer bit for bit. DNNCOMPRESS_NO_NUMBA=1 forces numpy."""
    compiled = _numba_program()
    if compiled is not None and mu.size:
        mu, w = np.ascontiguousarray(mu, dtype=np.float64), np.ascontiguousarray(w, dtype=np.float64)
        return compiled(mu, w, int(min(k, mu.size)), float(np.average(mu, weights=w)))
    return _optimal_numpy(mu, w, k)


_COMPILED: list = []


def _numba_program():
    """The compiled dynamic program, built on first use (importing numba costs a second: never at import time)."""
    if not _COMPILED:
        _COMPILED.append(None)
        module = compiled_module("dnncompress.quant._kmeans_numba")
        if module is not None:
            _COMPILED[0] = module.optimal
    return _COMPILED[0]


def _optimal_numpy(mu: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """optimal_weighted in numpy: each layer's divide and conquer breadth-first, every segment of a level
    in one vectorized step."""
    m = mu.size
    k = min(k, m)
    shift = float(np.average(mu, weights=w))
    c = mu - shift  # centred: the prefix sums lose less to cancellation
    W = np.concatenate([[0.0], np.cumsum(w)])
    S = np.concatenate([[0.0], np.cumsum(w * c)])
    Q = np.concatenate([[0.0], np.cumsum(w * c * c)])

    def cost(a, b):  # SSE of points a..b−1 about their mean
        return (Q[b] - Q[a]) - (S[b] - S[a]) ** 2 / (W[b] - W[a])

    D = np.full(m + 1, np.inf)
    D[1:] = cost(np.zeros(m, dtype=np.int64), np.arange(1, m + 1))
    splits = []
    for j in range(2, k + 1):
        Dj, best_of = np.full(m + 1, np.inf), np.zeros(m + 1, dtype=np.int64)
        lo, hi, olo, ohi = (np.array([v]) for v in (j, m, j - 1, m - 1))
        while lo.size:
            mid = (lo + hi) // 2
            lens = np.minimum(ohi, mid - 1) - olo + 1
            offs = np.concatenate([[0], np.cumsum(lens)[:-1]])
            seg = np.repeat(np.arange(lo.size), lens)
            cand = olo[seg] + np.arange(seg.size) - offs[seg]
            val = D[cand] + cost(cand, mid[seg])
            mins = np.minimum.reduceat(val, offs)
            at = np.flatnonzero(val <= mins[seg])
            first = np.empty(at.size, dtype=bool)
            first[0] = True
            np.not_equal(seg[at][1:], seg[at][:-1], out=first[1:])
            best = cand[at[first]]
            Dj[mid], best_of[mid] = mins, best
            left, right = lo <= mid - 1, mid + 1 <= hi
            lo, hi, olo, ohi = (np.concatenate([lo[left], mid[right] + 1]), np.concatenate([mid[left] - 1, hi[right]]),
                                np.concatenate([olo[left], best[right]]), np.concatenate([best[left], ohi[right]]))
        D = Dj
        splits.append(best_of)
    bounds = [m]
    for best_of in reversed(splits):
        bounds.append(int(best_of[bounds[-1]]))
    b = np.array([0] + bounds[::-1])
    return (S[b[1:]] - S[b[:-1]]) / (W[b[1:]] - W[b[:-1]]) + shift


def kmeans_1d(values: torch.Tensor, k: int, pin_zero: bool = False, iters: int = 300) -> torch.Tensor:
    """k centroids of 1-D values: optimal on 16·k weighted bins, then Lloyd on every value. numpy sorts
    float32 3× faster than torch here, and the sort is most of the time at small k."""
    xs = np.sort(values.detach().flatten().float().cpu().numpy()).astype(np.float64)
    if xs.size == 0:
        return torch.zeros(k)
    prefix = _prefix(xs)
    start = optimal_weighted(*_bins(xs, max(16 * k, 1024), prefix), k)
    if start.size < k:  # fewer distinct runs than centroids: repeat (duplicates cost nothing)
        start = np.resize(start, k)
    start = start.astype(np.float32).astype(np.float64)  # the float32 start the torch path used: same answer
    return torch.from_numpy(_lloyd(xs, prefix, start, iters, pin_zero)).float()


def sse(values: torch.Tensor, centroids: torch.Tensor) -> float:
    c = torch.sort(centroids.double()).values
    x = values.flatten().double()
    idx = torch.searchsorted((c[1:] + c[:-1]) / 2, x)
    return float(((x - c[idx]) ** 2).sum())
