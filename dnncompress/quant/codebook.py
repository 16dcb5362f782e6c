"""Shared-value codebooks, 2–8 bits, with or without an exact zero (seed 001).

`mode: static` (SQC): the codebook is fitted once; weights are re-assigned to the nearest value
every step, the values never move. `mode: dynamic` (DQC): the values are trainable parameters;
each receives the summed (or mean) gradient of the weights assigned to it, and with
`refit_every: N` they are also re-fitted by warm-started Lloyd every N steps.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserError
from .base import SCHEMES, ScalarQuantizer, midpoints
from .kmeans import kmeans_1d, lloyd_sorted


def _init_levels(values: torch.Tensor, k: int, init: str, zero: bool) -> torch.Tensor:
    if values.numel() == 0:
        return torch.zeros(k)
    if init == "kmeans":
        return kmeans_1d(values, k, pin_zero=zero)
    lo, hi = float(values.min()), float(values.max())
    if init == "linear":
        c = torch.linspace(lo, hi, k)
    else:  # pow2: ±m·2^-i, the largest magnitude m = max|w|
        m = max(abs(lo), abs(hi)) or 1.0
        n_pos = k // 2
        n_neg = k - n_pos - (1 if zero else 0)
        pos = m * 2.0 ** -torch.arange(n_pos, dtype=torch.float32)
        neg = -m * 2.0 ** -torch.arange(n_neg, dtype=torch.float32)
        c = torch.cat([neg, pos, torch.zeros(1)]) if zero else torch.cat([neg, pos])
    c = torch.sort(c).values
    if zero:
        c[c.abs().argmin()] = 0.0
    return c


@SCHEMES.register("codebook")
class Codebook(ScalarQuantizer):
    scheme = "codebook"
    default_bits = 4
    bit_range = (2, 8)
    supports_per_channel = False
    has_zero_option = True
    option_names = ("zero", "init", "mode", "grad", "refit_every")

    def __init__(self, *args, zero: bool = False, init: str = "kmeans", mode: str = "static", grad: str = "sum", refit_every: int = 0, **kw):
        if init not in ("kmeans", "linear", "pow2"):
            raise UserError(f"codebook init must be kmeans, linear or pow2, got '{init}'")
        if mode not in ("static", "dynamic"):
            raise UserError(f"codebook mode must be static or dynamic, got '{mode}'")
        if grad not in ("sum", "mean"):
            raise UserError(f"codebook grad must be sum or mean, got '{grad}'")
        if refit_every < 0:
            raise UserError("refit_every must be ≥ 0")
        super().__init__(*args, zero=bool(zero), init=init, mode=mode, grad=grad, refit_every=int(refit_every), **kw)
        self.refit = "none"  # static: values fixed; dynamic: values move by gradient (and periodic re-fit)
        if mode == "dynamic":
            self.levels = nn.Parameter(self.levels.clone())
            self.levels.register_hook(self._shape_grad)
        self._last_rows = None
        self._last_codes = None

    def _fit(self, rows, valid):
        values = rows[valid]
        levels = _init_levels(values, self.num_levels, self.options["init"], self.options["zero"]).unsqueeze(0)
        return levels, midpoints(levels)

    def _zero_index(self) -> int:
        return int(self.levels.detach().abs().argmin())

    def encode(self, w: torch.Tensor) -> torch.Tensor:
        """Nearest value by index into `levels` as stored. Trained values may cross, but the parameter is
        never reordered (that would scramble the optimizer's per-value state): we search a sorted view."""
        ordered, order = torch.sort(self.levels.detach(), dim=1)
        rows = w.detach().reshape(1, -1).float().contiguous()
        return order[0][torch.searchsorted(midpoints(ordered).contiguous(), rows)].reshape(w.shape)

    def _shape_grad(self, grad: torch.Tensor) -> torch.Tensor:
        """Dynamic codebook gradient: keep the zero fixed; 'mean' divides by the assignment counts."""
        grad = grad.clone()
        if self.options["grad"] == "mean" and self._last_codes is not None:
            counts = torch.bincount(self._last_codes.flatten(), minlength=self.num_levels).to(grad)
            grad = grad / counts.clamp_min(1).unsqueeze(0)
        if self.options["zero"]:
            grad[:, self._zero_index()] = 0
        return grad

    def fake_quantize(self, w, mask=None):
        if not self.fitted:
            self.fit(w, mask)
        codes = self.encode(w)
        if self.training:
            self._last_codes = codes.detach()
            self._last_rows = (w.detach(), mask)
        q = self.decode(codes, w.shape).to(w.dtype)
        if mask is not None:
            q = q * mask
        return q + (w - w.detach())

    def on_step(self, step: int, total: int) -> None:
        every = self.options["refit_every"]
        if self.options["mode"] != "dynamic" or not every or step == 0 or step % every or self._last_rows is None:
            return
        w, mask = self._last_rows
        rows, valid = self._rows(w.float(), mask)
        values = torch.sort(rows[valid]).values
        with torch.no_grad():
            order = torch.argsort(self.levels.data[0])
            fitted = lloyd_sorted(values, self.levels.data[0], iters=100, pin_zero=self.options["zero"])
            self.levels.data[0, order] = fitted  # keep each value in its slot (optimizer state stays aligned)
            self.thresholds = midpoints(fitted.unsqueeze(0))

    def run_state(self) -> dict:
        """The last training forward's weights and codes: the next step's re-fit and 'mean' gradient use them."""
        w, mask = self._last_rows if self._last_rows is not None else (None, None)
        return {"w": w, "mask": mask, "codes": self._last_codes}

    def load_run_state(self, state: dict) -> None:
        self._last_rows = (state["w"], state["mask"]) if state["w"] is not None else None
        self._last_codes = state["codes"]

    def export_state(self) -> dict:
        state = super().export_state()
        state["thresholds"] = midpoints(torch.sort(state["levels"], dim=1).values)
        return state

    def describe(self) -> str:
        o = self.options
        return f"codebook {o['mode']}{' +0' if o['zero'] else ''}"
