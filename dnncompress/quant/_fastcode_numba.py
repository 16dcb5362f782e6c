"""fastcode's kernels compiled by numba (imported only when numba is installed and a layer is large
enough; fastcode.py keeps the torch version as the fallback and as the reference the tests compare with).

Each one reads the weights once and writes one byte (or one float) per weight. The torch versions make a
pass per comparison and widen the codes to int64 for the gather: on VGG-16's 15M weights that was most of
the time pack and unpack took. Values come as R×L rows; a table has one row per value row, or a single
row that every value row shares. Comparisons are float32 against float32, exact, as torch's are."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

BLOCK = 1 << 15  # values per parallel work item where one table serves a flat array


@njit(cache=True, parallel=True)
def count_linear(values, thresholds, out):  # pragma: no cover - compiled
    """out[r, j] = #{k : thresholds[r or 0, k] < values[r, j]} for up to 3 thresholds (3 comparisons, the
    missing ones +inf, which no value exceeds)."""
    rows, length = values.shape
    th = np.full((thresholds.shape[0], 3), np.inf, dtype=np.float32)
    th[:, : thresholds.shape[1]] = thresholds
    if th.shape[0] == 1:  # one table: blocks of the flat array, so that one long row still splits
        t0, t1, t2 = th[0, 0], th[0, 1], th[0, 2]
        flat, dst = values.reshape(-1), out.reshape(-1)
        n = flat.size
        for b in prange((n + BLOCK - 1) // BLOCK):
            for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
                v = flat[i]
                dst[i] = np.uint8(t0 < v) + np.uint8(t1 < v) + np.uint8(t2 < v)
        return
    for r in prange(rows):
        t0, t1, t2 = th[r, 0], th[r, 1], th[r, 2]
        for j in range(length):
            v = values[r, j]
            out[r, j] = np.uint8(t0 < v) + np.uint8(t1 < v) + np.uint8(t2 < v)


@njit(cache=True, parallel=True)
def count_passes(values, thresholds, out):  # pragma: no cover - compiled
    """The same count for a handful of thresholds per row (4-bit tables): one vectorized pass over the
    row per threshold, the row staying in cache."""
    rows, length = values.shape
    t = thresholds.shape[1]
    for r in prange(rows):
        row = thresholds[0] if thresholds.shape[0] == 1 else thresholds[r]
        dst = out[r]
        src = values[r]
        dst[:] = 0
        for k in range(t):
            th = row[k]
            for j in range(length):
                dst[j] += np.uint8(th < src[j])


@njit(cache=True, parallel=True)
def count_by_grid(values, start, inv_width, below, inside, out):  # pragma: no cover - compiled
    """fastcode's grid lookup for one sorted row shared by every value (see its docstring): the cell,
    then one comparison. Values and out are flat."""
    n = values.size
    last = below.size - 1
    for b in prange((n + BLOCK - 1) // BLOCK):
        for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            v = values[i]
            x = np.floor((np.float64(v) - start) * inv_width)
            if not x >= 0.0:  # below the grid, or NaN
                cell = 0
            elif x >= last:
                cell = last
            else:
                cell = np.int64(x)
            out[i] = below[cell] + (1 if v > inside[cell] else 0)


@njit(cache=True, parallel=True)
def fourval_codes(values, big_at, out):  # pragma: no cover - compiled
    """FourValue.encode's rule on R×L rows: 2·(w > 0) + (big == (w > 0)), big = |w| > big_at[r or 0]."""
    rows, length = values.shape
    shared = big_at.size == 1
    for r in prange(rows):
        t = big_at[0] if shared else big_at[r]
        for j in range(length):
            v = values[r, j]
            pos = v > 0
            out[r, j] = (2 if pos else 0) + (1 if (abs(v) > t) == pos else 0)


@njit(cache=True, parallel=True)
def gather_rows(levels, codes, out):  # pragma: no cover - compiled
    """out[r, j] = levels[r or 0, codes[r, j]] on R×L rows; returns how many codes were out of range
    (their outputs are 0, and the caller refuses the layer). The range test is a branch that is never
    taken on a good file: measured faster than a separate max pass and a branch-free gather."""
    rows, length = codes.shape
    width = levels.shape[1]
    bad = 0
    if levels.shape[0] == 1:  # one table: blocks of the flat array, so that one long row still splits
        row, flat, dst = levels[0], codes.reshape(-1), out.reshape(-1)
        n = flat.size
        for b in prange((n + BLOCK - 1) // BLOCK):
            for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
                c = flat[i]
                if c < width:
                    dst[i] = row[c]
                else:
                    dst[i] = 0.0
                    bad += 1
        return bad
    for r in prange(rows):
        row = levels[r]
        for j in range(length):
            c = codes[r, j]
            if c < width:
                out[r, j] = row[c]
            else:
                out[r, j] = 0.0
                bad += 1
    return bad


@njit(cache=True)
def scatter_rows(levels, codes, keep, out):  # pragma: no cover - compiled
    """A pruned layer: out[r, j] = levels[r or 0, next code] where keep[r, j], else 0, the codes taken in
    row-major order. Returns (codes used, codes out of range); serial, since each row starts where the
    previous one's kept count ends."""
    rows, length = keep.shape
    width = levels.shape[1]
    used = 0
    bad = 0
    n = codes.size
    for r in range(rows):
        row = levels[0] if levels.shape[0] == 1 else levels[r]
        for j in range(length):
            if keep[r, j]:
                if used < n and codes[used] < width:
                    out[r, j] = row[codes[used]]
                else:
                    out[r, j] = 0.0
                    bad += 1
                used += 1
            else:
                out[r, j] = 0.0
    return used, bad
