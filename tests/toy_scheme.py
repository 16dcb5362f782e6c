"""A scheme defined outside dnncompress/: 1-bit sign·α (one α per layer), built only on the public
Quantizer contract. Importing this module registers it as 'test-sign'."""
import torch

from dnncompress.quant import SCHEMES, Quantizer, Storage
from dnncompress.quant.base import StraightThrough


class SignAlpha(Quantizer):
    scheme = "test-sign"
    default_bits = 1
    bit_range = (1, 1)
    supports_per_channel = False

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.register_buffer("alpha", torch.zeros(()))

    @torch.no_grad()
    def fit(self, w, mask=None):
        kept = w.detach().float()[mask.bool()] if mask is not None else w.detach().float()
        self.alpha = kept.abs().mean() if kept.numel() else torch.zeros(())
        self.fitted = True
        return self

    def _quantized(self, w):
        return torch.where(w.detach() > 0, self.alpha, -self.alpha)

    def forward(self, w, mask=None):
        if not self.fitted or (self.training and self.refit != "none"):
            self.fit(w, mask)
        q = self._quantized(w).to(w.dtype)
        return StraightThrough.apply(w, q * mask if mask is not None else q)

    def export_state(self):
        return {**self.meta(), "alpha": self.alpha.detach().clone()}

    def load_state(self, state):
        self.alpha = state["alpha"].float().clone()
        self.fitted = True
        return self

    @classmethod
    def check_state(cls, state, shape):
        a = state.get("alpha")
        if not isinstance(a, torch.Tensor) or a.shape != () or not bool(torch.isfinite(a)):
            raise ValueError("alpha must be a finite scalar")

    def storage(self, w, mask=None):
        codes = (w.detach() > 0).reshape(-1)
        if mask is not None:
            codes = codes[mask.reshape(-1).bool()]
        return Storage(self.meta(), {"alpha": self.alpha.reshape(1).float()}, codes.to(torch.uint8), code_bits=1)

    def _load_tables(self, tables, shape):
        a = tables.get("alpha")
        if not isinstance(a, torch.Tensor) or a.shape != (1,):
            raise ValueError("alpha table must hold one number")
        self.alpha = a.float()[0].clone()
        self.fitted = True

    def decode_storage(self, codes, shape, mask):
        n = int(mask.sum()) if mask is not None else int(torch.Size(shape).numel())
        if codes.numel() != n or (codes.numel() and int(codes.max()) > 1):
            raise ValueError("codes do not fit the layer")
        values = torch.where(codes.bool(), self.alpha, -self.alpha)
        if mask is None:
            return values.reshape(shape)
        out = torch.zeros(shape)
        out[mask] = values
        return out


if "test-sign" not in SCHEMES:
    SCHEMES.register("test-sign")(SignAlpha)
