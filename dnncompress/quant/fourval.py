"""Four-value weights {−2,−1,+1,+2}·α (seed 000): exact L2 fit, 2 bits, 16 codes per uint32."""
from __future__ import annotations

import torch

from .base import SCHEMES, Quantizer
from .exact import fourval_alpha, fourval_refine


def _table(alpha: torch.Tensor):
    levels = torch.cat([-2 * alpha, -alpha, alpha, 2 * alpha], dim=1)
    thresholds = torch.cat([-1.5 * alpha, torch.zeros_like(alpha), 1.5 * alpha], dim=1)
    return levels, thresholds


@SCHEMES.register("fourval")
class FourValue(Quantizer):
    scheme = "fourval"

    def _fit(self, rows, valid):
        return _table(fourval_alpha(rows.abs(), valid))

    def _refine(self, rows, valid):
        alpha = self.levels[:, 2:3].detach().float()
        return _table(fourval_refine(rows.abs(), valid, alpha))
