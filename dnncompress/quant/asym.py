"""Asymmetric ternary {−αn,0,+αp} and quaternary {−2αn,−αn,+αp,+2αp} (seed 003).

Positive and negative weights are fitted independently, each half exactly (sorted-prefix);
zero-valued weights count with the positive half.
"""
from __future__ import annotations

import torch

from .base import SCHEMES, ScalarQuantizer, check_table
from .exact import fourval_alpha, fourval_refine, ternary_alpha, ternary_refine
from .fastcode import fused_forward


def _halves(rows, valid):
    pos = valid & (rows >= 0)
    neg = valid & (rows < 0)
    return rows.abs(), pos, neg


class _Asym(ScalarQuantizer):
    quaternary = False

    def _alphas(self):
        """(αp, αn) per row, as 1-D tensors, from the stored levels."""
        return self.levels[:, 2].detach(), -self.levels[:, 1 if self.quaternary else 0].detach()

    def fake_quantize(self, w, mask=None):
        """Large enough layers: the step's update and the forward in one compiled pass (fastcode), equal
        to decode(encode(w)) by the table it stores; otherwise the generic path."""
        if self.fitted and not (self.training and self.refit == "exact"):
            refit = self.training and self.refit != "none"
            with torch.no_grad():
                ap, an = self._alphas()
                fast = fused_forward("asym_fake_quantize", w.detach().reshape(self.levels.shape[0], -1).float(), mask, (ap, an),
                                     4 if self.quaternary else 3, self.quaternary, refit, 2)
            if fast is not None:
                return self._adopt(w, fast, refit)
        return super().fake_quantize(w, mask)


@SCHEMES.register("asym-ternary")
class AsymTernary(_Asym):
    scheme = "asym-ternary"

    def _tables(self):
        return {"alpha": torch.cat([self.levels[:, 2:3], -self.levels[:, 0:1]], 1).detach().float().cpu()}  # (αp, αn) per row

    def _from_tables(self, tables, rows):
        a = check_table(tables, "alpha", (rows, 2))
        return self._table(a[:, 0:1], a[:, 1:2])

    @property
    def num_levels(self) -> int:
        return 3

    @staticmethod
    def _table(ap, an):
        return torch.cat([-an, torch.zeros_like(ap), ap], 1), torch.cat([-an / 2, ap / 2], 1)

    def _fit(self, rows, valid):
        a, pos, neg = _halves(rows, valid)
        return self._table(ternary_alpha(a, pos), ternary_alpha(a, neg))

    def _refine(self, rows, valid):
        a, pos, neg = _halves(rows, valid)
        ap = ternary_refine(a, pos, self.levels[:, 2:3].detach().float())
        an = ternary_refine(a, neg, -self.levels[:, 0:1].detach().float())
        return self._table(ap, an)


@SCHEMES.register("asym-quaternary")
class AsymQuaternary(_Asym):
    scheme = "asym-quaternary"
    quaternary = True

    def _tables(self):
        return {"alpha": torch.cat([self.levels[:, 2:3], -self.levels[:, 1:2]], 1).detach().float().cpu()}  # (αp, αn) per row

    def _from_tables(self, tables, rows):
        a = check_table(tables, "alpha", (rows, 2))
        return self._table(a[:, 0:1], a[:, 1:2])

    @staticmethod
    def _table(ap, an):
        levels = torch.cat([-2 * an, -an, ap, 2 * ap], 1)
        return levels, torch.cat([-1.5 * an, torch.zeros_like(ap), 1.5 * ap], 1)

    def _fit(self, rows, valid):
        a, pos, neg = _halves(rows, valid)
        return self._table(fourval_alpha(a, pos), fourval_alpha(a, neg))

    def encode_bytes(self, w):
        """Nearest level within the weight's half; an exact zero was fitted with the positive half, so it
        takes +αp (the threshold search alone would give it −αn)."""
        codes = super().encode_bytes(w)
        return torch.where(w.detach().reshape(codes.shape) == 0, torch.full_like(codes, 2), codes)

    def _refine(self, rows, valid):
        a, pos, neg = _halves(rows, valid)
        ap = fourval_refine(a, pos, self.levels[:, 2:3].detach().float())
        an = fourval_refine(a, neg, -self.levels[:, 1:2].detach().float())
        return self._table(ap, an)
