"""bitpack's kernels compiled by numba (imported only when numba is installed; bitpack.py keeps the numpy
version as the fallback and as the reference the tests compare with).

The same bitstream for every width: 8 codes form one 64-bit group, code k of the group at bits b·k,
written as b bytes; a last partial group is written with zero codes after the end, cut to the bytes the
stream has. numpy needs a shift-and-or pass per code of a group over the whole array; one compiled loop
reads each code once and writes the packed words in place, in parallel blocks of groups."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

GROUPS = 1 << 13  # groups of 8 codes per parallel work item


@njit(cache=True, inline="always")
def _group(codes, start, stop, bits):  # pragma: no cover - compiled
    v = np.uint64(0)
    for k in range(stop - start):
        v |= np.uint64(codes[start + k]) << np.uint64(bits * k)
    return v


@njit(cache=True, parallel=True)
def to_bytes(codes, bits, out):  # pragma: no cover - compiled
    """codes (uint8, any length n) → out (uint8, at least ceil(n·bits / 8) bytes; the rest is left alone)."""
    n = codes.size
    if bits == 2 or bits == 4:  # whole codes per byte: fold a 4- (2-) code word into its byte
        per = 8 // bits
        whole = n // per
        if bits == 2:
            words = codes[: whole * 4].view(np.uint32)
            for i in prange(whole):
                v = words[i]
                out[i] = np.uint8((v | (v >> 6) | (v >> 12) | (v >> 18)) & 0xFF)
        else:
            halves = codes[: whole * 2].view(np.uint16)
            for i in prange(whole):
                v = halves[i]
                out[i] = np.uint8((v | (v >> 4)) & 0xFF)
        if n > per * whole:
            v = 0
            for k in range(n - per * whole):
                v |= np.int64(codes[per * whole + k]) << (bits * k)
            out[whole] = np.uint8(v)
        return
    full = n // 8
    for b in prange((full + GROUPS - 1) // GROUPS):
        g0, g1 = b * GROUPS, min(full, (b + 1) * GROUPS)
        src, dst = codes[8 * g0 : 8 * g1], out[bits * g0 : bits * g1]  # slices from 0: no wraparound test per access
        for g in range(g1 - g0):
            v = np.uint64(0)
            for k in range(8):
                v |= np.uint64(src[8 * g + k]) << np.uint64(bits * k)
            for j in range(bits):
                dst[g * bits + j] = np.uint8((v >> np.uint64(8 * j)) & np.uint64(0xFF))
    if n > 8 * full:  # the last, partial group: only the bytes its codes reach
        v = _group(codes, 8 * full, n, bits)
        base = full * bits
        for j in range(((n - 8 * full) * bits + 7) // 8):
            out[base + j] = np.uint8((v >> np.uint64(8 * j)) & np.uint64(0xFF))


@njit(cache=True, parallel=True)
def from_bytes(data, bits, n, out):  # pragma: no cover - compiled
    """data (uint8, at least ceil(n·bits / 8) bytes) → out (uint8, n codes)."""
    full = n // 8
    mask = np.uint64((1 << bits) - 1)
    for b in prange((full + GROUPS - 1) // GROUPS):
        g0, g1 = b * GROUPS, min(full, (b + 1) * GROUPS)
        src, dst = data[bits * g0 : bits * g1], out[8 * g0 : 8 * g1]  # slices from 0: no wraparound test per access
        for g in range(g1 - g0):
            v = np.uint64(0)
            for j in range(bits):
                v |= np.uint64(src[g * bits + j]) << np.uint64(8 * j)
            for k in range(8):
                dst[8 * g + k] = np.uint8((v >> np.uint64(bits * k)) & mask)
    if n > 8 * full:
        base = full * bits
        v = np.uint64(0)
        for j in range(((n - 8 * full) * bits + 7) // 8):
            v |= np.uint64(data[base + j]) << np.uint64(8 * j)
        for k in range(n - 8 * full):
            out[8 * full + k] = np.uint8((v >> np.uint64(bits * k)) & mask)


@njit(cache=True, parallel=True)
def spread(data, bits, lanes):  # pragma: no cover - compiled
    """2 or 4 bits: lanes[i] (uint32 for 2 bits, uint16 for 4) = the codes of byte data[i], one per byte
    lane (a 256-entry table). The caller sizes lanes, views it as bytes and cuts it to n codes."""
    per = 8 // bits
    low = (1 << bits) - 1
    table = np.zeros(256, dtype=lanes.dtype)
    for v in range(256):
        word = 0
        for k in range(per):
            word |= ((v >> (bits * k)) & low) << (8 * k)
        table[v] = word
    for i in prange(lanes.size):
        lanes[i] = table[data[i]]


@njit(cache=True, parallel=True)
def huffman_blocks(data, offsets, n, block, maxlen, table_sym, table_len, limit, out):  # pragma: no cover - compiled
    """huffman.decode's block-parallel walk, one block per work item: each block reads its symbols from
    its recorded bit offset through the 2^maxlen table. Returns how many blocks failed a check the numpy
    walk makes too: a window past `limit`, a bit pattern with no code, or a block that does not end where
    the next begins (the last one: past the payload). Bits come from a 64-bit buffer refilled 8 bytes at a
    time while 8 bytes remain (about 30 symbols a refill), then from 3-byte windows as the numpy walk reads them."""
    blocks = offsets.size
    mask = (1 << maxlen) - 1
    umaxlen = np.uint64(maxlen)
    top = np.uint64(64) - umaxlen
    umask = np.uint64(mask)
    bad = 0
    for b in prange(blocks):
        pos = offsets[b]
        start = b * block
        count = min(block, n - start)
        dst = out[start : start + count]  # a slice from 0: no wraparound test per access
        ok = True
        i = 0
        while ok and i < count:
            byte = pos >> 3
            if byte + 8 <= data.size:  # refill: the 8 bytes from pos's byte, shifted so that pos is the top bit
                w = np.uint64(0)
                for j in range(8):
                    w = (w << np.uint64(8)) | np.uint64(data[byte + j])
                skip = pos & 7
                w = w << np.uint64(skip)
                avail = 64 - skip
                while avail >= maxlen and i < count:
                    if pos > limit:
                        ok = False
                        break
                    idx = np.int64((w >> top) & umask)
                    sym = table_sym[idx]
                    if sym < 0:
                        ok = False
                        break
                    length = table_len[idx]
                    dst[i] = sym
                    i += 1
                    pos += length
                    avail -= length
                    w = w << np.uint64(length)
            else:
                if pos > limit:
                    ok = False
                    break
                window = (np.int64(data[byte]) << 16) | (np.int64(data[byte + 1]) << 8) | np.int64(data[byte + 2])
                idx = (window >> (24 - (pos & 7) - maxlen)) & mask
                sym = table_sym[idx]
                if sym < 0:
                    ok = False
                    break
                dst[i] = sym
                i += 1
                pos += table_len[idx]
        if ok and ((b + 1 < blocks and pos != offsets[b + 1]) or (b + 1 == blocks and pos > limit)):
            ok = False
        if not ok:
            bad += 1
    return bad
