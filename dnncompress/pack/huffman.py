"""Canonical Huffman coding of small-alphabet symbols (codes, index gaps), vectorized.

Encoding writes an MSB-first bitstream. Decoding is block-parallel: the encoder records the
bit offset of every BLOCK-th symbol, and the decoder advances all blocks together with one
table lookup per step (2^maxlen-entry table), so the Python loop runs BLOCK times, not once
per symbol; with numba, one compiled loop per block walks the same table. Code lengths are
limited to MAX_LEN bits.
"""
from __future__ import annotations

import heapq

import numpy as np

from . import bitpack

MAX_LEN = 16
BLOCK = 4096
NUMPY_WALK = 1 << 23  # what the numpy walk costs, in values of one-off work (compiled.py): up to BLOCK Python steps of a
#                       dozen array operations each (a block-long walk: about 30 ms here), however few the symbols


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code lengths for symbol counts (0 for absent symbols), limited to MAX_LEN."""
    counts = np.asarray(counts, dtype=np.int64)
    present = np.flatnonzero(counts)
    lengths = np.zeros(counts.size, dtype=np.int64)
    if present.size == 0:
        return lengths
    if present.size == 1:
        lengths[present] = 1
        return lengths
    work = counts.copy()
    while True:
        heap = [(int(work[s]), i, [int(s)]) for i, s in enumerate(present)]
        heapq.heapify(heap)
        lengths[:] = 0
        tie = len(heap)
        while len(heap) > 1:
            c1, _, s1 = heapq.heappop(heap)
            c2, _, s2 = heapq.heappop(heap)
            for s in s1 + s2:
                lengths[s] += 1
            heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
            tie += 1
        if lengths.max() <= MAX_LEN:
            return lengths
        floor = max(1, int(work[present].sum()) >> (MAX_LEN - 2))  # flatten rare symbols and retry
        work[present] = np.maximum(work[present], floor)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values (MSB-first) for the given lengths."""
    codes = np.zeros(lengths.size, dtype=np.int64)
    order = sorted((int(length), s) for s, length in enumerate(lengths) if length > 0)
    code, prev = 0, order[0][0] if order else 0
    for i, (length, s) in enumerate(order):
        if i:
            code = (code + 1) << (length - prev)
        codes[s] = code
        prev = length
    return codes


def encode(symbols: np.ndarray, alphabet: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """symbols → (lengths per symbol [uint8], block bit offsets [uint32], payload bytes [uint8])."""
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
    codes = canonical_codes(lengths)
    sym_len = lengths[symbols]
    ends = np.cumsum(sym_len)
    starts = ends - sym_len
    total = int(ends[-1]) if symbols.size else 0
    bits = np.zeros(total + 24, dtype=np.uint8)
    sym_code = codes[symbols]
    for j in range(int(lengths.max()) if symbols.size else 0):  # bit j of each code, MSB first
        sel = sym_len > j
        bits[starts[sel] + j] = (sym_code[sel] >> (sym_len[sel] - 1 - j)) & 1
    payload = np.packbits(bits[: total + (-total) % 8 + 24])  # 3 spare bytes so windows never run off
    offsets = starts[::BLOCK].astype(np.uint32)
    return lengths.astype(np.uint8), offsets, payload


def decode(lengths: np.ndarray, offsets: np.ndarray, payload: np.ndarray, n: int) -> np.ndarray:
    lengths = np.asarray(lengths, dtype=np.int64)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if lengths.max(initial=0) > MAX_LEN or lengths.max(initial=0) == 0:
        raise ValueError("bad Huffman code lengths")
    if offsets.size != (n + BLOCK - 1) // BLOCK:
        raise ValueError("Huffman block table does not match the symbol count")
    maxlen = int(lengths.max())
    codes = canonical_codes(lengths)
    table_sym = np.full(1 << maxlen, -1, dtype=np.int16)  # symbols < 256, -1 = no code: small tables, small output
    table_len = np.zeros(1 << maxlen, dtype=np.int64)
    for s in np.flatnonzero(lengths):
        lo = int(codes[s]) << (maxlen - int(lengths[s]))
        hi = lo + (1 << (maxlen - int(lengths[s])))
        if hi > table_sym.size:
            raise ValueError("bad Huffman code lengths")
        table_sym[lo:hi] = s
        table_len[lo:hi] = lengths[s]
    raw = np.asarray(payload, dtype=np.uint8)
    if raw.size < 3:
        raise ValueError("Huffman payload is truncated")
    pos = offsets.astype(np.int64)
    limit = (raw.size - 3) * 8  # the last position a window can start at
    if pos.size and (pos.max() > limit or (np.diff(pos) < 0).any()):
        raise ValueError("Huffman block offsets point past the payload")
    kernels = bitpack.compiled(n, least=0, cost=max(n, NUMPY_WALK))
    if kernels is not None:  # the same walk, one compiled loop per block
        out = np.empty(n, dtype=np.int16)
        if kernels.huffman_blocks(raw, pos, n, BLOCK, maxlen, table_sym, table_len, limit, out):
            raise ValueError("Huffman payload is truncated or corrupt")
        return out
    d = raw.astype(np.int32)  # 24-bit windows fit; 4 bytes per payload byte, not 8
    out = np.empty(offsets.size * BLOCK, dtype=np.int16)
    mask = (1 << maxlen) - 1
    last_count = n - (offsets.size - 1) * BLOCK
    last_end = 0
    for step in range(BLOCK if offsets.size > 1 else n):  # one block: only its own symbols' steps
        p = np.minimum(pos, limit)  # finished blocks may run on; their output is discarded
        byte = p >> 3
        window = (d[byte] << 16) | (d[byte + 1] << 8) | d[byte + 2]
        idx = (window >> (24 - (p & 7) - maxlen)) & mask
        sym = table_sym[idx]
        out[step::BLOCK] = sym
        pos = pos + table_len[idx]
        if step == last_count - 1:
            last_end = int(pos[-1])
            if (sym[-1] < 0) or last_end > limit:
                raise ValueError("Huffman payload is truncated or corrupt")
    # integrity: every full block ends exactly where the next one starts, and holds only valid codes
    if offsets.size > 1 and not np.array_equal(pos[:-1], offsets[1:].astype(np.int64)):
        raise ValueError("Huffman payload is corrupt (block boundaries do not match)")
    result = out[:n]
    if (result < 0).any():
        raise ValueError("invalid Huffman code in payload")
    return result
