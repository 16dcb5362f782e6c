"""Incoherence rotation (QuIP-style): quantize W·R instead of W, with R a randomized Hadamard transform.

A layer's weight rows often carry a few huge columns (the inputs a transformer's outlier features
feed, a conv's centre taps). A scalar grid spends its few levels on them or clips them. Rotating
each row by an orthogonal R spreads every column over all of them: the rotated rows look Gaussian,
one shared table fits them, and ‖(W − Q)X‖ is unchanged by the rotation (Q R ᵀ is decoded back, and
R Rᵀ = I), so GPTQ can run in the rotated frame with H' = Rᵀ H R.

R = diag(s) · blockdiag(H_b/√b, …): s is a ±1 vector fixed by the row length alone (SHAKE-256 of a
constant and n, so the same bytes on every machine and nothing to store), H_b the Sylvester Hadamard
matrix of the largest power of two b ≤ 4096 dividing n. Applying it is a fast Walsh–Hadamard
transform, O(n log b) per row; Rᵀ applies the same steps in reverse. A row length with no power-of-two
factor (odd n) gets b = 1: only the signs change, which does no harm and no good.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

MAX_BLOCK = 4096


def block_size(n: int) -> int:
    """The Hadamard block: the largest power of two ≤ MAX_BLOCK dividing n."""
    b = 1
    while n % (2 * b) == 0 and 2 * b <= MAX_BLOCK:
        b *= 2
    return b


def signs(n: int) -> torch.Tensor:
    """The fixed ±1 vector of a row of length n (a pure function of n)."""
    digest = hashlib.shake_256(f"dnncompress-rotation-v1:{n}".encode()).digest((n + 7) // 8)
    bits = np.unpackbits(np.frombuffer(digest, dtype=np.uint8))[:n]
    return torch.from_numpy(1.0 - 2.0 * bits.astype(np.float32))


def _walsh_hadamard(x: torch.Tensor, b: int) -> torch.Tensor:
    """x (rows × n) with every run of b columns multiplied by H_b/√b (H_b symmetric, so this is its own inverse)."""
    rows, n = x.shape
    h = 1
    while h < b:
        y = x.reshape(rows, n // (2 * h), 2, h)
        x = torch.cat([y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]], dim=2).reshape(rows, n)
        h *= 2
    return x * (1.0 / b**0.5) if b > 1 else x


def rotate(w: torch.Tensor) -> torch.Tensor:
    """W·R for the rows of w (shape kept: rows = dim 0, columns = everything else)."""
    rows = w.reshape(w.shape[0], -1)
    n = rows.shape[1]
    out = _walsh_hadamard(rows * signs(n).to(rows), block_size(n))
    return out.reshape(w.shape)


def unrotate(w: torch.Tensor) -> torch.Tensor:
    """W·Rᵀ: undoes rotate()."""
    rows = w.reshape(w.shape[0], -1)
    n = rows.shape[1]
    out = _walsh_hadamard(rows, block_size(n)) * signs(n).to(rows)
    return out.reshape(w.shape)


def rotate_gram(h: torch.Tensor) -> torch.Tensor:
    """Rᵀ·H·R for a symmetric d×d H (the input Gram matrix seen by the rotated weight)."""
    return rotate(rotate(h).T.contiguous()).T.contiguous()
