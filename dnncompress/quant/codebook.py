"""Shared-value codebooks, 2–8 bits, with or without an exact zero (seed 001).

Per layer, one table of 2^bits values. `per_channel` (or `group_size`): one table of values shared by
every row, times a scale per row (or per run of g weights): rows of very different sizes (a CNN's
filters before their BatchNorm) each get the shared shape at their own size for 4 bytes a row. It is
fitted by alternating least squares from k-means on the RMS-normalized rows: codes, then each row's
scale, then each shared value (the scale-weighted mean of its weights).

`mode: static` (SQC): the codebook is fitted once; weights are re-assigned to the nearest value
every step, the values never move. `mode: dynamic` (DQC): the values are trainable parameters;
each receives the summed (or mean) gradient of the weights assigned to it, and with
`refit_every: N` they are also re-fitted by warm-started Lloyd every N steps.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserError
from .base import SCHEMES, ScalarQuantizer, StraightThrough, check_table, midpoints
from .fastcode import as_bytes, count_below, gather_levels, level_sums, table_forward, trained_table_forward
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
        if self.per_channel and mode == "dynamic":
            raise UserError("a dynamic codebook is trained per layer; per-channel scales are for static codebooks")
        if self.per_channel:  # levels = scale · shared
            self.register_buffer("shared", torch.zeros(1, self.num_levels))
            self.register_buffer("scale", torch.ones(1, 1))
        self.refit = "none"  # static: values fixed; dynamic: values move by gradient (and periodic re-fit)
        if mode == "dynamic":
            self.levels = nn.Parameter(self.levels.clone())
            if grad == "mean" or zero:  # a Python hook costs a call every backward: only where it changes something
                self.levels.register_hook(self._shape_grad)
        self._last_rows = None
        self._last_codes = None

    def _fit(self, rows, valid):
        if not self.per_channel:
            values = rows[valid]
            levels = _init_levels(values, self.num_levels, self.options["init"], self.options["zero"]).unsqueeze(0)
            return levels, midpoints(levels)
        shared, scale = _fit_scaled(rows, valid, self.num_levels, self.options["init"], self.options["zero"])
        self.shared, self.scale = shared, scale
        return self._scaled_table()

    def _scaled_table(self):
        levels = self.scale * self.shared  # scale ≥ 0, so every row stays ascending
        return levels, midpoints(levels)

    def _tables(self):
        if not self.per_channel:
            return super()._tables()
        return {"levels": self.shared.detach().float().cpu().clone(), "scale": self.scale.detach().float().cpu().clone()}

    def _from_tables(self, tables, rows):
        if not self.per_channel:
            return super()._from_tables(tables, rows)
        shared = check_table(tables, "levels", (1, self.num_levels))
        scale = check_table(tables, "scale", (rows, 1))
        if bool((scale < 0).any()) or bool((shared[:, 1:] < shared[:, :-1]).any()):
            raise ValueError("a scaled codebook needs ascending levels and scales ≥ 0")
        self.shared, self.scale = shared, scale
        return self._scaled_table()

    @torch.no_grad()
    def scale_rows(self, s: torch.Tensor) -> None:
        if not self.per_channel:
            return super().scale_rows(s)
        self.scale = self.scale * s.reshape(-1, 1).to(self.scale)  # the shared table stays; each row's scale moves
        self._store(*self._scaled_table())

    def _zero_index(self) -> int:
        return int(self.levels.detach().abs().argmin())

    def encode_bytes(self, w: torch.Tensor) -> torch.Tensor:
        """Nearest value by index into `levels` as stored. Trained values may cross, but the parameter is
        never reordered (that would scramble the optimizer's per-value state): we search a sorted view.
        Scaled (per-channel) tables are ascending in every row and use the stored thresholds."""
        if self.per_channel:
            return super().encode_bytes(w)
        ordered, order = torch.sort(self.levels.detach(), dim=1)
        rows = w.detach().reshape(1, -1).float()
        codes = count_below(rows, midpoints(ordered))
        if not bool((order[0] == torch.arange(order.shape[1], device=order.device)).all()):  # trained values crossed
            codes = order.gather(1, codes.long()).to(torch.uint8)
        return codes.reshape(w.shape)

    def _shape_grad(self, grad: torch.Tensor) -> torch.Tensor:
        """Dynamic codebook gradient: keep the zero fixed; 'mean' divides by the assignment counts of the
        kept weights (a pruned weight gets no gradient, so counting it would shrink its value's step). Registered
        only where one of the two applies."""
        grad = grad.clone()
        if self.options["grad"] == "mean" and self._last_codes is not None:
            codes = self._last_codes
            mask = self._last_rows[1] if self._last_rows is not None else None
            if mask is not None:
                codes = codes[mask.to(torch.bool).expand_as(codes)]
            counts = torch.bincount(codes.flatten(), minlength=self.num_levels).to(grad)
            grad = grad / counts.clamp_min(1).unsqueeze(0)
        if self.options["zero"]:
            grad[:, self._zero_index()] = 0
        return grad

    def fake_quantize(self, w, mask=None):
        if not self.fitted:
            self.fit(w, mask)
        if not isinstance(self.levels, nn.Parameter):  # static: nothing needs the codes, one compiled pass gives q
            fast = self._static_forward(w, mask)
            if fast is not None:
                return StraightThrough.apply(w, fast.to(w.dtype).reshape(w.shape))
        trained = isinstance(self.levels, nn.Parameter) and torch.is_grad_enabled() and w.device.type == "cpu"
        fast = self._trained_forward(w, mask) if trained else None
        codes = fast[1].reshape(w.shape) if fast is not None else self.encode_bytes(w)
        if self.training:  # plain attributes, set past nn.Module.__setattr__ (microseconds a call, every step)
            self.__dict__["_last_codes"] = codes.detach()
            self.__dict__["_last_rows"] = (w.detach(), mask)
        if trained:
            # one node: compiled codes and values in one pass, per-value gradient sums (measured on CPU only; a GPU keeps torch's gather)
            return _TrainedLookup.apply(w, self.levels, codes, mask, fast[0].reshape(w.shape) if fast is not None else None)
        q = self.decode(codes, w.shape).to(w.dtype)
        if mask is not None:
            q = q * as_bytes(mask)
        if not isinstance(self.levels, nn.Parameter):  # static: no gradient to the values, one STE node
            return StraightThrough.apply(w, q)
        return q + (w - w.detach())

    def _ordered_table(self):
        """(levels, thresholds) as encode_bytes codes against them, for a one-pass forward; None where trained
        values crossed (encode_bytes then searches a sorted view and maps the codes back)."""
        if self.per_channel:
            return self.levels, self.thresholds
        levels = self.levels.detach()
        static = not isinstance(self.levels, nn.Parameter)  # a trained table moves every step: nothing to keep
        memo = self.__dict__.get("_table_memo") if static else None  # (the values it was made for, their thresholds or None)
        if memo is not None and _same_tensor_kind(memo[0], levels) and torch.equal(memo[0], levels):  # the same every step: one comparison
            return None if memo[1] is None else (levels, memo[1])
        thresholds = None if bool((levels[:, 1:] < levels[:, :-1]).any()) else midpoints(levels)
        if static:  # a copy of the values, not a version counter: .data assignments leave that unchanged
            self.__dict__["_table_memo"] = (levels.clone(), thresholds)
        return None if thresholds is None else (levels, thresholds)

    def _trained_forward(self, w, mask):
        """(q, codes) of a trained table in one compiled pass; None where the table is out of order or the pass cannot run.
        Up to 16 values, the pass makes the thresholds itself."""
        rows = w.detach().reshape(1, -1).float()
        fast = trained_table_forward(rows, self.levels.detach(), mask)
        if fast is not None:
            return fast
        table = self._ordered_table()
        if table is None:
            return None
        return table_forward(rows, table[0].float(), table[1].float(), mask, with_codes=True)

    def _static_forward(self, w, mask):
        """decode(encode(w)) × mask in one compiled pass; None where the two-step path must run (no numba, a
        small layer, values that crossed)."""
        table = self._ordered_table()
        if table is None:
            return None
        return table_forward(w.detach().reshape(self.levels.shape[0], -1).float(), table[0].float(), table[1], mask)

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
        if self.per_channel:
            state.update(shared=self.shared.detach().cpu().clone(), scale=self.scale.detach().cpu().clone())
        return state

    def load_state(self, state: dict) -> Codebook:
        if self.per_channel:
            self.shared, self.scale = state["shared"].float().clone(), state["scale"].float().clone()
        return super().load_state(state)

    @classmethod
    def check_state(cls, state: dict, shape: tuple) -> None:
        super().check_state(state, shape)
        if not state.get("per_channel"):
            return
        shared, scale, levels = state.get("shared"), state.get("scale"), state["levels"]
        if not isinstance(shared, torch.Tensor) or not isinstance(scale, torch.Tensor) or not shared.dtype.is_floating_point \
                or not scale.dtype.is_floating_point or tuple(shared.shape) != (1, levels.shape[1]) \
                or tuple(scale.shape) != (levels.shape[0], 1):
            raise ValueError("a per-channel codebook needs its shared values (1×L) and one scale per row")
        if not torch.equal((scale.float() * shared.float()), levels.float()):
            raise ValueError("a per-channel codebook's levels must be its scales times its shared values")

    def describe(self) -> str:
        o = self.options
        return f"codebook {o['mode']}{' +0' if o['zero'] else ''}"


def _same_tensor_kind(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same device, dtype and shape: what torch.equal needs to compare values alone (a module moved with .to()
    leaves a memo made before it on the old device)."""
    return a.device == b.device and a.dtype == b.dtype and a.shape == b.shape


class _TrainedLookup(torch.autograd.Function):
    """A dynamic codebook's forward, q = levels[codes] × mask, as one autograd node: the weight's gradient
    passes straight through (STE) and each value gets the sum of the gradients of the kept weights coded to
    it, which is what gather + (w − w.detach()) gave, without their three full-size temporaries."""

    @staticmethod
    def forward(ctx, w, levels, codes, mask, q=None):
        if q is None:  # not computed along with the codes
            q = gather_levels(levels.detach(), codes.reshape(levels.shape[0], -1)).reshape(w.shape)
            if mask is not None:
                q = q * as_bytes(mask)
        ctx.save_for_backward(codes, mask)
        ctx.table = tuple(levels.shape)
        return q.to(w.dtype)

    @staticmethod
    def backward(ctx, grad):
        codes, mask = ctx.saved_tensors
        g = grad if mask is None else grad * as_bytes(mask)
        sums = level_sums(codes, g, ctx.table[1]).reshape(ctx.table)
        return grad, sums, None, None, None


@torch.no_grad()
def _fit_scaled(rows: torch.Tensor, valid: torch.Tensor, k: int, init: str, zero: bool, rounds: int = 4):
    """Shared values (1×k, ascending) and row scales (C×1, ≥ 0) for levels = scale·shared, by alternating
    least squares (minimizing Σ (w − s_r·v_c)² over kept weights) from k-means on RMS-normalized rows."""
    w = rows.double()
    keep = valid.to(w.dtype)
    count = keep.sum(1, keepdim=True)
    rms = ((w * w * keep).sum(1, keepdim=True) / count.clamp_min(1)).sqrt()
    s = torch.where(rms > 0, rms, torch.ones_like(rms))
    z = w / s
    shared = _init_levels(z[valid].float(), k, init, zero).double().sort().values
    for step in range(rounds):
        codes = torch.searchsorted(midpoints(shared.unsqueeze(0)).squeeze(0).contiguous(), (w / s).contiguous())
        v = shared[codes] * keep
        s = ((w * v).sum(1, keepdim=True) / (v * v).sum(1, keepdim=True).clamp_min(1e-300)).clamp_min(0)
        s = torch.where((v * v).sum(1, keepdim=True) > 0, s, torch.zeros_like(s))
        weight = (s * s).expand_as(w) * keep  # v_c = Σ s·w / Σ s² over the weights coded c
        num = torch.zeros(k, dtype=w.dtype).index_add_(0, codes.flatten(), (s * w * keep).flatten())
        den = torch.zeros(k, dtype=w.dtype).index_add_(0, codes.flatten(), weight.flatten())
        shared = torch.where(den > 0, num / den.clamp_min(1e-300), shared)
        if zero:
            shared[shared.abs().argmin()] = 0.0
        shared = shared.sort().values
        if step < rounds - 1:
            s = torch.where(s > 0, s, torch.ones_like(s))  # dead rows: any scale encodes them, zero decodes them
    return shared.float().unsqueeze(0), s.float()
