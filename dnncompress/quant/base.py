"""The contract every quantization scheme owns, and the scalar level-table machinery most share.

A scheme is a codec for one layer's weight:
  fit(w, mask) / forward(w, mask)          fake-quantize with a straight-through gradient (QAT);
  export_state() / load_state(state)       the checkpoint form (what training needs to go on);
  storage(w, mask) → Storage               the packed form: one integer code per stored unit and the
                                           minimal float tables that define the layer;
  quantizer_from_storage(meta, tables)     rebuild the quantizer from the packed form, then
      .decode_storage(codes, shape, mask)  the dense weight, equal bit for bit to forward() (`out=`: a
                                           float32 tensor of that shape it may write into);
      .decode_packed(data, bits, shape)    optional: the same from the codes still bit-packed (an unpruned
                                           layer), or None where the scheme has no such path;
  lookup(w) → Lookup | None                the weight as one table gather (what ONNX can express), or
                                           None where the scheme is not one (a rotated frame).
pack/ only knows "a stream of b-bit codes, maybe entropy-coded, positions maybe sparse" and
"small float tables"; report and the joint search count bytes from Storage. No module outside a
scheme's file names that scheme's tables.

Scalar schemes (`ScalarQuantizer`) hold a table of `levels` per row (C×L; C = output channels
when per-channel, else 1) and ascending decision `thresholds` (C×(L−1)):
  encode(w) = searchsorted(thresholds, w), decode(c) = levels.gather(c),
so decode(encode(w)) equals fake_quantize(w) bit for bit. `encode` gives int64 codes (safe to index
and compare with); inside, schemes compute `encode_bytes` (uint8: a scheme stores at most 8 bits, and
bytes are 8× less memory traffic than int64 on the pack and QAT paths). They differ in how they fit the table
(`_fit`), the cheap per-step QAT update (`_refine`) and which few numbers define it (`_tables`,
`_from_tables`: four-value stores one α per row, not 7 floats).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserError
from ..registry import Registry
from .fastcode import as_bytes, count_below, gather_levels, gather_packed, scatter_levels
from .rotation import rotate, unrotate


def _standard_name_hint(name: str) -> str | None:
    """int8, int4, uint2, … are uniform integer grids; our nearest is a fitted table of as many levels."""
    import re

    m = re.fullmatch(r"u?int(\d)|q?int(\d)|w(\d)a\d+", name.strip().lower())
    if not m:
        return None
    bits = int(next(g for g in m.groups() if g))
    if not 2 <= bits <= 8:
        return None
    return (f"scheme '{name}' is a uniform {bits}-bit grid; use --scheme codebook --bits {bits} "
            f"({2**bits} levels fitted to the weights by 1-D k-means instead of evenly spaced)")


SCHEMES: Registry[type[Quantizer]] = Registry("quantization scheme", hint=_standard_name_hint)
CHUNK = 1 << 20


class StraightThrough(torch.autograd.Function):
    """Forward: the quantized value q, exactly. Backward: the gradient goes to w unchanged (STE)."""

    @staticmethod
    def forward(ctx, w, q):
        return q

    @staticmethod
    def backward(ctx, grad):
        return grad, None


@dataclass
class Storage:
    """A layer's packed form: `codes` (1-D integers < 2**code_bits, one per unit the scheme stores,
    in the scheme's order), `tables` (float32 or float16 tensors: scales, codebooks, centroids) and
    `meta` (small plain values; with the tables enough to rebuild the quantizer)."""

    meta: dict
    tables: dict[str, torch.Tensor]
    codes: torch.Tensor | None  # None when `words` holds them
    code_bits: int
    words: Any = None  # storage_packed's form: the codes already in bitpack.pack's stream (uint32 numpy words)
    word_units: int = 0  # how many codes `words` holds

    @property
    def units(self) -> int:
        """How many codes the layer stores."""
        return int(self.codes.numel()) if self.codes is not None else self.word_units


@dataclass
class Lookup:
    """A weight as a gather: `table` (T×L×d floats) and `codes` (T×U integers < L, one per unit, every
    unit, pruned ones too). The dense weight is table[t, codes[t, u], :] laid out as (T, U·d), read as
    (rows, -1) cut to the row length, then shaped like the weight; the caller multiplies in the mask.
    Scalar schemes have d = 1 and one table row per level row; vector schemes T = 1."""

    table: torch.Tensor
    codes: torch.Tensor


def _plain(value) -> bool:
    return isinstance(value, (str, int, float, bool, type(None)))


def check_table(tables: dict, name: str, shape: tuple, where: str = "") -> torch.Tensor:
    """A table the scheme needs: present, float, finite and of exactly this shape (ValueError if not)."""
    t = tables.get(name)
    if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point or tuple(t.shape) != tuple(shape):
        raise ValueError(f"{where}table '{name}' must be a float tensor of shape {tuple(shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{where}table '{name}' holds non-finite values")
    return t.float()


class Quantizer(nn.Module):
    """The contract (see the module docstring). Subclasses set the class attributes and implement
    fit, forward, export_state/load_state, check_state, storage, _load_tables and decode_storage."""

    scheme: str = ""
    default_bits: int = 2
    bit_range: tuple[int, int] = (2, 2)
    supports_per_channel: bool = True
    supports_rotation: bool = False
    has_zero_option: bool = False
    option_names: tuple[str, ...] = ()

    def __init__(self, bits: int | None = None, per_channel: bool = False, refit: str = "fast", group_size: int = 0,
                 rotate: bool = False, **options: Any):
        super().__init__()
        self.bits = int(bits if bits is not None else self.default_bits)
        lo, hi = self.bit_range
        if not lo <= self.bits <= hi:
            span = f"{lo}" if lo == hi else f"{lo}–{hi}"
            raise UserError(f"scheme '{self.scheme}' takes {span} bits, got {self.bits}")
        if (per_channel or group_size) and not self.supports_per_channel:
            raise UserError(f"scheme '{self.scheme}' is fitted per layer; drop --per-channel / --group-size")
        if not isinstance(group_size, int) or isinstance(group_size, bool) or not 0 <= group_size <= 1 << 20:
            raise UserError(f"group_size must be 0 (off) or a positive number of weights, got {group_size!r}")
        if not isinstance(rotate, bool):
            raise UserError(f"rotate must be true or false, got {rotate!r}")
        if rotate and not self.supports_rotation:
            raise UserError(f"scheme '{self.scheme}' cannot be rotated; drop --rotate")
        if refit not in ("fast", "exact", "none"):
            raise UserError(f"refit must be fast, exact or none, got '{refit}'")
        unknown = set(options) - set(self.option_names)
        if unknown:
            name = sorted(unknown)[0]
            if name == "zero" and not self.has_zero_option:
                raise UserError(f"scheme '{self.scheme}' has no zero option (--zero/--no-zero is for codebook)")
            raise UserError(f"scheme '{self.scheme}' has no option '{name}'; options: {', '.join(self.option_names) or 'none'}")
        # plain values straight into the instance dict: nn.Module.__setattr__ checks every one against the parameter,
        # buffer and module dicts (a microsecond or two each), and a load builds a quantizer per layer
        self.__dict__.update(per_channel=bool(per_channel or group_size), group_size=int(group_size), rotate=rotate, refit=refit,
                             options=dict(options), fitted=False)

    # ------------------------------------------------------------------ what every scheme provides
    def fit(self, w: torch.Tensor, mask: torch.Tensor | None = None) -> Quantizer:
        raise NotImplementedError

    def meta(self) -> dict:
        """Plain values that, with the tables, rebuild this quantizer (the packed file stores them as is)."""
        meta = {"scheme": self.scheme, "bits": self.bits, "per_channel": self.per_channel, "refit": self.refit,
                "options": dict(self.options)}
        if self.group_size:
            meta["group_size"] = self.group_size
        if self.rotate:
            meta["rotate"] = True
        return meta

    def table_rows(self, shape) -> int:
        return table_rows(tuple(shape), self.per_channel, self.group_size)

    def export_state(self) -> dict:
        return self.meta()

    def load_state(self, state: dict) -> Quantizer:
        raise NotImplementedError

    @classmethod
    def check_state(cls, state: dict, shape: tuple) -> None:
        """Raise ValueError unless `state` (already known to name this scheme) fits a weight of `shape`."""

    def storage(self, w: torch.Tensor, mask: torch.Tensor | None = None) -> Storage:
        raise NotImplementedError

    def _load_tables(self, tables: dict[str, torch.Tensor], shape: tuple) -> None:
        """Adopt the packed tables (checked against the layer's shape; ValueError if they do not fit)."""
        raise NotImplementedError

    def decode_storage(self, codes: torch.Tensor, shape: tuple, mask: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        """The dense fp32 weight (zeros where masked) from the stored codes; ValueError on a bad count or code.
        A scheme may write it into `out` (contiguous float32 of `shape`) and return it, saving a copy."""
        raise NotImplementedError

    def storage_packed(self, w: torch.Tensor) -> Storage | None:
        """storage(w) of an unpruned layer with its codes already bit-packed (Storage.words, bitpack.pack's words,
        equal to them bit for bit), or None where the scheme has no such path (the caller packs storage()'s codes).
        The mirror of decode_packed: saves writing a byte per code and reading it back."""
        return None

    def decode_packed(self, data, bits: int, shape: tuple, out: torch.Tensor | None = None) -> torch.Tensor | None:
        """decode_storage for an unpruned layer whose codes are still bit-packed (`data`: bitpack's bytes, uint8),
        equal to it bit for bit; None where the scheme has no such path (the caller unpacks and calls
        decode_storage). Saves writing the codes out as bytes and reading them back. ValueError on a bad code."""
        return None

    def lookup(self, w: torch.Tensor, mask: torch.Tensor | None = None) -> Lookup | None:
        """The weight as a table gather (see Lookup); None where the scheme cannot be written as one."""
        return None

    def describe(self) -> str:
        return self.scheme

    def summary(self) -> dict:
        """Human-facing facts for `quantize`'s table (values, sizes); plain values only."""
        return {}


class ScalarQuantizer(Quantizer):
    """One code per kept weight, looked up in a per-row table of levels (see the module docstring).

    With `rotate` the table, the codes and encode/decode live in the rotated frame (`rotation.py`):
    fit, forward, storage and decode_storage take and give the weight as the layer uses it."""

    supports_rotation = True

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._buffers.update(levels=torch.zeros(1, self.num_levels), thresholds=torch.zeros(1, self.num_levels - 1))  # register_buffer's checks hold for these names

    @property
    def num_levels(self) -> int:
        return 2**self.bits

    def _fit(self, rows: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact (or best available) levels and thresholds for rows (C×n); `valid` marks unpruned weights."""
        raise NotImplementedError

    def _refine(self, rows: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-step QAT update, O(n); defaults to the full fit."""
        return self._fit(rows, valid)

    def _tables(self) -> dict[str, torch.Tensor]:
        """The fewest numbers that define the level table (default: the levels themselves)."""
        return {"levels": self.levels.detach().float().cpu().clone()}

    def _from_tables(self, tables: dict[str, torch.Tensor], rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(levels, thresholds) from `_tables()`'s output; ValueError if a table does not fit."""
        levels = check_table(tables, "levels", (rows, self.num_levels))
        return levels, midpoints(torch.sort(levels, dim=1).values)

    # ------------------------------------------------------------------ shared machinery
    def _rows(self, w: torch.Tensor, mask: torch.Tensor | None):
        c = self.table_rows(tuple(w.shape))
        rows = w.reshape(c, -1)
        valid = mask.reshape(c, -1).to(torch.bool) if mask is not None else torch.ones_like(rows, dtype=torch.bool)
        return rows, valid

    def to_frame(self, w: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The weight as the table sees it: rotated when `rotate` is on (a pruned layer cannot be: its zeros
        would not survive the rotation)."""
        if not self.rotate:
            return w
        if mask is not None and not bool(mask.all()):
            raise UserError("a rotated scheme needs an unpruned layer (its zeros would not survive the rotation); "
                            "drop rotate for pruned layers")
        return rotate(w)

    def from_frame(self, w: torch.Tensor) -> torch.Tensor:
        """to_frame()'s inverse."""
        return unrotate(w) if self.rotate else w

    @torch.no_grad()
    def fit(self, w: torch.Tensor, mask: torch.Tensor | None = None) -> ScalarQuantizer:
        rows, valid = self._rows(self.to_frame(w.detach().float(), mask), mask)
        levels, thresholds = self._fit(rows, valid)
        self._store(levels, thresholds)
        self.fitted = True
        return self

    def _store(self, levels: torch.Tensor, thresholds: torch.Tensor) -> None:
        # straight into the buffer dict: nn.Module.__setattr__ costs microseconds a call, and QAT stores every step
        buffers = self._buffers
        if "levels" in buffers:
            buffers["levels"] = levels.float().contiguous()
        else:
            self.levels.data = levels.to(self.levels.dtype).contiguous()
        buffers["thresholds"] = thresholds.float().contiguous()

    @torch.no_grad()
    def scale_rows(self, s: torch.Tensor) -> None:
        """Multiply table row r's levels by s[r] > 0 (the factors tuning after PTQ trains, tune.py): a code keeps its
        meaning, the thresholds scale along, and the table is rebuilt from the numbers the scheme stores so
        that decode(encode(·)) stays exact."""
        s = s.reshape(-1, 1).to(self.levels)
        self._store(self.levels.detach() * s, self.thresholds * s)
        self._store(*self._from_tables(self._tables(), self.levels.shape[0]))

    def encode(self, w: torch.Tensor) -> torch.Tensor:
        """int64 codes shaped like w; subclasses define encode_bytes."""
        return self.encode_bytes(w).long()

    def encode_bytes(self, w: torch.Tensor) -> torch.Tensor:
        """searchsorted's codes (thresholds strictly below each weight) as uint8, computed the fast way (fastcode.py)."""
        rows = w.detach().reshape(self.levels.shape[0], -1).float()
        return count_below(rows, self.thresholds).reshape(w.shape)

    def decode(self, codes: torch.Tensor, shape=None) -> torch.Tensor:
        c = self.levels.shape[0]
        out = gather_levels(self.levels, codes.reshape(c, -1))
        return out.reshape(shape if shape is not None else codes.shape)

    def forward(self, w: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Fake-quantize with a straight-through gradient (through the rotation, when on: R·Rᵀ = I)."""
        if not self.rotate:
            return self.fake_quantize(w, mask)
        if not self.fitted:
            self.fit(w, mask)
        return self.from_frame(self.fake_quantize(self.to_frame(w, mask), None))

    def _adopt(self, w: torch.Tensor, fast: tuple, refit: bool) -> torch.Tensor:
        """The straight-through output of a compiled QAT forward (q, levels, thresholds; fastcode.py),
        keeping the table it re-fitted."""
        q, levels, thresholds = fast
        if refit:
            self._store(levels, thresholds)
        return StraightThrough.apply(w, q.to(w.dtype).reshape(w.shape))

    def fake_quantize(self, w: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """forward() in the table's frame; re-fits the scales each training step."""
        if not self.fitted:
            self.fit(w, mask)
        elif self.training and self.refit != "none":
            with torch.no_grad():
                rows, valid = self._rows(w.detach().float(), mask)
                fitted = self._fit(rows, valid) if self.refit == "exact" else self._refine(rows, valid)
                self._store(*fitted)
        q = self.decode(self.encode_bytes(w), w.shape).to(w.dtype)
        if mask is not None:
            q = q * as_bytes(mask)
        return StraightThrough.apply(w, q)

    # ------------------------------------------------------------------ checkpoint form
    def export_state(self) -> dict:
        return {**self.meta(), "levels": self.levels.detach().cpu().clone(), "thresholds": self.thresholds.detach().cpu().clone()}

    def load_state(self, state: dict) -> ScalarQuantizer:
        # copies: training moves the levels in place and must never change the checkpoint they came from
        self._store(state["levels"].float().clone(), state["thresholds"].float().clone())
        self.fitted = True
        return self

    @classmethod
    def check_state(cls, state: dict, shape: tuple) -> None:
        levels, thresholds = state.get("levels"), state.get("thresholds")
        for what, t in (("levels", levels), ("thresholds", thresholds)):
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.dtype.is_floating_point:
                raise ValueError(f"{what} must be a 2-D float table")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{what} hold non-finite values")
        rows, width = levels.shape
        bits = state["bits"]
        allowed = {1, shape[0] if shape else 1}
        group = state.get("group_size", 0)
        if isinstance(group, int) and not isinstance(group, bool) and 0 < group <= 1 << 20:
            allowed.add(table_rows(tuple(shape), True, group))
        if rows not in allowed or not 1 <= width <= (1 << bits) or tuple(thresholds.shape) != (rows, width - 1):
            raise ValueError(f"a {rows}×{width} codebook does not fit a {bits}-bit layer of shape {shape}")

    # ------------------------------------------------------------------ packed form
    def storage(self, w: torch.Tensor, mask: torch.Tensor | None = None) -> Storage:
        codes = self.encode_bytes(self.to_frame(w.detach().float(), mask)).reshape(-1)
        if mask is not None:
            codes = codes[mask.reshape(-1).to(torch.bool)]
        return Storage(self.meta(), self._tables(), codes.to(torch.uint8), self.bits)

    def storage_packed(self, w):
        words = None if self.rotate else self.encode_packed(w.detach().float())
        return None if words is None else Storage(self.meta(), self._tables(), None, self.bits, words, int(w.numel()))

    def encode_packed(self, w: torch.Tensor):
        """encode_bytes(w) as bitpack.pack's words (uint32 numpy), or None where the scheme has no faster way."""
        return None

    def _load_tables(self, tables, shape):
        levels, thresholds = self._from_tables(tables, self.table_rows(tuple(shape)))
        self._store(levels, thresholds)
        self.fitted = True

    def decode_storage(self, codes, shape, mask, out=None):
        """levels[row, code] scattered to the kept positions, in chunks of rows (no n-sized int64 temporaries);
        an unpruned, unrotated layer is gathered straight into `out` when given."""
        levels = self.levels.detach().float()
        if self.rotate and mask is not None:
            raise ValueError("a rotated layer cannot have a pruning mask")
        rows = levels.shape[0]
        numel = int(torch.Size(shape).numel())
        row_len = numel // rows if rows else 0
        keep = mask.reshape(rows, row_len) if mask is not None else None
        if keep is None:  # every weight kept: one gather per row of the table, straight into place
            if codes.numel() != numel:
                raise ValueError("code count does not match the layer")
            into = out.view(rows, row_len) if out is not None and not self.rotate else None
            dense = gather_levels(levels, codes.reshape(rows, row_len).to(torch.uint8), into)
            return self.from_frame(dense.reshape(shape))
        fast = scatter_levels(levels, codes, keep)
        if fast is not None:
            return self.from_frame(fast.reshape(shape))
        if codes.numel() != int(keep.sum()):
            raise ValueError("code count does not match the layer")
        if codes.numel() and int(codes.max()) >= levels.shape[1]:
            raise ValueError("code out of range")
        out = torch.zeros(rows, row_len)
        step = max(1, CHUNK // max(row_len, 1))
        done = 0
        for r0 in range(0, rows, step):
            block = keep[r0 : r0 + step]
            counts = block.sum(1)
            n = int(counts.sum())
            c = codes[done : done + n].long()
            done += n
            r1 = r0 + counts.numel()
            if rows == 1:  # one table: no row ids needed
                values = levels[0].take(c)
            else:
                values = levels[torch.repeat_interleave(torch.arange(r0, r1), counts), c]
            out[r0:r1][block] = values
        return self.from_frame(out.reshape(shape))

    def decode_packed(self, data, bits, shape, out=None):
        numel = int(torch.Size(shape).numel())
        if self.rotate or bits != self.bits or not numel:
            return None
        dense = gather_packed(self.levels.detach().float(), data, bits, numel, out)
        return None if dense is None else dense.view(tuple(shape))

    @torch.no_grad()
    def lookup(self, w, mask=None):
        if self.rotate:  # the codes live in the rotated frame: a gather cannot undo the rotation
            return None
        codes = self.encode_bytes(w.detach().float())
        rows = self.levels.shape[0]
        return Lookup(self.levels.detach().float().reshape(rows, -1, 1).clone(), codes.reshape(rows, -1))

    def summary(self) -> dict:
        lv = self.levels.detach()
        return {"levels": [round(v, 6) for v in lv[0].tolist()] if lv.shape[0] == 1 else f"{lv.shape[0]} rows × {lv.shape[1]}"}


def table_rows(shape: tuple, per_channel: bool, group_size: int = 0) -> int:
    """Rows of a scalar scheme's table for a weight of `shape`: 1 per layer, one per output channel, or
    with `group_size` g one per run of g weights of a row (a row that g does not divide is one group)."""
    if not per_channel:
        return 1
    rows = shape[0] if len(shape) else 1
    n = math.prod(shape) // max(rows, 1)
    return rows * (n // group_size) if group_size and n >= group_size and n % group_size == 0 else rows


def make_quantizer(scheme: str, **options) -> Quantizer:
    cls = SCHEMES.get(scheme)
    return cls(**{k: v for k, v in options.items() if v is not None})


def _from_meta(meta: dict) -> Quantizer:
    return make_quantizer(meta["scheme"], bits=meta["bits"], per_channel=meta.get("per_channel", False), group_size=meta.get("group_size", 0),
                          refit=meta.get("refit", "fast"), rotate=meta.get("rotate", False), **meta.get("options", {}))


def quantizer_from_state(state: dict) -> Quantizer:
    return _from_meta(state).load_state(state)


def quantizer_from_storage(meta: dict, tables: dict[str, torch.Tensor], shape: tuple) -> Quantizer:
    """The quantizer a packed layer describes (ValueError/UserError if meta or tables do not fit `shape`)."""
    if not isinstance(meta, dict) or meta.get("scheme") not in SCHEMES:
        raise ValueError("unknown quantization scheme")
    if not isinstance(meta.get("bits"), int) or not isinstance(meta.get("options", {}), dict) \
            or not all(_plain(v) for v in meta.get("options", {}).values()):
        raise ValueError("bad quantizer meta")
    q = _from_meta(meta)
    q._load_tables(tables, tuple(shape))
    return q


def midpoints(levels: torch.Tensor) -> torch.Tensor:
    """Nearest-level decision boundaries for ascending levels (C×L → C×(L−1))."""
    return (levels[:, 1:] + levels[:, :-1]) / 2
