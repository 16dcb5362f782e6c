"""Nearest-level codes as `torch.searchsorted(thresholds, w)` gives them, bit for bit, but faster on CPU.

searchsorted is a binary search per element: on LeNet-5's fc1 (400k weights, 15 thresholds) it takes
5 ms a call here, more than the layer's whole forward and backward. The code of w is the number of
thresholds strictly below it, so:

- up to 3 thresholds (ternary, 2-bit tables, also one table per row): the sum of 3 comparisons;
- one sorted row of more: a lookup over a uniform grid whose cells are narrower than a quarter of the
  smallest gap between thresholds. Each cell's window (itself and both neighbours) then holds at
  most one threshold, so code = (thresholds below the window) + (w > the threshold inside it), two
  gathers and a comparison. The cell of w may be off by one through rounding; the window covers it.
  Where the grid would be too fine (thresholds nearly equal), too small a layer, or not float32, the
  plain searchsorted runs.

NaN weights are not supported (a diverged QAT step); every other value gets searchsorted's code.
"""
from __future__ import annotations

import math

import torch

MAX_CELLS = 1 << 15
MIN_VALUES = 1 << 12  # below this the table costs more than the search


def count_below(values: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """int64 codes shaped like `values` (R×n): per row r, the number of thresholds[r] (R×t or 1×t) < each value."""
    t = thresholds.shape[-1]
    if t == 0:
        return torch.zeros(values.shape, dtype=torch.long)
    if t <= 3:
        codes = as_bytes(values > thresholds[..., 0:1]).clone()  # counted in bytes, widened once
        for i in range(1, t):
            codes += as_bytes(values > thresholds[..., i:i + 1])
        return codes.long()
    if thresholds.shape[0] == 1 and values.dtype == torch.float32 and thresholds.dtype == torch.float32 and values.numel() >= MIN_VALUES:
        lookup = _grid(thresholds[0])
        if lookup is not None:
            return _codes_by_grid(values, *lookup)
    return torch.searchsorted(thresholds.contiguous(), values.contiguous())


def _grid(th: torch.Tensor):
    """(start, 1/width, cells, below, inside) for one sorted row, or None where a grid does not pay."""
    th64 = th.double()
    gaps = th64[1:] - th64[:-1]
    if not bool(torch.isfinite(th64).all()) or float(gaps.min()) <= 0:
        return None
    width = float(gaps.min()) / 4
    lo, hi = float(th64[0]), float(th64[-1])
    start = lo - width
    cells = int(math.ceil((hi - start) / width)) + 3
    if cells > MAX_CELLS:
        return None
    window_start = start + (torch.arange(cells, dtype=torch.float64) - 1) * width
    below = torch.searchsorted(th64, window_start)  # thresholds < the window's start
    inside = th64[below.clamp_max(th.numel() - 1)]
    inside = torch.where((below < th.numel()) & (inside < window_start + 3 * width), inside, math.inf)
    return start, 1.0 / width, cells, below.unsqueeze(0), inside.float().unsqueeze(0)


def _codes_by_grid(values, start, inv_width, cells, below, inside):
    shape = values.shape
    flat = values.reshape(1, -1)
    cell = flat.sub(start).mul_(inv_width).floor_().clamp_(0, cells - 1).to(torch.long)
    codes = below.gather(1, cell)
    codes += flat > inside.gather(1, cell)
    return codes.reshape(shape)


def as_bytes(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask seen as uint8 (no copy) for arithmetic: the same 0/1 products, but torch converts and
    multiplies uint8 several times faster than bool here (400k weights: 0.07 ms against 1.7 ms)."""
    return mask.view(torch.uint8) if mask.dtype == torch.bool else mask
