"""Four-value weights {−2,−1,+1,+2}·α (seed 000): exact L2 fit, 2 bits, 16 codes per uint32."""
from __future__ import annotations

import torch

from .base import SCHEMES, ScalarQuantizer, StraightThrough, check_table
from .exact import fourval_alpha
from .fastcode import as_bytes, fourval_codes, fourval_packed, fused_forward


def _table(alpha: torch.Tensor):
    levels = torch.cat([-2 * alpha, -alpha, alpha, 2 * alpha], dim=1)
    thresholds = torch.cat([-1.5 * alpha, torch.zeros_like(alpha), 1.5 * alpha], dim=1)
    return levels, thresholds


@SCHEMES.register("fourval")
class FourValue(ScalarQuantizer):
    scheme = "fourval"

    def _tables(self):
        return {"alpha": self.levels[:, 2:3].detach().float().cpu().clone()}  # one α per row defines the table

    def _from_tables(self, tables, rows):
        return _table(check_table(tables, "alpha", (rows, 1)))

    def _fit(self, rows, valid):
        return _table(fourval_alpha(rows.abs(), valid))

    def _sign_and_big(self, rows, mags=None):
        """The one assignment rule both encode() and forward() use: w > 0 picks +, |w| > 1.5α picks 2α."""
        return rows > 0, (rows.abs() if mags is None else mags) > self.thresholds[:, 2:3]

    def encode_bytes(self, w):
        rows = w.detach().reshape(self.levels.shape[0], -1).float()
        fast = fourval_codes(rows, self.thresholds[:, 2:3])  # the same rule, compiled, for large layers
        if fast is not None:
            return fast.reshape(w.shape)
        pos, big = self._sign_and_big(rows)
        codes = pos.to(torch.uint8) * 2 + (big == pos).to(torch.uint8)  # −2α, −α, +α, +2α → 0, 1, 2, 3
        return codes.reshape(w.shape)

    def encode_packed(self, w):
        return fourval_packed(w.reshape(self.levels.shape[0], -1).float(), self.thresholds[:, 2:3])

    def fake_quantize(self, w, mask=None):
        """Closed-form fake-quantize, equal bit for bit to decode(encode(w)) (same stored thresholds,
        levels ±α·{1,2} by exact multiplications), with the QAT α update done first as one O(n)
        alternating step from the last α: α ← (Σ|w| + Σ_{|w|>1.5α}|w|)/(n + 3k) (DESIGN §9).
        Written as in-place arithmetic: torch.where with broadcast scalars was 6× slower here."""
        if not self.fitted or (self.training and self.refit == "exact"):
            return super().fake_quantize(w, mask)
        c = self.levels.shape[0]
        rows = w.reshape(c, -1)
        refit = self.training and self.refit == "fast"
        with torch.no_grad():  # large layers: one compiled pass does the step's α update and the forward
            fast = fused_forward("fourval_fake_quantize", rows.detach().float(), mask, (self.thresholds[:, 2], self.levels[:, 2].detach()), 4, refit)
        if fast is not None:
            return self._adopt(w, fast, refit)
        with torch.no_grad():
            a = rows.detach().abs()  # pruned entries arrive as exact zeros: they never count as big
        if self.training and self.refit == "fast":
            with torch.no_grad():
                big = a > self.thresholds[:, 2:3]
                n = mask.reshape(c, -1).sum(1, keepdim=True, dtype=torch.float32) if mask is not None else float(rows.shape[1])
                k = big.sum(1, keepdim=True, dtype=torch.float32)
                s_big = (a * as_bytes(big)).sum(1, keepdim=True)
                self._store(*_table((a.sum(1, keepdim=True) + s_big) / (n + 3 * k).clamp_min(1)))
        with torch.no_grad():
            pos, big = self._sign_and_big(rows, a)
            q = (as_bytes(pos).to(rows.dtype) * 2 - 1).mul_(as_bytes(big).to(rows.dtype).add_(1)).mul_(self.levels[:, 2:3]).reshape(w.shape)
            if mask is not None:
                q.mul_(as_bytes(mask))
        return StraightThrough.apply(w, q)
