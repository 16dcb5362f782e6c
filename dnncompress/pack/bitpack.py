"""n-bit code packing into uint32 words, 1–8 bits, vectorized (no Python loop over elements).

Bit order: the words form one little-endian bitstream; stream bit j is bit (j mod 32) of
word j // 32, and code i occupies stream bits b·i … b·i+b−1 (its least significant bit
first). So for b = 2, word k holds codes 16k … 16k+15 with code 16k+m in bits 2m, 2m+1.
Codes straddle words when b does not divide 32 (3, 5, 6, 7 bits).
"""
from __future__ import annotations

import numpy as np


def words_needed(n: int, bits: int) -> int:
    return (n * bits + 31) // 32


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """codes (any int dtype, values < 2**bits) → uint32 words."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    codes = np.ascontiguousarray(codes, dtype=np.uint8).ravel()
    n = codes.size
    out_words = words_needed(n, bits)
    if 32 % bits == 0:
        per = 32 // bits
        padded = np.zeros(out_words * per, dtype=np.uint32)
        padded[:n] = codes
        cols = padded.reshape(-1, per)
        words = cols[:, 0].copy()
        for j in range(1, per):  # per ≤ 32 column passes, each vectorized
            words |= cols[:, j] << np.uint32(bits * j)
        return words
    bitmat = np.unpackbits(codes[:, None], axis=1, bitorder="little")[:, :bits]
    stream = np.zeros(out_words * 32, dtype=np.uint8)
    stream[: n * bits] = bitmat.ravel()
    return np.packbits(stream, bitorder="little").view("<u4").astype(np.uint32, copy=False)


def unpack(words: np.ndarray, bits: int, n: int) -> np.ndarray:
    """uint32 words → the first n codes (uint8)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    words = np.ascontiguousarray(words, dtype="<u4").ravel()
    if words.size < words_needed(n, bits):
        raise ValueError("not enough words for the codes")
    if 32 % bits == 0:
        per = 32 // bits
        mask = np.uint32((1 << bits) - 1)
        out = np.empty((words.size, per), dtype=np.uint8)
        for j in range(per):
            out[:, j] = (words >> np.uint32(bits * j)) & mask
        return out.ravel()[:n]
    stream = np.unpackbits(words.view(np.uint8), bitorder="little")[: n * bits].reshape(n, bits)
    return np.packbits(stream, axis=1, bitorder="little").ravel()
