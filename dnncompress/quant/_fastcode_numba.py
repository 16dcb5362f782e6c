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
PASS_VALUES = 1 << 11  # values that several comparison passes go over together: 8 KB of float32, in L1 between passes

# Every loop runs over a slice from 0 (`x = a[lo:hi]; for i in range(x.size)`), never `range(lo, hi)` into the
# whole array: numba cannot prove such an index non-negative, keeps a wraparound branch per access and the
# loop does not vectorize (a doubling loop over 400k floats: 200 µs that way, 22 µs sliced).


@njit(cache=True, inline="always")
def _blocks(n):  # pragma: no cover - compiled
    """How many BLOCK-sized work items n values make."""
    return (n + BLOCK - 1) // BLOCK


@njit(cache=True, inline="always")
def _block(a, b):  # pragma: no cover - compiled
    """Work item b of a flat array: a[b·BLOCK : (b+1)·BLOCK], cut at its end."""
    return a[b * BLOCK : min(a.size, (b + 1) * BLOCK)]


@njit(cache=True, inline="always")
def _block_totals(part):  # pragma: no cover - compiled
    """Each column of per-work-item partial sums (nb × m) added in work-item order: the same result on any
    number of threads."""
    total = np.zeros(part.shape[1])
    for b in range(part.shape[0]):
        for j in range(part.shape[1]):
            total[j] += part[b, j]
    return total


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
        for b in prange(_blocks(flat.size)):
            src, to = _block(flat, b), _block(dst, b)
            for i in range(src.size):
                v = src[i]
                to[i] = np.uint8(t0 < v) + np.uint8(t1 < v) + np.uint8(t2 < v)
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
    if thresholds.shape[0] == 1:  # one table: blocks of the flat array, so that one long row still splits
        flat, codes = values.reshape(-1), out.reshape(-1)
        for b in prange(_blocks(flat.size)):
            _count_block(_block(flat, b), thresholds[0], _block(codes, b))
        return
    for r in prange(rows):
        _count_block(values[r], thresholds[r], out[r])


@njit(cache=True, inline="always")
def _count_block(src, th, dst):  # pragma: no cover - compiled
    """dst[j] = #{k : th[k] < src[j]}, one vectorized comparison pass per threshold, over PASS_VALUES values at a
    time, so that the passes re-read them from L1 (4-bit, 400k weights: 251 → 184 µs in the QAT forward)."""
    for p0 in range(0, src.size, PASS_VALUES):
        part, c = src[p0 : p0 + PASS_VALUES], dst[p0 : p0 + PASS_VALUES]
        c[:] = 0
        for k in range(th.size):
            x = th[k]
            for j in range(part.size):
                c[j] += np.uint8(x < part[j])


@njit(cache=True, parallel=True)
def count_by_grid(values, start, inv_width, below, inside, out):  # pragma: no cover - compiled
    """fastcode's grid lookup for one sorted row shared by every value (see its docstring): the cell,
    then one comparison. Values and out are flat."""
    for b in prange(_blocks(values.size)):
        src, to = _block(values, b), _block(out, b)
        for i in range(src.size):
            to[i] = _grid_code(src[i], start, inv_width, below, inside)


@njit(cache=True, inline="always")
def _grid_cell(v, start, inv_width, last):  # pragma: no cover - compiled
    """The grid cell of one value (count_by_grid's lookup, see fastcode.py); below the grid, or NaN: cell 0."""
    x = np.floor((np.float64(v) - start) * inv_width)
    if not x >= 0.0:
        return 0
    if x >= last:
        return last
    return np.int64(x)


@njit(cache=True, inline="always")
def _grid_code(v, start, inv_width, below, inside):  # pragma: no cover - compiled
    """count_by_grid's code of one value: its cell, then one comparison."""
    cell = _grid_cell(v, start, inv_width, below.size - 1)
    return below[cell] + (1 if v > inside[cell] else 0)


@njit(cache=True, parallel=True)
def grid_fake_quantize(values, keep, start, inv_width, below, inside, levels, q, codes):  # pragma: no cover - compiled
    """table_fake_quantize for one wide shared table (more than 15 thresholds): q = levels[grid code] × keep
    in one pass, in fixed blocks of the flat array (the codes into `codes` unless it is 0×0). Each cell's two
    possible values sit side by side (pair[2·cell + above]), so the value is one load beside the comparison
    rather than a second load that waits for the code (measured 444 → 365 µs on 400k weights here)."""
    flat, dst = values.reshape(-1), q.reshape(-1)
    kflat = keep.reshape(-1)
    cflat = codes.reshape(-1)
    masked = keep.shape[0] > 0
    want = codes.size > 0
    last = below.size - 1
    top = levels.size - 1
    pair = np.empty(2 * below.size, dtype=np.float32)
    for c in range(below.size):
        pair[2 * c] = levels[min(np.int64(below[c]), top)]
        pair[2 * c + 1] = levels[min(np.int64(below[c]) + 1, top)]
    for b in prange(_blocks(flat.size)):
        src, to = _block(flat, b), _block(dst, b)
        if want:
            cs = _block(cflat, b)
            for i in range(src.size):
                v = src[i]
                cell = _grid_cell(v, start, inv_width, last)
                up = 1 if v > inside[cell] else 0
                cs[i] = below[cell] + up
                to[i] = pair[2 * cell + up]
        else:
            for i in range(src.size):
                v = src[i]
                cell = _grid_cell(v, start, inv_width, last)
                to[i] = pair[2 * cell + (1 if v > inside[cell] else 0)]
        if masked:
            _times_keep(to, _block(kflat, b))


@njit(cache=True, parallel=True)
def fourval_codes(values, big_at, out):  # pragma: no cover - compiled
    """FourValue.encode's rule on R×L rows: 2·(w > 0) + (big == (w > 0)), big = |w| > big_at[r or 0]."""
    rows, length = values.shape
    if big_at.size == 1:  # one table: blocks of the flat array, so that one long row still splits
        flat, codes = values.reshape(-1), out.reshape(-1)
        for b in prange(_blocks(flat.size)):
            _fourval_block(_block(flat, b), big_at[0], _block(codes, b))
        return
    for r in prange(rows):
        _fourval_block(values[r], big_at[r], out[r])


@njit(cache=True, inline="always")
def _fourval_code(v, t):  # pragma: no cover - compiled
    pos = v > 0
    return (2 if pos else 0) + (1 if (abs(v) > t) == pos else 0)


@njit(cache=True, inline="always")
def _fourval_block(src, t, dst):  # pragma: no cover - compiled
    for j in range(src.size):
        dst[j] = _fourval_code(src[j], t)


@njit(cache=True, parallel=True)
def fourval_packed(values, big_at, out):  # pragma: no cover - compiled
    """fourval_codes' codes written straight as bitpack's 2-bit stream: code 4k+m in bits 2m, 2m+1 of byte k of
    `out` (the rest of `out` is left alone). One table, or a table per row whose rows are whole bytes (the caller
    checks length % 4 == 0)."""
    rows, length = values.shape
    if big_at.size == 1:
        flat = values.reshape(-1)
        whole = flat.size // 4
        for b in prange(_blocks(whole)):
            lo = b * BLOCK
            hi = min(whole, lo + BLOCK)
            _fourval_bytes(flat[4 * lo : 4 * hi], big_at[0], out[lo:hi])
        if flat.size > 4 * whole:  # the last byte's 1–3 codes
            tail, acc = flat[4 * whole :], 0
            for m in range(tail.size):
                acc |= _fourval_code(tail[m], big_at[0]) << (2 * m)
            out[whole] = np.uint8(acc)
        return
    per_row = length // 4
    for r in prange(rows):
        _fourval_bytes(values[r], big_at[r], out[r * per_row : (r + 1) * per_row])


@njit(cache=True, inline="always")
def _fourval_bytes(src, t, dst):  # pragma: no cover - compiled
    """dst[k] = the codes of src[4k : 4k+4] folded into one byte: PASS_VALUES codes into a buffer in L1, then each
    4-code word folded as bitpack's kernel does. Both loops vectorize (2.36M weights: 157 µs, against 167 for a loop
    that builds each byte from four indexed values, 1,258 from a 4-value slice, 180 for fourval_codes then pack)."""
    buf = np.empty(PASS_VALUES, dtype=np.uint8)
    words = buf.view(np.uint32)
    for p0 in range(0, dst.size, PASS_VALUES // 4):
        part, to = src[4 * p0 : 4 * p0 + PASS_VALUES], dst[p0 : p0 + PASS_VALUES // 4]
        for j in range(part.size):
            buf[j] = _fourval_code(part[j], t)
        for i in range(to.size):
            v = words[i]
            to[i] = np.uint8((v | (v >> 6) | (v >> 12) | (v >> 18)) & 0xFF)


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
        for b in prange(_blocks(flat.size)):
            src, to = _block(flat, b), _block(dst, b)
            for i in range(src.size):
                c = src[i]
                if c < width:
                    to[i] = row[c]
                else:
                    to[i] = 0.0
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


@njit(cache=True, inline="always")
def _kept(keep, r, length):  # pragma: no cover - compiled
    """How many weights of row r are kept (every one without a mask: keep is 0×0)."""
    if keep.shape[0] == 0:
        return length
    n = 0
    for j in range(length):
        n += keep[r, j]
    return n


@njit(cache=True, inline="always")
def _sum_above(row, t):  # pragma: no cover - compiled
    """(Σ|w|, count) over the weights of a row with |w| > t (pruned zeros never are: t ≥ 0)."""
    s = 0.0
    c = 0
    for j in range(row.size):
        m = abs(row[j])
        big = m > t
        s += np.float64(m) if big else 0.0
        c += 1 if big else 0
    return s, c


@njit(cache=True, inline="always")
def _times_keep(out, keep):  # pragma: no cover - compiled
    """out ×= keep, elementwise (pruned positions become 0, −0.0 where q was negative, as torch's q·mask)."""
    for j in range(out.size):
        out[j] *= keep[j]


@njit(cache=True, inline="always")
def _apply_keep(out, keep, r):  # pragma: no cover - compiled
    """out ×= keep[r] (nothing without a mask)."""
    if keep.shape[0] > 0:
        _times_keep(out, keep[r])


@njit(cache=True, inline="always")
def _fourval_sums(row, t):  # pragma: no cover - compiled
    """(Σ|w| + Σ_{|w|>t}|w|, #{|w| > t}) over row (pruned weights are exact zeros: never big)."""
    s = 0.0
    k = 0
    for j in range(row.size):
        m = abs(row[j])
        big = m > t
        s += np.float64(m) * (2.0 if big else 1.0)
        k += 1 if big else 0
    return s, k


@njit(cache=True, inline="always")
def _fourval_out(row, a, out):  # pragma: no cover - compiled
    t2 = np.float32(1.5) * a
    two = a + a
    for j in range(row.size):
        v = row[j]
        level = two if abs(v) > t2 else a
        out[j] = level if v > 0 else -level


@njit(cache=True, parallel=True, fastmath={"reassoc"})
def fourval_fake_quantize(values, keep, big_at, alpha, refit, q, levels, thresholds):  # pragma: no cover - compiled
    """FourValue's QAT forward on R×L rows: with `refit`, first α ← (Σ|w| + Σ_{|w|>big_at}|w|) / max(n + 3k, 1)
    over the kept weights (FourValue.fake_quantize's O(n) step; pruned weights arrive as exact zeros, which add
    nothing and are never big), then q = ±α·(1 or 2) by the new threshold 1.5α, times keep. `keep` is R×L
    uint8 or 0×0 (every weight kept). Sums in float64, vectorized (reassociated, in the same order on every
    run): within float32 rounding of torch's float32 sums. The new table goes to levels (R×4: −2α, −α, α, 2α)
    and thresholds (R×3: −1.5α, 0, 1.5α), as fourval._table writes them. Many rows: one row per thread (the
    row stays in cache between the two loops). One long row (a table per layer): fixed blocks in parallel,
    their sums added in block order, so the result does not depend on the number of threads."""
    rows, length = values.shape
    masked = keep.shape[0] > 0
    if rows == 1 and length > BLOCK:
        row = values[0]
        nb = _blocks(length)
        a = alpha[0]
        if refit:
            part = np.zeros((nb, 2))
            for b in prange(nb):
                part[b, 0], part[b, 1] = _fourval_sums(_block(row, b), big_at[0])
            s, k = _block_totals(part)
            a = np.float32(s / max(_kept(keep, 0, length) + 3 * k, 1))
        t2 = np.float32(1.5) * a
        levels[0, 0], levels[0, 1], levels[0, 2], levels[0, 3] = -(a + a), -a, a, a + a
        thresholds[0, 0], thresholds[0, 1], thresholds[0, 2] = -t2, np.float32(0.0), t2
        out = q[0]
        for b in prange(nb):
            _fourval_out(_block(row, b), a, _block(out, b))
            if masked:
                _times_keep(_block(out, b), _block(keep[0], b))
        return
    for r in prange(rows):
        row = values[r]
        a = alpha[r]
        if refit:
            s, k = _fourval_sums(row, big_at[r])
            a = np.float32(s / max(_kept(keep, r, length) + 3 * k, 1))
        t2 = np.float32(1.5) * a
        two = a + a
        levels[r, 0], levels[r, 1], levels[r, 2], levels[r, 3] = -two, -a, a, two
        thresholds[r, 0], thresholds[r, 1], thresholds[r, 2] = -t2, np.float32(0.0), t2
        _fourval_out(row, a, q[r])
        _apply_keep(q[r], keep, r)


@njit(cache=True, inline="always")
def _abs_sum(row):  # pragma: no cover - compiled
    s = 0.0
    for j in range(row.size):
        s += np.float64(abs(row[j]))
    return s


@njit(cache=True, inline="always")
def _ternary_out(row, a, d, out):  # pragma: no cover - compiled
    for j in range(row.size):
        v = row[j]
        out[j] = a if v > d else (-a if v <= -d else np.float32(0.0))


@njit(cache=True, parallel=True)
def _blocks_sum_above(row, t, nb):  # pragma: no cover - compiled
    """_sum_above over one long row, in fixed blocks in parallel, added in block order."""
    part = np.zeros((nb, 2))
    for b in prange(nb):
        part[b, 0], part[b, 1] = _sum_above(_block(row, b), t)
    s, c = _block_totals(part)
    return s, np.int64(c)


@njit(cache=True, parallel=True, fastmath={"reassoc"})
def ternary_fake_quantize(values, keep, alpha, delta, twn, refit, iters, q, levels, thresholds):  # pragma: no cover - compiled
    """Ternary's QAT forward on R×L rows, one row per thread: with `refit`, first the step's update over
    the kept weights (TWN: Δ = 0.7·mean|w|, α = mean of |w| > Δ; exact: `iters` rounds of α ← mean of
    |w| > α/2, Δ = α/2; pruned weights arrive as exact zeros), then q = +α where w > Δ, −α where w ≤ −Δ,
    else 0, times keep. Sums in float64, vectorized (reassociated, the same order on every run): within
    float32 rounding of torch's. The new table goes to levels (R×3: −α, 0, α) and thresholds (R×2: −Δ, Δ),
    as ternary._table writes them. One long row (a table per layer): fixed blocks of it in parallel, each
    block's sums added in block order, so the result does not depend on the number of threads."""
    rows, length = values.shape
    if rows == 1 and length > BLOCK:
        row = values[0]
        nb = _blocks(length)
        a = alpha[0]
        d = delta[0]
        if refit:
            if twn:
                part = np.zeros((nb, 1))
                for b in prange(nb):
                    part[b, 0] = _abs_sum(_block(row, b))
                s = _block_totals(part)[0]
                d = np.float32(np.float32(0.7) * np.float32(s) / np.float32(max(_kept(keep, 0, length), 1)))
                s, c = _blocks_sum_above(row, d, nb)
                a = np.float32(s / max(c, 1))
            else:
                for _ in range(iters):
                    s, c = _blocks_sum_above(row, a / np.float32(2), nb)
                    if c > 0:
                        a = np.float32(s / c)
                d = a / np.float32(2)
        levels[0, 0], levels[0, 1], levels[0, 2] = -a, np.float32(0.0), a
        thresholds[0, 0], thresholds[0, 1] = -d, d
        out = q[0]
        for b in prange(nb):
            _ternary_out(_block(row, b), a, d, _block(out, b))
            if keep.shape[0] > 0:
                _times_keep(_block(out, b), _block(keep[0], b))
        return
    for r in prange(rows):
        row = values[r]
        a = alpha[r]
        d = delta[r]
        if refit:
            if twn:
                s = _abs_sum(row)
                d = np.float32(np.float32(0.7) * np.float32(s) / np.float32(max(_kept(keep, r, length), 1)))
                s, c = _sum_above(row, d)
                a = np.float32(s / max(c, 1))
            else:
                for _ in range(iters):
                    s, c = _sum_above(row, a / np.float32(2))
                    if c > 0:
                        a = np.float32(s / c)
                d = a / np.float32(2)
        levels[r, 0], levels[r, 1], levels[r, 2] = -a, np.float32(0.0), a
        thresholds[r, 0], thresholds[r, 1] = -d, d
        _ternary_out(row, a, d, q[r])
        _apply_keep(q[r], keep, r)


@njit(cache=True, inline="always")
def _half_sums(row, keep, masked, tp, tn):  # pragma: no cover - compiled
    """Over row's kept weights: (Σ|w|, count) of those ≥ 0 with |w| > tp and of those < 0 with |w| > tn, as one
    4-tuple (_half_sums_total's first half; its totals cost nothing measurable beside the loads)."""
    s = _half_sums_total(row, keep, masked, tp, tn)
    return s[0], s[1], s[2], s[3]


@njit(cache=True, inline="always")
def _half_sums_total(row, keep, masked, tp, tn):  # pragma: no cover - compiled
    """Over row's kept weights, in one pass and without branches: (Σ|w|, count) of those ≥ 0 with |w| > tp and of
    those < 0 with |w| > tn, then the same over every kept weight of each half, as 8 numbers."""
    sp = 0.0
    kp = 0
    sn = 0.0
    kn = 0
    tsp = 0.0
    tkp = 0
    tsn = 0.0
    tkn = 0
    for j in range(row.size):
        v = row[j]
        mag = abs(v)
        ok = (not masked) or keep[j] != 0
        pos = v >= 0
        okp = ok and pos
        okn = ok and not pos
        bigp = okp and mag > tp
        bign = okn and mag > tn
        sp += np.float64(mag) if bigp else 0.0
        kp += 1 if bigp else 0
        sn += np.float64(mag) if bign else 0.0
        kn += 1 if bign else 0
        tsp += np.float64(mag) if okp else 0.0
        tkp += 1 if okp else 0
        tsn += np.float64(mag) if okn else 0.0
        tkn += 1 if okn else 0
    return sp, kp, sn, kn, tsp, tkp, tsn, tkn


@njit(cache=True, inline="always")
def _keep_block(keep, masked, b):  # pragma: no cover - compiled
    """Work item b of a flat keep row (the empty row itself when nothing is masked)."""
    return _block(keep, b) if masked else keep


@njit(cache=True, inline="always")
def _asym_update(p, m_, total, big, quaternary):  # pragma: no cover - compiled
    """One round of each half's α update from _half_sums' 4-tuples (total: every kept weight; big: those past the threshold)."""
    if quaternary:
        p = np.float32((total[0] + big[0]) / max(total[1] + 3 * big[1], 1))
        m_ = np.float32((total[2] + big[2]) / max(total[3] + 3 * big[3], 1))
    else:
        if big[1] > 0:
            p = np.float32(big[0] / big[1])
        if big[3] > 0:
            m_ = np.float32(big[2] / big[3])
    return p, m_


@njit(cache=True, inline="always")
def _asym_thresholds(p, m_, quaternary):  # pragma: no cover - compiled
    if quaternary:
        return np.float32(1.5) * p, np.float32(1.5) * m_
    return p / np.float32(2), m_ / np.float32(2)


@njit(cache=True, inline="always")
def _asym_out(row, keep, masked, p, m_, quaternary, out):  # pragma: no cover - compiled
    """out: the nearest level of each weight of row within its half (an exact zero takes +αp), times keep."""
    if quaternary:
        tp, tn = np.float32(1.5) * p, np.float32(1.5) * m_
        for j in range(row.size):
            v = row[j]
            if v >= 0:
                out[j] = (p + p) if v > tp else p
            else:
                out[j] = -m_ if v > -tn else -(m_ + m_)
    else:
        hp, hn = p / np.float32(2), m_ / np.float32(2)
        for j in range(row.size):
            v = row[j]
            out[j] = p if v > hp else (-m_ if v <= -hn else np.float32(0.0))
    if masked:
        _times_keep(out, keep)


@njit(cache=True, inline="always")
def _asym_table(levels, thresholds, r, p, m_, quaternary):  # pragma: no cover - compiled
    if quaternary:
        levels[r, 0], levels[r, 1], levels[r, 2], levels[r, 3] = -(m_ + m_), -m_, p, p + p
        thresholds[r, 0], thresholds[r, 1], thresholds[r, 2] = -(np.float32(1.5) * m_), np.float32(0.0), np.float32(1.5) * p
    else:
        levels[r, 0], levels[r, 1], levels[r, 2] = -m_, np.float32(0.0), p
        thresholds[r, 0], thresholds[r, 1] = -(m_ / np.float32(2)), p / np.float32(2)


@njit(cache=True, parallel=True, fastmath={"reassoc"})
def asym_fake_quantize(values, keep, ap, an, quaternary, refit, iters, q, levels, thresholds):  # pragma: no cover - compiled
    """The asymmetric schemes' QAT forward on R×L rows. With `refit`, each half (the kept weights ≥ 0, and
    those < 0) takes the step's update from its own α (quaternary: `iters` rounds of
    α ← (Σ|w| + Σ_{|w|>1.5α}|w|) / max(n + 3k, 1); ternary: α ← mean of |w| > α/2); both halves share each
    pass. Then the nearest level within the weight's half (an exact zero takes +αp, as it was fitted), times
    keep. The new table goes to levels/thresholds as asym.py's _table writes them. Many rows: one row per
    thread. One long row (a table per layer): fixed blocks of it in parallel, each block's sums added in
    block order, so the result does not depend on the number of threads."""
    rows, length = values.shape
    masked = keep.shape[0] > 0
    if rows == 1 and length > BLOCK:
        row = values[0]
        krow = keep[0] if masked else keep.reshape(-1)
        nb = _blocks(length)
        part = np.zeros((nb, 8))
        p = ap[0]
        m_ = an[0]
        total = (0.0, 0.0, 0.0, 0.0)  # the totals only quaternary's update uses: summed in its first pass
        if refit:
            for it in range(iters):
                tp, tn = _asym_thresholds(p, m_, quaternary)
                if it == 0 and quaternary:
                    for b in prange(nb):
                        (part[b, 0], part[b, 1], part[b, 2], part[b, 3],
                         part[b, 4], part[b, 5], part[b, 6], part[b, 7]) = _half_sums_total(
                            _block(row, b), _keep_block(krow, masked, b), masked, tp, tn)
                else:
                    for b in prange(nb):
                        part[b, 0], part[b, 1], part[b, 2], part[b, 3] = _half_sums(_block(row, b), _keep_block(krow, masked, b), masked, tp, tn)
                sums = _block_totals(part)
                if it == 0 and quaternary:
                    total = (sums[4], sums[5], sums[6], sums[7])
                p, m_ = _asym_update(p, m_, total, (sums[0], sums[1], sums[2], sums[3]), quaternary)
        _asym_table(levels, thresholds, 0, p, m_, quaternary)
        out = q[0]
        for b in prange(nb):
            _asym_out(_block(row, b), _keep_block(krow, masked, b), masked, p, m_, quaternary, _block(out, b))
        return
    for r in prange(rows):
        row = values[r]
        krow = keep[r] if masked else keep.reshape(-1)
        p = ap[r]
        m_ = an[r]
        if refit:
            total = (0.0, 0.0, 0.0, 0.0)
            for it in range(iters):
                tp, tn = _asym_thresholds(p, m_, quaternary)
                if it == 0 and quaternary:
                    sums = _half_sums_total(row, krow, masked, tp, tn)
                    big = (sums[0], sums[1], sums[2], sums[3])
                    total = (sums[4], sums[5], sums[6], sums[7])
                else:
                    big = _half_sums(row, krow, masked, tp, tn)
                p, m_ = _asym_update(p, m_, total, big, quaternary)
        _asym_table(levels, thresholds, r, p, m_, quaternary)
        _asym_out(row, krow, masked, p, m_, quaternary, q[r])


@njit(cache=True, inline="always")
def _table_block(src, th, lv, t, top, dst, codes):  # pragma: no cover - compiled
    """dst[j] = lv[#{k < t : th[k] < src[j]}], the code itself into `codes` (uint8, the block's size). Up to 15
    thresholds: a vectorized comparison pass each over the block's codes; more: a binary search over th (padded
    with +inf to top − 1 entries) done step by step across the whole block, so the loads are independent (one
    weight at a time mispredicts every step: 5× slower)."""
    m = src.size
    if t <= 15:
        _count_block(src, th[:t], codes)
        for j in range(m):
            dst[j] = lv[codes[j]]
        return
    c = np.zeros(m, dtype=np.int32)
    step = top >> 1
    while step > 0:
        for j in range(m):
            c[j] += step * (th[c[j] + step - 1] < src[j])
        step >>= 1
    for j in range(m):
        dst[j] = lv[c[j]]
        codes[j] = c[j]


@njit(cache=True, inline="always")
def _codes_to(codes, lo, hi):  # pragma: no cover - compiled
    """Where a block's codes go: their slice of the flat `codes` when the caller wants them, else a scratch array."""
    if codes.size > 0:
        return codes[lo:hi]
    return np.empty(hi - lo, dtype=np.uint8)


@njit(cache=True, parallel=True)
def table_fake_quantize(values, keep, levels, thresholds, q, codes):  # pragma: no cover - compiled
    """A table's QAT forward in one pass: q[r, j] = levels[r or 0, code] with code the number of
    thresholds[r or 0] below values[r, j] (searchsorted's code), times keep (R×L uint8, or 0×0: every weight
    kept); the codes into `codes` (R×L uint8, or 0×0: not wanted). Where one table serves every row the flat
    array is cut into blocks, so that one long row still splits."""
    rows, length = values.shape
    t = thresholds.shape[1]
    top = 1
    while top < t + 1:
        top *= 2
    th = np.full((thresholds.shape[0], top - 1), np.inf, dtype=np.float32)
    th[:, :t] = thresholds
    masked = keep.shape[0] > 0
    cflat = codes.reshape(-1)
    if th.shape[0] == 1:
        flat, dst = values.reshape(-1), q.reshape(-1)
        kflat = keep.reshape(-1)
        for b in prange(_blocks(flat.size)):
            lo, hi = b * BLOCK, min(flat.size, (b + 1) * BLOCK)
            _table_block(_block(flat, b), th[0], levels[0], t, top, _block(dst, b), _codes_to(cflat, lo, hi))
            if masked:
                _times_keep(_block(dst, b), _block(kflat, b))
        return
    for r in prange(rows):
        _table_block(values[r], th[r], levels[r], t, top, q[r], _codes_to(cflat, r * length, (r + 1) * length))
        _apply_keep(q[r], keep, r)


@njit(cache=True, parallel=True)
def trained_fake_quantize(values, keep, levels, q, codes):  # pragma: no cover - compiled
    """table_fake_quantize for a trained table of up to 16 values (one row, 1×L) that makes its own thresholds, the
    midpoints (l[i] + l[i+1]) / 2 in float32 as base.midpoints gives them, after checking that the values are still
    in order: what took five torch calls a step before the pass. Returns False, writing nothing, where two values
    crossed (the caller then searches a sorted view)."""
    lv = levels[0]
    t = lv.size - 1
    for i in range(t):
        if lv[i + 1] < lv[i]:
            return False
    th = np.empty(max(t, 1), dtype=np.float32)
    for i in range(t):
        th[i] = (lv[i] + lv[i + 1]) / np.float32(2.0)
    flat, dst, cflat = values.reshape(-1), q.reshape(-1), codes.reshape(-1)
    kflat = keep.reshape(-1)
    masked = keep.shape[0] > 0
    for b in prange(_blocks(flat.size)):
        _table_block(_block(flat, b), th, lv, t, 16, _block(dst, b), _block(cflat, b))
        if masked:
            _times_keep(_block(dst, b), _block(kflat, b))
    return True


@njit(cache=True, parallel=True)
def level_sums(codes, grad, levels, out):  # pragma: no cover - compiled
    """out[c] = Σ grad[i] over the i with codes[i] = c, c < levels (a trained table's gradient: what torch's
    gather backward gives). Fixed blocks in parallel, float64 partial sums added in block order."""
    nb = _blocks(codes.size)
    part = np.zeros((nb, levels))
    for b in prange(nb):
        c, g = _block(codes, b), _block(grad, b)
        acc = np.zeros((4, levels))  # four sums per level, one for each position mod 4: neighbours with the same code
        whole = c.size // 4 * 4  # no longer wait for each other's add (400k weights, 16 levels: 165 → 106 µs)
        for i in range(0, whole, 4):
            acc[0, c[i]] += g[i]
            acc[1, c[i + 1]] += g[i + 1]
            acc[2, c[i + 2]] += g[i + 2]
            acc[3, c[i + 3]] += g[i + 3]
        for i in range(whole, c.size):
            acc[0, c[i]] += g[i]
        for v in range(levels):
            part[b, v] = (acc[0, v] + acc[1, v]) + (acc[2, v] + acc[3, v])
    out[:] = _block_totals(part)


UNITS = 256  # units per parallel work item of nearest_centroids


@njit(cache=True, inline="always")
def _add_four(score, fc, xt, j0, cn, first):  # pragma: no cover - compiled
    """score[i] (cn instead when `first`) + fc[j]·xt[j, i] for j = j0 … j0 + 3, added one coordinate after another."""
    a0, a1, a2, a3 = fc[j0], fc[j0 + 1], fc[j0 + 2], fc[j0 + 3]
    r0, r1, r2, r3 = xt[j0], xt[j0 + 1], xt[j0 + 2], xt[j0 + 3]
    for i in range(score.size):
        s = (cn if first else score[i]) + a0 * r0[i]
        s = s + a1 * r1[i]
        s = s + a2 * r2[i]
        score[i] = s + a3 * r3[i]


@njit(cache=True, parallel=True)
def nearest_centroids(x, centroids, c_norm, out):  # pragma: no cover - compiled
    """out[i] = argmin_k c_norm[k] − 2·x[i]·centroids[k], the lowest k on a tie (pq.assign's rule: the nearest
    centroid, |x|² being the same for every k), x N×d. Work items of UNITS units, held transposed (d×m, padded
    with zero rows to a multiple of 4), so that each centroid scores all m of them in vectorized passes and each
    unit keeps its best so far in a small array; torch's form writes the whole N×k score matrix out and reads it
    back (100k units × 256 centroids: 100 MB, most of the time a re-assignment took).

    Each pass adds four coordinates' products, and the last pass also compares, so the score array is read and
    written d/4 times rather than d + 1 (100k units of 4 × 256 centroids: 5.1–7.1 → 2.4 ms). The sum is formed
    in the same order as one coordinate a pass (c_norm, then j = 0, 1, …; a padded coordinate adds +0), so the
    codes are the same bit for bit.

    Units of four coordinates or fewer (a Linear's default) take four centroids a pass: each unit's coordinates,
    best and pick are loaded and stored once for four, and no score array is written (100k units × 256 centroids:
    3.6 → 2.7 ms, the same codes). With more coordinates that form was no faster (d = 5, 8, 9: 0.84/2.26/0.62 ms
    against 0.93/2.36/0.65), so those keep one centroid a pass."""
    n, d = x.shape
    k = centroids.shape[0]
    dp = (d + 3) // 4 * 4
    last = dp - 4
    f = np.zeros((k, dp), dtype=np.float32)
    for c in range(k):
        for j in range(d):
            f[c, j] = np.float32(-2.0) * centroids[c, j]  # × 2 is exact: the same product as (−2·x)·c
    for b in prange((n + UNITS - 1) // UNITS):
        xs, to = x[b * UNITS : min(n, (b + 1) * UNITS)], out[b * UNITS : min(n, (b + 1) * UNITS)]
        m = xs.shape[0]
        xt = np.zeros((dp, m), dtype=np.float32)
        for i in range(m):
            for j in range(d):
                xt[j, i] = xs[i, j]
        best = np.full(m, np.inf, dtype=np.float32)
        pick = np.zeros(m, dtype=np.int32)
        score = np.empty(m, dtype=np.float32)
        r0, r1, r2, r3 = xt[last], xt[last + 1], xt[last + 2], xt[last + 3]
        c = 0
        while not last and c + 4 <= k:  # units of 4 coordinates or fewer: four centroids a pass (see the docstring)
            _four_of_four(c_norm, f, c, r0, r1, r2, r3, best, pick)
            c += 4
        while c < k:
            fc, cn = f[c], c_norm[c]
            for j0 in range(0, last, 4):
                _add_four(score, fc, xt, j0, cn, j0 == 0)
            if not last:
                score[:] = cn
            a0, a1, a2, a3 = fc[last], fc[last + 1], fc[last + 2], fc[last + 3]
            for i in range(m):  # the last four coordinates and the comparison in one pass
                s = score[i] + a0 * r0[i]
                s = s + a1 * r1[i]
                s = s + a2 * r2[i]
                s = s + a3 * r3[i]
                better = s < best[i]
                best[i] = s if better else best[i]
                pick[i] = c if better else pick[i]
            c += 1
        for i in range(m):
            to[i] = pick[i]


@njit(cache=True, inline="always")
def _keep_best_of_four(s, t, u, v, c, low, at):  # pragma: no cover - compiled
    """(best, pick) after centroids c … c+3 scored s, t, u, v, compared in that order (strictly less: the lowest index
    keeps a tie)."""
    better = s < low
    low = s if better else low
    at = c if better else at
    better = t < low
    low = t if better else low
    at = c + 1 if better else at
    better = u < low
    low = u if better else low
    at = c + 2 if better else at
    better = v < low
    return (v if better else low), (c + 3 if better else at)


@njit(cache=True, inline="always")
def _four_of_four(c_norm, f, c, r0, r1, r2, r3, best, pick):  # pragma: no cover - compiled
    """Centroids c … c+3 scored on units of four coordinates or fewer (|c|², then each coordinate's product added in
    order, as the one-centroid pass does) and compared with each unit's best in centroid order, in one pass."""
    an, bn, en, gn = c_norm[c], c_norm[c + 1], c_norm[c + 2], c_norm[c + 3]
    a0, a1, a2, a3 = f[c, 0], f[c, 1], f[c, 2], f[c, 3]
    b0, b1, b2, b3 = f[c + 1, 0], f[c + 1, 1], f[c + 1, 2], f[c + 1, 3]
    e0, e1, e2, e3 = f[c + 2, 0], f[c + 2, 1], f[c + 2, 2], f[c + 2, 3]
    g0, g1, g2, g3 = f[c + 3, 0], f[c + 3, 1], f[c + 3, 2], f[c + 3, 3]
    for i in range(best.size):
        x0, x1, x2, x3 = r0[i], r1[i], r2[i], r3[i]
        s = an + a0 * x0
        s = s + a1 * x1
        s = s + a2 * x2
        s = s + a3 * x3
        t = bn + b0 * x0
        t = t + b1 * x1
        t = t + b2 * x2
        t = t + b3 * x3
        u = en + e0 * x0
        u = u + e1 * x1
        u = u + e2 * x2
        u = u + e3 * x3
        v = gn + g0 * x0
        v = v + g1 * x1
        v = v + g2 * x2
        v = v + g3 * x3
        best[i], pick[i] = _keep_best_of_four(s, t, u, v, c, best[i], pick[i])


@njit(cache=True, parallel=True)
def unit_sums(codes, grad, k, out):  # pragma: no cover - compiled
    """out[c, :] = Σ grad[i, :] over the units i with codes[i] = c (a product quantizer's centroid gradient,
    grad N×d; codes uint8 or int64). Fixed blocks of units in parallel, float64 partial sums added in block order.
    Four coordinates (a Linear's default unit) are added as four named sums, which the loop keeps in registers
    (100k units: 283 → 197 µs; 116 µs with byte codes)."""
    n, d = grad.shape
    step = max(1, BLOCK // max(d, 1))
    nb = (n + step - 1) // step
    part = np.zeros((nb, k, d))
    for b in prange(nb):
        acc = part[b]
        c, g = codes[b * step : min(n, (b + 1) * step)], grad[b * step : min(n, (b + 1) * step)]
        if d == 4:
            for i in range(c.size):
                ci = c[i]
                acc[ci, 0] += g[i, 0]
                acc[ci, 1] += g[i, 1]
                acc[ci, 2] += g[i, 2]
                acc[ci, 3] += g[i, 3]
        else:
            for i in range(c.size):
                row = acc[c[i]]
                gi = g[i]
                for j in range(d):
                    row[j] += gi[j]
    out[:] = _block_totals(part.reshape(nb, k * d)).reshape(k, d)


@njit(cache=True, parallel=True)
def gather_units(table, codes, keep, out):  # pragma: no cover - compiled
    """out[i, :] = table[codes[i], :] × keep[i, :] (no mask when keep is 0×0): a product quantizer's forward,
    what index_select and the mask product gave in two passes (100k units of 4: 215 → 65 µs). Returns True
    when a code is beyond the table (out is then unspecified)."""
    n, d = out.shape
    k = table.shape[0]
    masked = keep.shape[0] > 0
    step = max(1, BLOCK // max(d, 1))
    nb = (n + step - 1) // step
    bad = np.zeros(nb, dtype=np.bool_)
    for b in prange(nb):
        c, o = codes[b * step : min(n, (b + 1) * step)], out[b * step : min(n, (b + 1) * step)]
        for i in range(c.size):
            ci = np.int64(c[i])
            if ci >= k or ci < 0:
                bad[b] = True
                ci = 0
            if d == 4:
                o[i, 0] = table[ci, 0]
                o[i, 1] = table[ci, 1]
                o[i, 2] = table[ci, 2]
                o[i, 3] = table[ci, 3]
            else:
                row, oi = table[ci], o[i]
                for j in range(d):
                    oi[j] = row[j]
        if masked:
            kb = keep[b * step : min(n, (b + 1) * step)]
            for i in range(c.size):
                _times_keep(o[i], kb[i])
    return bad.any()


@njit(cache=True, inline="always")
def _packed_block(src, table, per_log, bits, low, dst):  # pragma: no cover - compiled
    """dst[i] = table[code i], code i at bits·(i mod per) of byte src[i / per] (per = 2**per_log codes a byte;
    constants at every call site, so the shifts are fixed and the loop runs from 0)."""
    for i in range(dst.size):
        dst[i] = table[(np.int64(src[i >> per_log]) >> ((i & ((1 << per_log) - 1)) * bits)) & low]


@njit(cache=True, parallel=True)
def gather_packed(levels, data, bits, n, out):  # pragma: no cover - compiled
    """out (flat) = levels[0, code i] for the n codes still bit-packed in `data` (bitpack's layout), one shared
    table and 2, 4 or 8 bits (whole codes per byte, code k of a byte at bits·k): the codes are never written out
    as bytes. The table is padded to 2**bits entries with zeros; codes beyond the real table are counted from the
    bytes afterwards (a byte-indexed count, only when the table is short). Returns that count."""
    width = levels.shape[1]
    table = np.zeros(1 << bits, dtype=np.float32)
    table[: min(width, 1 << bits)] = levels[0, : min(width, 1 << bits)]
    flat = out.reshape(-1)
    step = BLOCK
    for b in prange(_blocks(n)):
        lo, hi = b * step, min(n, (b + 1) * step)
        dst = flat[lo:hi]
        if bits == 2:
            _packed_block(data[lo >> 2 : (hi + 3) >> 2], table, 2, 2, 3, dst)
        elif bits == 4:
            _packed_block(data[lo >> 1 : (hi + 1) >> 1], table, 1, 4, 15, dst)
        else:
            _packed_block(data[lo:hi], table, 0, 8, 255, dst)
    if width >= 1 << bits:
        return 0
    per = 8 // bits
    low = (1 << bits) - 1
    bad_in = np.zeros(256, dtype=np.int64)
    for v in range(256):
        for k in range(per):
            bad_in[v] += 1 if ((v >> (bits * k)) & low) >= width else 0
    full = n // per
    bad = 0
    for b in prange((full + step - 1) // step):
        src = data[b * step : min(full, (b + 1) * step)]
        for i in range(src.size):
            bad += bad_in[src[i]]
    for k in range(n - per * full):  # the last, partial byte: only the codes the layer has (the rest are zero padding)
        bad += 1 if ((np.int64(data[full]) >> (bits * k)) & low) >= width else 0
    return bad
