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

With numba installed (the `fast` extra), large CPU layers run compiled kernels instead
(_fastcode_numba.py): one pass that reads each weight once and writes its code byte, where torch makes a
pass per comparison. They give the same codes; the tests compare them with the torch paths.

NaN weights are not supported (a diverged QAT step); every other value gets searchsorted's code.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..compiled import kernels as compiled_module

MAX_CELLS = 1 << 15
MIN_VALUES = 1 << 12  # below this the table costs more than the search
COMPILED_FROM = 1 << 12  # values; below this torch's few small passes cost less than leaving torch
QAT_COMPILED_FROM = 1 << 8  # the fused QAT forwards replace a dozen torch calls: they pay from tiny layers on
UNITS_COMPILED_FROM = 1 << 12  # pq's gather replaces one torch call, which is faster below about 4,096 units (measured: 1,000
#                               units of 25 weights 5.6 µs in torch, 14.4 compiled; 5,000 of 4 the same; 100,000 of 4 120 vs 97)
USE_COMPILED = True  # the tests turn it off to compare with the torch paths
GATHER_CHUNK = 1 << 14  # values a torch gather takes at once: its int64 index, freed, stayed resident (glibc keeps heap
#                         it has grown for), and a whole layer's at once put a first VGG-16 unpack at 2× its fp32 size


def compiled(size: int, *floats: torch.Tensor, least: int = COMPILED_FROM, per_step: bool = False):
    """The compiled kernels for a job of `size` values over these float tensors when numba is installed
    (and not turned off), the job is at least `least` and the tensors are float32 on the CPU; else None.
    `per_step`: a QAT step's kernel, which every step repeats: numba is loaded at once (about half a second, once
    per process). Other jobs are one-off (encoding, decoding, a fit): they run in torch until compiled.py's budget
    of such work is spent or the kernels are loaded anyway."""
    if not USE_COMPILED or size < least:
        return None
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in floats):
        return None
    return compiled_module("dnncompress.quant._fastcode_numba", None if per_step else size)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def count_below(values: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """uint8 codes shaped like `values` (R×n): per row r, the number of thresholds[r] (R×t or 1×t) < each value."""
    t = thresholds.shape[-1]
    if t == 0:
        return torch.zeros(values.shape, dtype=torch.uint8)
    if t > 255:  # more than 8 bits' worth: not a code byte
        return torch.searchsorted(thresholds.contiguous(), values.contiguous())
    kernels = compiled(values.numel(), values, thresholds) if values.dim() == 2 and thresholds.shape[0] in (1, values.shape[0]) else None
    if kernels is not None:
        codes = _count_compiled(kernels, _np(values), _np(thresholds))
        if codes is not None:
            return torch.from_numpy(codes)
    if t <= 3:
        codes = as_bytes(values > thresholds[..., 0:1]).clone()  # counted in bytes
        for i in range(1, t):
            codes += as_bytes(values > thresholds[..., i:i + 1])
        return codes
    if thresholds.shape[0] == 1 and values.dtype == torch.float32 and thresholds.dtype == torch.float32 and values.numel() >= MIN_VALUES:
        lookup = _grid(thresholds[0])
        if lookup is not None:
            return _codes_by_grid(values, *lookup)
    return torch.searchsorted(thresholds.contiguous(), values.contiguous()).to(torch.uint8)


def _count_compiled(kernels, values: np.ndarray, thresholds: np.ndarray) -> np.ndarray | None:
    out = np.empty(values.shape, dtype=np.uint8)
    t = thresholds.shape[1]
    if t <= 3:
        kernels.count_linear(values, thresholds, out)
        return out
    if t <= 15:  # a comparison pass per threshold vectorizes; measured faster than the grid's two lookups
        kernels.count_passes(values, thresholds, out)
        return out
    lookup = _grid(torch.from_numpy(thresholds[0])) if thresholds.shape[0] == 1 else None
    if lookup is not None:
        start, inv_width, _, below, inside = lookup
        kernels.count_by_grid(values.reshape(-1), start, inv_width, below[0].numpy(), inside[0].numpy(), out.reshape(-1))
        return out
    return None  # many thresholds per row: torch's search


def _fourval_kernels(rows: torch.Tensor, big_at: torch.Tensor):
    """The compiled kernels for FourValue's rule on R×n rows with one threshold, or one per row; else None."""
    kernels = compiled(rows.numel(), rows, big_at)
    return None if kernels is None or rows.dim() != 2 or big_at.numel() not in (1, rows.shape[0]) else kernels


def fourval_codes(rows: torch.Tensor, big_at: torch.Tensor) -> torch.Tensor | None:
    """FourValue's codes (R×n uint8) compiled, or None where the torch rule must run."""
    kernels = _fourval_kernels(rows, big_at)
    if kernels is None:
        return None
    out = np.empty(rows.shape, dtype=np.uint8)
    kernels.fourval_codes(_np(rows), _np(big_at).reshape(-1), out)
    return torch.from_numpy(out)


def fourval_packed(rows: torch.Tensor, big_at: torch.Tensor) -> np.ndarray | None:
    """fourval_codes written straight as bitpack.pack's 2-bit words (uint32), compiled: the codes never exist as
    bytes (a 2.36M-weight layer: 222 µs against 249 for the codes, then pack). None where the caller must pack
    fourval_codes' bytes: no numba, a small layer, or a table per row whose rows are not whole bytes."""
    kernels = _fourval_kernels(rows, big_at)
    if kernels is None or (big_at.numel() != 1 and rows.shape[1] % 4):
        return None
    out = np.zeros((rows.numel() * 2 + 31) // 32 * 4, dtype=np.uint8)  # whole words, the padding zero
    kernels.fourval_packed(_np(rows), _np(big_at).reshape(-1), out)
    return out.view("<u4")


_NO_MASK = np.zeros((0, 0), dtype=np.uint8)


def _keep(mask: torch.Tensor | None, shape) -> np.ndarray:
    return _np(as_bytes(mask.reshape(shape).to(torch.bool))) if mask is not None else _NO_MASK


def fused_forward(kernel: str, rows: torch.Tensor, mask: torch.Tensor | None, per_row: tuple, width: int,
                  *options) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(q, levels, thresholds) of a scheme's compiled QAT forward: the kernel `kernel` of
    _fastcode_numba.py (fourval_/ternary_/asym_fake_quantize, whose docstrings say what each computes)
    on R×n rows, with `per_row` the scheme's current numbers (one value per row each), `options` its
    flags and a table `width` levels wide. None where the torch form must run."""
    kernels = compiled(rows.numel(), rows, *per_row, least=QAT_COMPILED_FROM, per_step=True)
    if kernels is None or rows.dim() != 2 or any(t.numel() != rows.shape[0] for t in per_row):
        return None
    q = torch.empty(rows.shape)
    levels, thresholds = torch.empty(rows.shape[0], width), torch.empty(rows.shape[0], width - 1)
    getattr(kernels, kernel)(_np(rows), _keep(mask, rows.shape), *(_np(t).reshape(-1) for t in per_row), *options,
                             q.numpy(), levels.numpy(), thresholds.numpy())
    return q, levels, thresholds


def table_forward(rows: torch.Tensor, levels: torch.Tensor, thresholds: torch.Tensor, mask: torch.Tensor | None,
                  with_codes: bool = False):
    """levels[r or 0, count_below(w)] × mask for R×n rows in one compiled pass (a table's QAT forward: no code
    bytes in between); with `with_codes`, (q, the uint8 codes). None where the two-step path (codes, then a
    gather) must run."""
    kernels = compiled(rows.numel(), rows, levels, thresholds, least=QAT_COMPILED_FROM, per_step=True)
    if kernels is None or rows.dim() != 2 or levels.shape[0] not in (1, rows.shape[0]) or thresholds.shape != (levels.shape[0], levels.shape[1] - 1):
        return None
    q = torch.empty(rows.shape)
    codes = torch.empty(rows.shape, dtype=torch.uint8) if with_codes else None
    codes_np = codes.numpy() if with_codes else _NO_MASK
    if levels.shape[0] == 1 and thresholds.shape[1] > 15:  # one wide table: the grid lookup beats a search (8 bits: 4 ms vs 8+)
        lookup = _grid(thresholds[0])
        if lookup is None:
            return None
        start, inv_width, _, below, inside = lookup
        kernels.grid_fake_quantize(_np(rows), _keep(mask, rows.shape), start, inv_width, below[0].numpy(), inside[0].numpy(),
                                   _np(levels[0]), q.numpy(), codes_np)
    else:
        kernels.table_fake_quantize(_np(rows), _keep(mask, rows.shape), _np(levels), _np(thresholds), q.numpy(), codes_np)
    return (q, codes) if with_codes else q


def trained_table_forward(rows: torch.Tensor, levels: torch.Tensor, mask: torch.Tensor | None):
    """table_forward(rows, levels, midpoints(levels), mask, with_codes=True) for a trained table of up to 16 values
    (1×L, ascending), its thresholds made inside the compiled pass. None where that pass does not run: no numba,
    a wider table, or values that crossed (the caller then goes the long way)."""
    if levels.dim() != 2 or levels.shape[0] != 1 or not 2 <= levels.shape[1] <= 16 or rows.dim() != 2:
        return None
    kernels = compiled(rows.numel(), rows, levels, least=QAT_COMPILED_FROM, per_step=True)
    if kernels is None:
        return None
    q = torch.empty(rows.shape)
    codes = torch.empty(rows.shape, dtype=torch.uint8)
    if not kernels.trained_fake_quantize(_np(rows), _keep(mask, rows.shape), _np(levels), q.numpy(), codes.numpy()):
        return None
    return q, codes


def level_sums(codes: torch.Tensor, grad: torch.Tensor, levels: int) -> torch.Tensor:
    """(levels,) float32: the sum of `grad` over the positions holding each code (compiled when numba is
    there and the layer is large; torch's index_add otherwise)."""
    kernels = compiled(codes.numel(), grad.float(), least=QAT_COMPILED_FROM, per_step=True) if codes.dtype == torch.uint8 else None
    if kernels is None:
        return torch.zeros(levels, dtype=grad.dtype, device=grad.device).index_add_(0, codes.reshape(-1).long(), grad.reshape(-1))
    out = np.empty(levels, dtype=np.float32)
    kernels.level_sums(_np(codes.reshape(-1)), _np(grad.reshape(-1).float()), levels, out)
    return torch.from_numpy(out).to(grad.dtype)


def nearest_centroids(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor | None:
    """int64 index of each row of x (N×d)'s nearest centroid (k×d), by pq.assign's score |c|² − 2·x·c, compiled;
    None where torch must run (no numba, a small job, not float32 on the CPU). Scores are summed in another
    order than torch's matrix product, so a unit nearly equidistant from two centroids may take the other one."""
    kernels = compiled(x.numel() * centroids.shape[0], x, centroids) if x.dim() == 2 and centroids.dim() == 2 else None
    if kernels is None or x.shape[1] != centroids.shape[1] or centroids.shape[0] == 0:
        return None
    out = np.empty(x.shape[0], dtype=np.int64)
    c = centroids.detach()
    kernels.nearest_centroids(_np(x), _np(c), _np((c * c).sum(1)), out)
    return torch.from_numpy(out)


def unit_sums(codes: torch.Tensor, grad: torch.Tensor, k: int) -> torch.Tensor:
    """(k, d): per code, the sum of the rows of `grad` (N×d) whose unit holds it (compiled when numba is there
    and the layer is large; torch's index_add otherwise). Codes uint8 (8× less to read) or any integer type."""
    kernels = compiled(grad.numel(), grad, least=QAT_COMPILED_FROM, per_step=True) if grad.dim() == 2 and codes.dim() == 1 else None
    if kernels is None:
        return torch.zeros(k, grad.shape[1], dtype=grad.dtype, device=grad.device).index_add_(0, codes.long(), grad)
    out = np.empty((k, grad.shape[1]), dtype=np.float32)
    kernels.unit_sums(_unit_codes(codes), _np(grad), k, out)
    return torch.from_numpy(out)


def _unit_codes(codes: torch.Tensor) -> np.ndarray:
    """pq's codes for its kernels: bytes as they are (8× less to read than int64), any other integer type as int64."""
    return _np(codes if codes.dtype == torch.uint8 else codes.long())


def gather_units(table: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """table[codes] (N×d, one row of the k×d table per unit) × mask (N·d weights) in one compiled pass; None
    where torch must run (no numba, a small layer, not float32 on the CPU). ValueError on a code beyond the table."""
    n, d = codes.numel(), table.shape[1]
    kernels = compiled(n, table, least=UNITS_COMPILED_FROM, per_step=True) if table.dim() == 2 and codes.dim() == 1 else None
    if kernels is None or (mask is not None and mask.numel() != n * d):
        return None
    out = torch.empty(n, d)
    if kernels.gather_units(_np(table), _unit_codes(codes), _keep(mask, (n, d)), out.numpy()):
        raise ValueError("code out of range")
    return out


def gather_levels(levels: torch.Tensor, codes: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """levels[r or 0, codes[r, j]] for R×n codes (a table of 1 or R rows), into `out` when given.
    ValueError on a code beyond the table. Differentiable (torch's gather) when the levels need a gradient."""
    rows = codes.shape[0]
    kernels = compiled(codes.numel(), levels) if codes.dtype == torch.uint8 and codes.dim() == 2 else None
    if kernels is None or (torch.is_grad_enabled() and levels.requires_grad) or (out is not None and not (out.is_contiguous() and out.dtype == torch.float32)):
        if codes.numel() and int(codes.max()) >= levels.shape[1]:
            raise ValueError("code out of range")
        table = levels if levels.shape[0] == rows else levels.expand(rows, -1)
        if torch.is_grad_enabled() and levels.requires_grad:  # a graph to differentiate through: one gather
            return torch.gather(table, 1, codes.long(), out=out) if out is not None else torch.gather(table, 1, codes.long())
        if out is None:
            out = torch.empty(codes.shape, dtype=levels.dtype, device=levels.device)
        step = max(1, GATHER_CHUNK // max(rows, 1))  # columns a chunk: torch's int64 index never exceeds ~GATHER_CHUNK values
        for c0 in range(0, codes.shape[1], step):
            torch.gather(table, 1, codes[:, c0 : c0 + step].long(), out=out[:, c0 : c0 + step])
        return out
    if out is None:
        out = torch.empty(codes.shape, dtype=torch.float32)
    if kernels.gather_rows(_np(levels), _np(codes), out.numpy()):
        raise ValueError("code out of range")
    return out


def gather_packed(levels: torch.Tensor, data: np.ndarray, bits: int, n: int, out: torch.Tensor | None = None) -> torch.Tensor | None:
    """levels[0, code] for n codes still bit-packed (`data`: bitpack's bytes), compiled, for one shared table and
    2, 4 or 8 bits: into `out` (n float32 values, contiguous, CPU) when it is one, else into a new flat tensor,
    which is made only once the path is known to run. None where it does not apply (a table per row, other
    widths, no numba: the caller unpacks the codes first). ValueError on a code beyond the table."""
    kernels = compiled(n, levels)
    if kernels is None or bits not in (2, 4, 8) or levels.dim() != 2 or levels.shape[0] != 1:
        return None
    if out is None or not (out.is_contiguous() and out.dtype == torch.float32 and out.device.type == "cpu" and out.numel() == n):
        out = torch.empty(n)
    if kernels.gather_packed(_np(levels), data, bits, n, out.numpy()):
        raise ValueError("code out of range")
    return out


def scatter_levels(levels: torch.Tensor, codes: torch.Tensor, keep: torch.Tensor) -> torch.Tensor | None:
    """A pruned layer's R×n weights: the kept positions (keep, R×n) take levels[r or 0, code] in order,
    the rest 0; compiled, or None where the caller's torch path must run. ValueError on a bad code or count."""
    kernels = compiled(keep.numel(), levels) if keep.dim() == 2 else None
    if kernels is None:
        return None
    out = np.empty(keep.shape, dtype=np.float32)
    used, bad = kernels.scatter_rows(_np(levels), _np(codes.to(torch.uint8)), _np(as_bytes(keep.to(torch.bool))), out)
    if used != codes.numel():
        raise ValueError("code count does not match the layer")
    if bad:
        raise ValueError("code out of range")
    return torch.from_numpy(out)


_GRIDS: dict = {}  # thresholds' bytes → grid, the most recent last: every QAT step asks again for each layer's table
GRIDS_KEPT = 64


def _grid(th: torch.Tensor):
    """(start, 1/width, cells, below, inside) for one sorted row, or None where a grid does not pay. Cached by the
    thresholds' bytes for the last GRIDS_KEPT tables (one entry thrashed: a model's layers took turns rebuilding theirs)."""
    key = (th.dtype, th.detach().cpu().contiguous().numpy().tobytes())
    if key in _GRIDS:
        _GRIDS[key] = _GRIDS.pop(key)
        return _GRIDS[key]
    grid = _build_grid(th)
    _GRIDS[key] = grid
    while len(_GRIDS) > GRIDS_KEPT:
        del _GRIDS[next(iter(_GRIDS))]
    return grid


def _build_grid(th: torch.Tensor):
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
    below = torch.searchsorted(th64, window_start)  # thresholds < the window's start (≤ 255: a code byte)
    inside = th64[below.clamp_max(th.numel() - 1)]
    inside = torch.where((below < th.numel()) & (inside < window_start + 3 * width), inside, math.inf)
    return start, 1.0 / width, cells, below.to(torch.uint8).unsqueeze(0), inside.float().unsqueeze(0)


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
