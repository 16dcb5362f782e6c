"""Exact L2 fits by the sorted-prefix method (DESIGN §2), vectorized over rows.

For magnitudes a (sorted descending) with prefix sums S_k and total S over the n valid
entries: four-value {1,2}·α maximizes (S+S_k)²/(n+3k) over k, α=(S+S_k)/(n+3k);
ternary {0,1}·α maximizes S_k²/k, α=S_k/k. Invalid (pruned) entries are sorted last as
zeros and k is limited to the valid count, so each row may have its own n.
"""
from __future__ import annotations

import torch

from .fastcode import as_bytes


def _sorted_prefix(mags: torch.Tensor, valid: torch.Tensor):
    a = torch.where(valid, mags, torch.zeros_like(mags)).double()
    a, _ = torch.sort(a, dim=1, descending=True)
    zero = torch.zeros(a.shape[0], 1, dtype=a.dtype, device=a.device)
    prefix = torch.cat([zero, a.cumsum(1)], dim=1)  # prefix[:, k] = sum of the k largest
    n = valid.sum(1, keepdim=True).double()
    k = torch.arange(a.shape[1] + 1, device=a.device, dtype=a.dtype).unsqueeze(0)
    return prefix, n, k


def fourval_alpha(mags: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Exact α per row for levels {α, 2α} on magnitudes (the 2α level goes to the k largest)."""
    prefix, n, k = _sorted_prefix(mags, valid)
    total = prefix.gather(1, n.long())
    denom = n + 3 * k
    score = (total + prefix) ** 2 / denom.clamp_min(1e-300)
    score = torch.where(k <= n, score, torch.full_like(score, -1.0))
    best = score.argmax(1, keepdim=True)
    alpha = (total + prefix.gather(1, best)) / (n + 3 * best).clamp_min(1)
    return alpha.float()


def ternary_alpha(mags: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Exact α per row for levels {0, α} on magnitudes (α goes to the k largest, k ≥ 1)."""
    prefix, n, k = _sorted_prefix(mags, valid)
    score = prefix**2 / k.clamp_min(1)
    score = torch.where((k >= 1) & (k <= n), score, torch.full_like(score, -1.0))
    best = score.argmax(1, keepdim=True)
    alpha = prefix.gather(1, best) / best.clamp_min(1)
    return alpha.float()


def fourval_refine(mags: torch.Tensor, valid: torch.Tensor, alpha: torch.Tensor, iters: int = 2) -> torch.Tensor:
    """O(n) alternating update from a warm start: q from the 1.5α threshold, then α = Σ|w||q| / Σq²."""
    a = mags * as_bytes(valid)  # pruned entries count as zeros (uint8 arithmetic: fastcode.as_bytes)
    n = valid.sum(1, keepdim=True).float()
    total = a.sum(1, keepdim=True)
    for _ in range(iters):
        big = a > 1.5 * alpha
        alpha = (total + (a * as_bytes(big)).sum(1, keepdim=True)) / (n + 3 * big.sum(1, keepdim=True)).clamp_min(1)
    return alpha


def ternary_refine(mags: torch.Tensor, valid: torch.Tensor, alpha: torch.Tensor, iters: int = 2) -> torch.Tensor:
    """O(n) alternating update: threshold α/2, then α = mean of the magnitudes above it."""
    a = mags * as_bytes(valid)
    for _ in range(iters):
        big = a > alpha / 2
        count = big.sum(1, keepdim=True)
        alpha = torch.where(count > 0, (a * as_bytes(big)).sum(1, keepdim=True) / count.clamp_min(1), alpha)
    return alpha
