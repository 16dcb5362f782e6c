"""dnncompress: prune, quantize, fine-tune and pack PyTorch models.

The library never prints and never imports click or rich; the CLI (`dnncompress.cli`) does.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import UserError

# The API is imported on first use (PEP 562), so that `dnncompress --help` does not wait for torch.
_LAZY = {
    "load_checkpoint": ("checkpoint", "load_checkpoint"), "save_checkpoint": ("checkpoint", "save_checkpoint"),
    "load_packed": ("pack", "load_packed"), "save_packed": ("pack", "save_packed"),
    "prune_model": ("prune.magnitude", "prune"),  # named so: dnncompress.prune is the subpackage
    "quantization_summary": ("quantize_model", "quantization_summary"), "quantize": ("quantize_model", "quantize"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dnncompress' has no attribute '{name}'")


def available() -> dict[str, list[str]]:
    """Names of everything pluggable, for `dnncompress list`."""
    from .config import shipped_configs
    from .data import DATASETS
    from .models import ARCHS
    from .stages import STAGES

    out = {"architectures": ARCHS.names() + ["torchvision:NAME", "package.module:factory"],
           "datasets": DATASETS.names(), "stages": STAGES.names(), "configs": shipped_configs()}
    try:
        from .quant import SCHEMES

        out["schemes"] = SCHEMES.names()
    except ImportError:
        pass
    return out


__all__ = ["UserError", "available", "load_checkpoint", "load_packed", "prune_model", "quantization_summary", "quantize", "save_checkpoint",
           "save_packed", "__version__"]
