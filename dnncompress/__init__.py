"""dnncompress: prune, quantize, fine-tune and pack PyTorch models.

The library never prints and never imports click or rich; the CLI (`dnncompress.cli`) does.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .checkpoint import load_checkpoint, save_checkpoint
from .errors import UserError
from .pack import load_packed, save_packed
from .prune.magnitude import prune as prune_model  # named so: dnncompress.prune is the subpackage
from .quantize_model import quantization_summary, quantize


def available() -> dict[str, list[str]]:
    """Names of everything pluggable, for `dnncompress list`."""
    from .data import DATASETS
    from .models import ARCHS
    from .stages import STAGES

    out = {"architectures": ARCHS.names() + ["torchvision:NAME", "package.module:factory"],
           "datasets": DATASETS.names(), "stages": STAGES.names()}
    try:
        from .quant import SCHEMES

        out["schemes"] = SCHEMES.names()
    except ImportError:
        pass
    return out


__all__ = ["UserError", "available", "load_checkpoint", "load_packed", "prune_model", "quantization_summary", "quantize", "save_checkpoint",
           "save_packed", "__version__"]
