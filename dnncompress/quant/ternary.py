"""Ternary weights {−α,0,+α}: the TWN rule (Δ = 0.7·mean|W|) or the exact L2 fit (`rule: exact`)."""
from __future__ import annotations

import torch

from ..errors import UserError
from .base import SCHEMES, ScalarQuantizer, StraightThrough, check_table
from .exact import ternary_alpha, ternary_refine
from .fastcode import as_bytes, fused_forward


def _table(alpha: torch.Tensor, delta: torch.Tensor):
    levels = torch.cat([-alpha, torch.zeros_like(alpha), alpha], dim=1)
    thresholds = torch.cat([-delta, delta], dim=1)
    return levels, thresholds


def twn_fit(rows: torch.Tensor, valid: torch.Tensor):
    """Li & Liu's rule: Δ = 0.7·mean|w|, α = mean of |w| above Δ."""
    a = rows.abs() * as_bytes(valid)
    n = valid.sum(1, keepdim=True).clamp_min(1)
    delta = 0.7 * a.sum(1, keepdim=True) / n
    big = a > delta
    alpha = (a * as_bytes(big)).sum(1, keepdim=True) / big.sum(1, keepdim=True).clamp_min(1)
    return alpha, delta


@SCHEMES.register("ternary")
class Ternary(ScalarQuantizer):
    scheme = "ternary"
    option_names = ("rule",)

    def __init__(self, *args, rule: str = "twn", **kw):
        if rule not in ("twn", "exact"):
            raise UserError(f"ternary rule must be 'twn' or 'exact', got '{rule}'")
        super().__init__(*args, rule=rule, **kw)

    @property
    def num_levels(self) -> int:
        return 3

    def _tables(self):
        return {"alpha": self.levels[:, 2:3].detach().float().cpu().clone()}

    def _from_tables(self, tables, rows):
        """Decoded weights are exactly 0 or ±α, so any threshold between them re-encodes them the same:
        α/2 is derived, not stored (the TWN Δ is re-fitted from the weights at the next training step)."""
        alpha = check_table(tables, "alpha", (rows, 1))
        return _table(alpha, alpha / 2)

    def _fit(self, rows, valid):
        if self.options["rule"] == "twn":
            return _table(*twn_fit(rows, valid))
        alpha = ternary_alpha(rows.abs(), valid)
        return _table(alpha, alpha / 2)

    def _refine(self, rows, valid):
        if self.options["rule"] == "twn":
            return self._fit(rows, valid)  # the TWN rule is already O(n)
        alpha = ternary_refine(rows.abs(), valid, self.levels[:, 2:3].detach().float())
        return _table(alpha, alpha / 2)

    def fake_quantize(self, w, mask=None):
        """Closed form, equal bit for bit to decode(encode(w)): −α where w ≤ −Δ, +α where w > Δ, 0 between
        (searchsorted's side at a tie), after the same per-step re-fit the generic path does. It skips the
        code search and the gather, the larger part of a ternary QAT step."""
        if not self.fitted or (self.training and self.refit == "exact"):
            return super().fake_quantize(w, mask)
        c = self.levels.shape[0]
        refit = self.training and self.refit != "none"
        with torch.no_grad():  # large layers: the step's update and the forward in one compiled pass
            fast = fused_forward("ternary_fake_quantize", w.detach().reshape(c, -1).float(), mask,
                                 (self.levels[:, 2].detach(), self.thresholds[:, 1]), 3, self.options["rule"] == "twn", refit, 2)
        if fast is not None:
            return self._adopt(w, fast, refit)
        with torch.no_grad():
            rows = w.detach().reshape(c, -1).float()
            if self.training and self.refit != "none":
                valid = mask.reshape(c, -1).to(torch.bool) if mask is not None else torch.ones_like(rows, dtype=torch.bool)
                self._store(*self._refine(rows, valid))
            neg, pos = self.levels[:, 0:1], self.levels[:, 2:3]
            q = as_bytes(rows > self.thresholds[:, 1:2]).to(rows.dtype).mul_(pos)
            q += as_bytes(rows <= self.thresholds[:, 0:1]).to(rows.dtype).mul_(neg)
            q = q.reshape(w.shape).to(w.dtype)
            if mask is not None:
                q.mul_(as_bytes(mask))
        return StraightThrough.apply(w, q)
