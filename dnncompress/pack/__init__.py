"""Packing: a .dnc file whose size on disk is the compressed size, and the way back to a model."""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from ..errors import UserError
from .container import FORMAT, VERSION, read_packed, restore, write_packed

__all__ = ["FORMAT", "VERSION", "checkpoint_from_packed", "load_packed", "read_packed", "save_packed", "write_packed"]


def checkpoint_from_packed(path: str | os.PathLike) -> dict:
    """A checkpoint dict (dequantized weights, masks, quantizer states) rebuilt from a .dnc."""
    from ..checkpoint import FORMAT as CK_FORMAT
    from ..checkpoint import VERSION as CK_VERSION

    spec, blobs = read_packed(path)
    state, masks, quant = restore(spec, blobs, path)
    _check_against_model(spec, state, path)
    return {"format": CK_FORMAT, "version": CK_VERSION, "arch": spec.get("arch"), "arch_kwargs": spec.get("arch_kwargs") or {},
            "dataset": spec.get("dataset") or {}, "state_dict": state, "masks": masks, "quant": quant,
            "metrics": spec.get("metrics") or {}, "history": [{"stage": "unpack", "config": {"source": str(path)}, "seconds": 0.0, "result": {}}]}


def _check_against_model(spec: dict, state: dict, path) -> None:
    """Build the architecture on the meta device (no memory) and compare every shape."""
    arch = spec.get("arch")
    if not arch:
        return
    from ..models import build_model

    with torch.device("meta"):
        model = build_model(arch, spec.get("arch_kwargs") or {})
    expected = model.state_dict()
    total = sum(t.numel() for t in expected.values())
    if total > (1 << 31):
        raise UserError(f"{path}: its model spec claims {total:,} parameters; refusing to build it")
    for key, t in expected.items():
        if key not in state:
            raise UserError(f"{path} is not a valid .dnc file: '{key}' of {arch} is missing")
        if tuple(state[key].shape) != tuple(t.shape):
            raise UserError(f"{path} is not a valid .dnc file: '{key}' has shape {tuple(state[key].shape)}, {arch} needs {tuple(t.shape)}")


def load_packed(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """An inference-ready nn.Module from a .dnc (pass `model` for architectures packed without a spec)."""
    ckpt = checkpoint_from_packed(path)
    if model is not None:
        model.load_state_dict(ckpt["state_dict"])
        return model.eval()
    if not ckpt["arch"]:
        raise UserError(f"{path} does not record its architecture; pass model= to load_packed")
    from ..models import build_model

    with torch.device("meta"):  # no memory for weights that are about to be replaced
        model = build_model(ckpt["arch"], ckpt["arch_kwargs"])
    model.load_state_dict(ckpt["state_dict"], assign=True)  # adopt the decoded tensors: no second copy
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # a non-persistent buffer: build for real
        model = build_model(ckpt["arch"], ckpt["arch_kwargs"])
        model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def save_packed(model_or_ckpt, path: str | os.PathLike, entropy: str = "none", fp16: bool = False,
                arch: str | None = None, arch_kwargs: dict | None = None) -> dict:
    """Pack a checkpoint dict, or any nn.Module carrying dnncompress masks/quantizers, into `path` (atomic)."""
    from ..fileio import atomic_path

    if isinstance(model_or_ckpt, nn.Module):
        from ..surgery import update_checkpoint

        ckpt = update_checkpoint({"arch": arch, "arch_kwargs": arch_kwargs or {}}, model_or_ckpt)
    else:
        ckpt = model_or_ckpt
    with atomic_path(path) as tmp:
        info = write_packed(ckpt, tmp, entropy, fp16)
    return info
