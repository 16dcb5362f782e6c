"""bitpack's byte kernels for 3, 5, 6 and 7 bits, compiled by numba (imported only when numba is installed;
bitpack.py keeps the numpy version as the fallback and as the reference the tests compare with).

The same bitstream: 8 codes form one 64-bit group, code k of the group at bits b·k, written as b bytes.
numpy needs 7 shift-and-or passes over the whole array for that; one compiled loop reads each code once."""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def to_bytes(codes, bits, out):  # pragma: no cover - compiled
    """codes (uint8, padded to a multiple of 8) → out (uint8, len(codes) // 8 * bits)."""
    groups = codes.size // 8
    for g in range(groups):
        v = np.uint64(0)
        for k in range(8):
            v |= np.uint64(codes[8 * g + k]) << np.uint64(bits * k)
        base = g * bits
        for j in range(bits):
            out[base + j] = np.uint8((v >> np.uint64(8 * j)) & np.uint64(0xFF))


@njit(cache=True)
def from_bytes(data, bits, out):  # pragma: no cover - compiled
    """data (uint8, len(out) // 8 * bits) → out (uint8 codes, padded to a multiple of 8)."""
    groups = out.size // 8
    mask = np.uint64((1 << bits) - 1)
    for g in range(groups):
        base = g * bits
        v = np.uint64(0)
        for j in range(bits):
            v |= np.uint64(data[base + j]) << np.uint64(8 * j)
        for k in range(8):
            out[8 * g + k] = np.uint8((v >> np.uint64(bits * k)) & mask)
