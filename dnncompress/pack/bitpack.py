"""n-bit code packing into uint32 words, 1–8 bits, vectorized (no Python loop over elements).

Bit order: the words form one little-endian bitstream; stream bit j is bit (j mod 32) of
word j // 32, and code i occupies stream bits b·i … b·i+b−1 (its least significant bit
first). So for b = 2, word k holds codes 16k … 16k+15 with code 16k+m in bits 2m, 2m+1.
Codes straddle words when b does not divide 32 (3, 5, 6, 7 bits).
"""
from __future__ import annotations

import numpy as np

from ..compiled import kernels as compiled_module

COMPILED_FROM = 1 << 16  # codes; below this the numpy kernels win (and numba is not even imported)
USE_COMPILED = True  # the tests turn it off to compare with the numpy reference


def compiled(n: int, least: int = COMPILED_FROM, cost: int | None = None):
    """numba's kernels for n codes (every width but 8, which is a copy), or None when numba is not
    installed (or turned off), n is below `least`, or packing is one-off work that has not yet earned
    loading numba (compiled.py). `cost`: what the job charges that budget when it is not n (Huffman's numpy walk)."""
    return compiled_module("dnncompress.pack._bitpack_numba", n if cost is None else cost) if USE_COMPILED and n >= least else None


def words_needed(n: int, bits: int) -> int:
    return (n * bits + 31) // 32


def _to_bytes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 codes (< 2**bits) into the little-endian bitstream, as bytes.

    Byte-level kernels: 8/b codes are read as one wider integer and folded with shifts, so each
    pass touches the codes once (4× less traffic than widening to uint32 first)."""
    n = codes.size
    if bits == 8:
        return codes
    if bits == 1:
        return np.packbits(codes, bitorder="little")
    if bits in (2, 4):
        per = 8 // bits
        padded = np.zeros(-(-n // per) * per, dtype=np.uint8)
        padded[:n] = codes
        if bits == 2:  # 4 codes c0..c3 at bits 0, 8, 16, 24 → c0 | c1<<2 | c2<<4 | c3<<6
            v = padded.view("<u4")
            return ((v | (v >> 6) | (v >> 12) | (v >> 18)) & 0xFF).astype(np.uint8)
        v = padded.view("<u2")  # 2 codes at bits 0, 8 → c0 | c1<<4
        return ((v | (v >> 4)) & 0xFF).astype(np.uint8)
    # 3, 5, 6, 7 bits: 8 codes (one uint64) → b bytes
    padded = np.zeros(-(-n // 8) * 8, dtype=np.uint8)
    padded[:n] = codes
    v = padded.view("<u8")
    acc = v & np.uint64(0xFF)
    for i in range(1, 8):
        acc |= ((v >> np.uint64(8 * i)) & np.uint64(0xFF)) << np.uint64(bits * i)
    return np.ascontiguousarray(acc.view(np.uint8).reshape(-1, 8)[:, :bits]).ravel()


def _from_bytes(data: np.ndarray, bits: int, n: int) -> np.ndarray:
    if bits == 8:
        return data[:n].copy()
    if bits == 1:
        return np.unpackbits(data, bitorder="little", count=n)
    if bits in (2, 4):
        per = 8 // bits
        mask = (1 << bits) - 1
        out = np.empty((data.size, per), dtype=np.uint8)
        for j in range(per):
            out[:, j] = (data >> (bits * j)) & mask
        return out.ravel()[:n]
    groups = -(-n // 8)
    avail = data[: groups * bits]
    chunk = np.zeros(groups * bits, dtype=np.uint8)
    chunk[: avail.size] = avail
    raw = np.zeros((groups, 8), dtype=np.uint8)
    raw[:, :bits] = chunk.reshape(groups, bits)
    v = raw.view("<u8").ravel()
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((groups, 8), dtype=np.uint8)
    for i in range(8):
        out[:, i] = (v >> np.uint64(bits * i)) & mask
    return out.ravel()[:n]


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """codes (any int dtype, values < 2**bits) → uint32 words."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    codes = np.ascontiguousarray(codes, dtype=np.uint8).ravel()
    out = np.zeros(words_needed(codes.size, bits) * 4, dtype=np.uint8)
    kernels = compiled(codes.size) if bits not in (1, 8) else None  # 1 bit: numpy's packbits is C already
    if kernels is not None:  # straight into the words
        kernels.to_bytes(codes, bits, out)
        return out.view("<u4")
    data = _to_bytes(codes, bits)
    out[: min(data.size, out.size)] = data[: out.size]
    return out.view("<u4")


def unpack(words: np.ndarray, bits: int, n: int) -> np.ndarray:
    """uint32 words → the first n codes (uint8)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    words = np.ascontiguousarray(words, dtype="<u4").ravel()
    if words.size < words_needed(n, bits):
        raise ValueError("not enough words for the codes")
    kernels = compiled(n) if bits not in (1, 8) else None
    if kernels is not None and bits in (2, 4):
        per = 8 // bits
        lanes = np.empty(-(-n // per), dtype=np.uint32 if bits == 2 else np.uint16)
        kernels.spread(words.view(np.uint8), bits, lanes)
        return lanes.view(np.uint8)[:n]
    if kernels is not None:
        out = np.empty(n, dtype=np.uint8)
        kernels.from_bytes(words.view(np.uint8), bits, n, out)
        return out
    return _from_bytes(words.view(np.uint8), bits, n)
