"""Product quantization (seed 004): sub-vectors of d weights share up to 2^bits centroids, one code each.

Units: each row (output channel) of the weight, flattened, is cut into contiguous sub-vectors of
d weights (the last one padded). With the default d (0 = auto) a convolution's unit is the k×k
kernel of one (out, in) pair and a Linear's is 4 contiguous input weights.

Fitting sees kept entries only: a unit with pruned entries is compared and averaged over its kept
coordinates alone (masked k-means: distance Σ m·(x − c)², centroid = Σ m·x / Σ m per coordinate),
and a unit with no kept entry is not stored at all. scikit-learn's KMeans (k-means++, one init,
fixed seed) starts it; masked Lloyd iterations finish it. Decoding multiplies by the mask, so
pruned weights stay exactly zero.

QAT: the centroids are parameters; each receives the gradient of the sub-vectors assigned to it,
averaged over the kept entries (`grad: mean`, or summed), and the assignment is recomputed every
`reassign_every` training forwards (counted by the quantizer itself, so any training loop works; at
evaluation and packing it is always the nearest centroid). Between re-assignments the shadow weights
drift under the straight-through gradient while the forward pass does not see it, so keep the
interval short. Centroids are kept on
the grid of the table dtype (fp16 by default), so the packed file decodes bit for bit what QAT saw.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn

from ..errors import UserError
from . import fastcode
from .base import SCHEMES, Lookup, Quantizer, Storage
from .fastcode import as_bytes, unit_sums

BLOCK = 1 << 12  # units per block of the torch form: a 4096 × 256 score block stays in cache (100k units: 58 → 20 ms)


def _pad(t: torch.Tensor, extra: int, value) -> torch.Tensor:
    if not extra:
        return t
    return torch.cat([t, torch.full((t.shape[0], extra), value, dtype=t.dtype, device=t.device)], 1)


def assign(x: torch.Tensor, valid: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest centroid of each unit over its kept coordinates: argmin_k Σ m·(x − c_k)², in blocks
    (Σ m·x² is the same for every k and left out; with nothing masked, Σ m·c² is just |c|²)."""
    c = centroids.to(x.dtype)
    dense = bool(valid.all())
    fast = fastcode.nearest_centroids(x, c) if dense else None
    if fast is not None:
        return fast
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    c_norm, c_sq = (c * c).sum(1), (c * c).t()
    for i in range(0, x.shape[0], BLOCK):
        xb = x[i : i + BLOCK]
        if dense:
            out[i : i + BLOCK] = torch.addmm(c_norm, xb, c.t(), alpha=-2).argmin(1)
        else:
            m = valid[i : i + BLOCK].to(x.dtype)
            out[i : i + BLOCK] = torch.addmm(m @ c_sq, xb * m, c.t(), alpha=-2).argmin(1)
    return out


def masked_means(x: torch.Tensor, valid: torch.Tensor, codes: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Per centroid and coordinate, the mean of the kept entries assigned to it (unchanged where none)."""
    m = valid.to(x.dtype)
    num = torch.zeros_like(centroids, dtype=x.dtype).index_add_(0, codes, x * m)
    den = torch.zeros_like(centroids, dtype=x.dtype).index_add_(0, codes, m)
    return torch.where(den > 0, num / den.clamp_min(1), centroids.to(x.dtype))


def masked_kmeans(x: torch.Tensor, valid: torch.Tensor, k: int, seed: int = 0, iters: int = 30) -> torch.Tensor:
    """k centroids for units x (N×d) whose kept coordinates are `valid`: library k-means++ start, masked Lloyd finish."""
    xm = (x * valid).double()
    if x.shape[0] <= k:
        return xm.float()  # every unit its own centroid
    from sklearn.cluster import KMeans

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate points (e.g. all-zero units) warn; a library must not print
        start = KMeans(k, n_init=1, random_state=seed, max_iter=50).fit(xm.numpy(), sample_weight=valid.sum(1).double().numpy())
    c = torch.from_numpy(start.cluster_centers_)
    codes = None
    for _ in range(iters):
        new_codes = assign(xm, valid, c)
        if codes is not None and torch.equal(new_codes, codes):
            break
        codes = new_codes
        c = masked_means(xm, valid, codes, c)
    return c.float()


class _Pick(torch.autograd.Function):
    """Forward: the rounded centroid of every unit (exact table values). Backward: each centroid gets
    the sum of its units' gradients, divided by `counts` (kept entries per coordinate) for 'mean'.
    index_add_ here is ~3× faster on CPU than the accumulating index_put_ of plain indexing."""

    @staticmethod
    def forward(ctx, centroids, rounded, codes, counts):
        ctx.save_for_backward(codes, counts)
        ctx.k = centroids.shape[0]
        return rounded.index_select(0, codes)

    @staticmethod
    def backward(ctx, grad):
        codes, counts = ctx.saved_tensors
        g = torch.zeros(ctx.k, grad.shape[1], dtype=grad.dtype, device=grad.device).index_add_(0, codes, grad)
        if counts.numel():
            g = g / counts.clamp_min(1)
        return g, None, None, None


class _WholeUnits(torch.autograd.Function):
    """The common case as one node: every unit stored, none padded (the weight is its units, N×d, in order).
    Forward: q = rounded[codes] × mask, shaped like w. Backward: w gets the gradient unchanged (STE), each
    centroid the summed gradient of its units' kept entries (÷ counts for 'mean'). What _Pick, the mask
    product, the reshape and q + (w − w.detach()) gave, without their four full-size passes and nodes."""

    @staticmethod
    def forward(ctx, w, centroids, rounded, codes, counts, mask):
        q = fastcode.gather_units(rounded, codes, mask)
        if q is None:
            q = rounded.index_select(0, codes.long())
            if mask is not None:
                q = q * as_bytes(mask.reshape(q.shape))
        q = q.reshape(w.shape)
        ctx.save_for_backward(codes, counts, mask)
        ctx.k = centroids.shape[0]
        return q.to(w.dtype)

    @staticmethod
    def backward(ctx, grad):
        codes, counts, mask = ctx.saved_tensors
        g = grad if mask is None else grad * as_bytes(mask)
        sums = unit_sums(codes, g.reshape(codes.shape[0], -1).float(), ctx.k)
        if counts.numel():
            sums = sums / counts.clamp_min(1)
        return grad, sums.to(grad.dtype), None, None, None, None


@SCHEMES.register("pq")
class ProductQuantizer(Quantizer):
    scheme = "pq"
    default_bits = 8
    bit_range = (1, 8)
    supports_per_channel = False
    option_names = ("d", "table", "reassign_every", "grad", "seed")

    def __init__(self, *args, d: int = 0, table: str = "fp16", reassign_every: int = 10, grad: str = "mean", seed: int = 0, **kw):
        if not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= 4096:
            raise UserError(f"pq sub-vector length d must be 0 (auto) or 1..4096, got {d!r}")
        if table not in ("fp16", "fp32"):
            raise UserError(f"pq table must be fp16 or fp32, got '{table}'")
        if grad not in ("sum", "mean"):
            raise UserError(f"pq grad must be sum or mean, got '{grad}'")
        if not isinstance(reassign_every, int) or reassign_every < 1:
            raise UserError(f"pq reassign_every must be ≥ 1, got {reassign_every!r}")
        super().__init__(*args, d=d, table=table, reassign_every=reassign_every, grad=grad, seed=int(seed), **kw)
        self.refit = "none"
        self.centroids = nn.Parameter(torch.zeros(1, max(d, 1)))
        self._train_codes = None  # assignment used between re-assignments (training only)
        self._counts = None  # kept entries per centroid and coordinate under that assignment ('mean' gradient)
        self._steps = 0  # training forwards since the last re-assignment
        self._eval = None  # (weight, centroids, codes) of the last evaluation: reused while both are unchanged
        self._mask_cache = None
        self._bytes_memo = None  # (an assignment, its codes as bytes)

    # ------------------------------------------------------------------ units
    def _dim(self, shape) -> int:
        if self.options["d"]:
            return self.options["d"]
        kernel = math.prod(shape[2:]) if len(shape) > 2 else 1
        return kernel if kernel > 1 else 4

    def _units(self, w: torch.Tensor, mask: torch.Tensor | None):
        """(units N×d, valid N×d, stored N bool) of a weight; padding counts as not valid. The mask's
        part is cached while the mask tensor is unchanged (it changes only when pruning moves)."""
        d = self.options["d"]
        rows = w.shape[0] if w.dim() else 1
        flat = w.reshape(rows, -1)
        extra = -flat.shape[1] % d
        x = _pad(flat, extra, 0).reshape(-1, d)
        key = (tuple(w.shape), d, None if mask is None else mask._version)
        cached = self._mask_cache
        if cached is None or cached[0] != key or cached[1] is not mask:  # the cache holds the mask itself: no stale match
            valid = mask.reshape(rows, -1).to(torch.bool) if mask is not None else torch.ones_like(flat, dtype=torch.bool)
            valid = _pad(valid, extra, False).reshape(-1, d)
            stored = valid.any(1)
            self._mask_cache = (key, mask, valid, stored, bool(stored.all()))
            self._train_codes = None  # a new mask (pruning moved): the stored units changed, so must the assignment
        _, _, valid, stored, everything = self._mask_cache
        return x, valid, (None if everything else stored)

    @staticmethod
    def _select(t: torch.Tensor, stored):
        return t if stored is None else t[stored]

    def _rounded(self) -> torch.Tensor:
        c = self.centroids.detach()
        return c.half().float() if self.options["table"] == "fp16" else c.float()

    @property
    def code_bits(self) -> int:
        return max(1, math.ceil(math.log2(max(self.centroids.shape[0], 1))))

    # ------------------------------------------------------------------ fit and QAT
    @torch.no_grad()
    def fit(self, w, mask=None):
        self.options["d"] = self._dim(tuple(w.shape))
        x, valid, stored = self._units(w.detach().float(), mask)
        xs, vs = self._select(x, stored), self._select(valid, stored)
        k = min(2**self.bits, max(xs.shape[0], 1))
        c = masked_kmeans(xs, vs, k, self.options["seed"]) if xs.shape[0] else torch.zeros(1, self.options["d"])
        self._set(c)
        return self

    def _set(self, c: torch.Tensor) -> None:
        self.centroids.data = c.float().contiguous()
        if self.options["table"] == "fp16":
            self.centroids.data = self.centroids.data.half().float()
        self.fitted = True
        self._train_codes = self._eval = None

    def _codes(self, x, valid, stored, weight, c: torch.Tensor) -> torch.Tensor:
        """The assignment this forward uses, against the rounded centroids `c`."""
        xs, vs = self._select(x, stored), self._select(valid, stored)
        if self.training:  # counted here, not by a training-loop hook: any loop (the user's own too) re-assigns
            if self._train_codes is None or self._steps >= self.options["reassign_every"] or self._train_codes.numel() != xs.shape[0]:
                self._train_codes = assign(xs, vs, c)
                self._counts = self._kept_counts(self._train_codes, vs, c.shape[0]).to(c)
                self._steps = 0
            self._steps += 1
            return self._train_codes
        if self._eval is not None and torch.equal(self._eval[0], weight) and torch.equal(self._eval[1], c):
            return self._eval[2]
        codes = assign(xs, vs, c)
        self._eval = (weight.detach().clone(), c, codes)
        return codes

    def _kept_counts(self, codes, valid, k: int) -> torch.Tensor:
        """Kept entries per centroid and coordinate (k×d) under an assignment; whole numbers, so exact either way:
        with every entry kept (no mask, no padding), each unit's count per coordinate (one bincount, not a pass
        over N×d ones). Once per assignment, so `valid` is checked here rather than kept."""
        if bool(valid.all()):
            return torch.bincount(codes, minlength=k).unsqueeze(1).expand(k, valid.shape[1]).contiguous()
        return unit_sums(codes, valid.to(torch.float32), k)

    def _code_bytes(self, codes: torch.Tensor) -> torch.Tensor:
        """An assignment as bytes (at most 256 centroids: bits ≤ 8), made once per assignment: the compiled gather
        and gradient read 8× less than int64 codes."""
        memo = self._bytes_memo
        if memo is None or memo[0] is not codes:
            memo = self._bytes_memo = (codes, codes.to(torch.uint8))
        return memo[1]

    def forward(self, w, mask=None):
        if not self.fitted:
            self.fit(w, mask)
        x, valid, stored = self._units(w.detach().float(), mask)
        rounded = self._rounded()
        codes = self._codes(x, valid, stored, w.detach(), rounded)
        counts = self._counts if self.training and self.options["grad"] == "mean" else torch.zeros(0)
        if fastcode.USE_COMPILED and stored is None and x.shape[0] * x.shape[1] == w.numel() and (mask is None or mask.dtype == torch.bool):
            return _WholeUnits.apply(w, self.centroids, rounded, self._code_bytes(codes), counts, mask)
        picked = _Pick.apply(self.centroids, rounded, codes, counts)  # value on the table grid, gradient to the centroids
        if stored is None:
            units = picked
        else:
            units = torch.zeros(x.shape, dtype=picked.dtype, device=picked.device).index_copy(0, stored.nonzero().squeeze(1), picked)
        q = self._dense(units * valid, w.shape)
        return q.to(w.dtype) + (w - w.detach())

    @staticmethod
    def _dense(units: torch.Tensor, shape) -> torch.Tensor:
        rows = shape[0] if len(shape) else 1
        n = math.prod(shape) // max(rows, 1)
        return units.reshape(rows, -1)[:, :n].reshape(shape)

    def run_state(self) -> dict:
        """The assignment in use, its counts and the step within the interval: a resumed run continues with them."""
        return {"codes": self._train_codes, "counts": self._counts, "steps": self._steps}

    def load_run_state(self, state: dict) -> None:
        self._train_codes, self._counts, self._steps = state["codes"], state["counts"], int(state["steps"])

    # ------------------------------------------------------------------ checkpoint form
    def export_state(self) -> dict:
        return {**self.meta(), "centroids": self._rounded().cpu().clone()}

    def load_state(self, state: dict) -> ProductQuantizer:
        self._set(state["centroids"].float().clone())
        return self

    @classmethod
    def check_state(cls, state: dict, shape: tuple) -> None:
        c = state.get("centroids")
        cls._check_centroids(c, state["bits"], (state.get("options") or {}).get("d", 0), shape)

    @staticmethod
    def _check_centroids(c, bits: int, d, shape) -> None:
        if not isinstance(c, torch.Tensor) or c.dim() != 2 or not c.dtype.is_floating_point:
            raise ValueError("centroids must be a 2-D float table")
        if not bool(torch.isfinite(c).all()):
            raise ValueError("centroids hold non-finite values")
        k, dim = c.shape
        if not 1 <= k <= 2**bits or not isinstance(d, int) or (d and dim != d) or not 1 <= dim <= 4096:
            raise ValueError(f"{k}×{dim} centroids do not fit a {bits}-bit pq layer of shape {tuple(shape)}")

    # ------------------------------------------------------------------ packed form
    @torch.no_grad()
    def storage(self, w, mask=None):
        x, valid, stored = self._units(w.detach().float(), mask)
        codes = assign(self._select(x, stored), self._select(valid, stored), self._rounded())
        table = self._rounded().half() if self.options["table"] == "fp16" else self._rounded()
        return Storage(self.meta(), {"centroids": table.cpu()}, codes.to(torch.uint8).cpu(), self.code_bits)

    @torch.no_grad()
    def lookup(self, w, mask=None):
        x, valid, stored = self._units(w.detach().float(), mask)
        codes = torch.zeros(x.shape[0], dtype=torch.long)
        picked = assign(self._select(x, stored), self._select(valid, stored), self._rounded()).long()
        if stored is None:
            codes = picked
        else:
            codes[stored] = picked
        return Lookup(self._rounded().unsqueeze(0).clone(), codes.unsqueeze(0))

    def _load_tables(self, tables, shape):
        c = tables.get("centroids")
        self._check_centroids(c, self.bits, self.options["d"], shape)
        if not self.options["d"]:
            raise ValueError("pq layer does not record its sub-vector length")
        self._set(c.float())

    @torch.no_grad()
    def decode_storage(self, codes, shape, mask, out=None):  # builds its own tensor; the caller copies into out
        x, valid, stored = self._units(torch.zeros(shape), mask)
        c = self._rounded()
        if codes.numel() != (x.shape[0] if stored is None else int(stored.sum())):
            raise ValueError("code count does not match the layer")
        if codes.numel() and int(codes.max()) >= c.shape[0]:
            raise ValueError("code out of range")
        if stored is None:
            x = c[codes.long()]
        else:
            x[stored] = c[codes.long()]
        return self._dense(x * valid, tuple(shape))

    def describe(self) -> str:
        return f"pq d={self.options['d']} k={self.centroids.shape[0]}"

    def summary(self) -> dict:
        return {"levels": f"{self.centroids.shape[0]} centroids × {self.centroids.shape[1]}"}
