"""The quantizer contract shared by every scheme.

A fitted quantizer is a table of `levels` per row (shape C×L; C = output channels when
per-channel, else 1) and ascending decision `thresholds` (C×(L−1)). Then
  encode(w) = searchsorted(thresholds, w)        (codes 0..L−1)
  decode(c) = levels.gather(c)
  fake_quantize(w) = decode(encode(w)) in value, identity in gradient (STE),
so decode(encode(w)) equals fake_quantize(w) bit for bit. Schemes differ only in how
they fit levels and thresholds (`_fit`) and in the cheap per-step update used in QAT (`_refine`).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import UserError
from ..registry import Registry

SCHEMES: Registry[type[Quantizer]] = Registry("quantization scheme")


class StraightThrough(torch.autograd.Function):
    """Forward: the quantized value q, exactly. Backward: the gradient goes to w unchanged (STE)."""

    @staticmethod
    def forward(ctx, w, q):
        return q

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class Quantizer(nn.Module):
    scheme: str = ""
    default_bits: int = 2
    bit_range: tuple[int, int] = (2, 2)
    supports_per_channel: bool = True
    has_zero_option: bool = False
    option_names: tuple[str, ...] = ()

    def __init__(self, bits: int | None = None, per_channel: bool = False, refit: str = "fast", **options: Any):
        super().__init__()
        self.bits = int(bits if bits is not None else self.default_bits)
        lo, hi = self.bit_range
        if not lo <= self.bits <= hi:
            span = f"{lo}" if lo == hi else f"{lo}–{hi}"
            raise UserError(f"scheme '{self.scheme}' takes {span} bits, got {self.bits}")
        if per_channel and not self.supports_per_channel:
            raise UserError(f"scheme '{self.scheme}' is fitted per layer; drop --per-channel")
        if refit not in ("fast", "exact", "none"):
            raise UserError(f"refit must be fast, exact or none, got '{refit}'")
        unknown = set(options) - set(self.option_names)
        if unknown:
            name = sorted(unknown)[0]
            if name == "zero" and not self.has_zero_option:
                raise UserError(f"scheme '{self.scheme}' has no zero option (--zero/--no-zero is for codebook)")
            raise UserError(f"scheme '{self.scheme}' has no option '{name}'; options: {', '.join(self.option_names) or 'none'}")
        self.per_channel = bool(per_channel)
        self.refit = refit
        self.options = dict(options)
        self.register_buffer("levels", torch.zeros(1, self.num_levels))
        self.register_buffer("thresholds", torch.zeros(1, self.num_levels - 1))
        self.fitted = False

    # ------------------------------------------------------------------ scheme API
    @property
    def num_levels(self) -> int:
        return 2**self.bits

    def _fit(self, rows: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact (or best available) levels and thresholds for rows (C×n); `valid` marks unpruned weights."""
        raise NotImplementedError

    def _refine(self, rows: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-step QAT update, O(n); defaults to the full fit."""
        return self._fit(rows, valid)

    # ------------------------------------------------------------------ shared machinery
    def _rows(self, w: torch.Tensor, mask: torch.Tensor | None):
        c = w.shape[0] if self.per_channel else 1
        rows = w.reshape(c, -1)
        valid = mask.reshape(c, -1).to(torch.bool) if mask is not None else torch.ones_like(rows, dtype=torch.bool)
        return rows, valid

    @torch.no_grad()
    def fit(self, w: torch.Tensor, mask: torch.Tensor | None = None) -> Quantizer:
        rows, valid = self._rows(w.detach().float(), mask)
        levels, thresholds = self._fit(rows, valid)
        self._store(levels, thresholds)
        self.fitted = True
        return self

    def _store(self, levels: torch.Tensor, thresholds: torch.Tensor) -> None:
        if isinstance(self.levels, nn.Parameter):
            self.levels.data = levels.to(self.levels.dtype).contiguous()
        else:
            self.levels = levels.float().contiguous()
        self.thresholds = thresholds.float().contiguous()

    def encode(self, w: torch.Tensor) -> torch.Tensor:
        rows = w.detach().reshape(self.levels.shape[0], -1).float().contiguous()
        return torch.searchsorted(self.thresholds, rows).reshape(w.shape)

    def decode(self, codes: torch.Tensor, shape=None) -> torch.Tensor:
        c = self.levels.shape[0]
        out = self.levels.gather(1, codes.reshape(c, -1).long())
        return out.reshape(shape if shape is not None else codes.shape)

    def forward(self, w: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Fake-quantize with a straight-through gradient; re-fits the scales each training step."""
        if not self.fitted:
            self.fit(w, mask)
        elif self.training and self.refit != "none":
            with torch.no_grad():
                rows, valid = self._rows(w.detach().float(), mask)
                fitted = self._fit(rows, valid) if self.refit == "exact" else self._refine(rows, valid)
                self._store(*fitted)
        q = self.decode(self.encode(w), w.shape).to(w.dtype)
        if mask is not None:
            q = q * mask
        return StraightThrough.apply(w, q)

    # ------------------------------------------------------------------ persistence
    def export_state(self) -> dict:
        return {
            "scheme": self.scheme, "bits": self.bits, "per_channel": self.per_channel, "refit": self.refit,
            "options": dict(self.options),
            "levels": self.levels.detach().cpu().clone(), "thresholds": self.thresholds.detach().cpu().clone(),
        }

    def load_state(self, state: dict) -> Quantizer:
        # copies: training moves the levels in place and must never change the checkpoint they came from
        self._store(state["levels"].float().clone(), state["thresholds"].float().clone())
        self.fitted = True
        return self

    def describe(self) -> str:
        return self.scheme


def make_quantizer(scheme: str, **options) -> Quantizer:
    cls = SCHEMES.get(scheme)
    return cls(**{k: v for k, v in options.items() if v is not None})


def quantizer_from_state(state: dict) -> Quantizer:
    q = make_quantizer(state["scheme"], bits=state["bits"], per_channel=state.get("per_channel", False),
                       refit=state.get("refit", "fast"), **state.get("options", {}))
    return q.load_state(state)


def midpoints(levels: torch.Tensor) -> torch.Tensor:
    """Nearest-level decision boundaries for ascending levels (C×L → C×(L−1))."""
    return (levels[:, 1:] + levels[:, :-1]) / 2
