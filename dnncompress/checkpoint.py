"""The checkpoint every stage reads and writes: a plain dict that `torch.load(weights_only=True)` accepts.

Keys (DESIGN §3): format, version, arch, arch_kwargs, dataset, state_dict, masks, quant,
metrics, history. Foreign files are imported: a bare state_dict (needs an architecture)
or, only with `trust=True`, a pickled nn.Module.
"""
from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import UserError
from .fileio import atomic_path, require_file

FORMAT = "dnncompress-checkpoint"
VERSION = 1


def new_checkpoint(arch: str, arch_kwargs: dict, state_dict: dict, dataset: dict | None = None) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "dataset": dict(dataset or {}),
        "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
        "masks": {},
        "quant": {},
        "metrics": {},
        "history": [],
    }


def derive(ckpt: dict) -> dict:
    """A copy for the next stage to change; tensors are shared until replaced, the rest is copied."""
    out = {k: copy.deepcopy(v) for k, v in ckpt.items() if k not in ("state_dict", "masks", "quant")}
    out["state_dict"] = dict(ckpt["state_dict"])
    out["masks"] = dict(ckpt.get("masks", {}))
    out["quant"] = copy.deepcopy(ckpt.get("quant", {}))
    return out


def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def _class_path(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}:{cls.__qualname__}"


def load_checkpoint(path: str | Path, arch: str | None = None, arch_kwargs: dict | None = None, trust: bool = False) -> dict:
    """Load a dnncompress checkpoint, or import a bare state_dict / (with trust) a pickled model."""
    p = require_file(path)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not trust:
            raise UserError(
                f"{p} holds pickled Python objects (a full model?), which can run code when loaded; "
                "pass --trust only if you trust its source, or save model.state_dict() and pass --arch"
            ) from None
        return _import_full_model(p, arch, arch_kwargs)
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"{p} is not a readable PyTorch checkpoint ({str(e).splitlines()[0][:120]})") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("version") != VERSION:
            raise UserError(f"{p} is checkpoint version {obj.get('version')}, this dnncompress reads version {VERSION}; upgrade dnncompress")
        missing = [k for k in ("arch", "state_dict") if k not in obj]
        if missing:
            raise UserError(f"{p} is a damaged dnncompress checkpoint: missing {', '.join(missing)}")
        for key, default in (("arch_kwargs", {}), ("dataset", {}), ("masks", {}), ("quant", {}), ("metrics", {}), ("history", [])):
            obj.setdefault(key, default)
        return obj
    state = obj.get("state_dict") if isinstance(obj, dict) and _is_state_dict(obj.get("state_dict")) else obj
    if _is_state_dict(state):
        if not arch:
            raise UserError(f"{p} is a bare state_dict; pass --arch NAME so dnncompress knows which model it belongs to")
        from .models import build_model

        model = build_model(arch, arch_kwargs)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise UserError(f"{p} does not fit architecture '{arch}': {str(e).splitlines()[0][:160]}") from None
        ckpt = new_checkpoint(arch, arch_kwargs or {}, model.state_dict())
        ckpt["history"].append({"stage": "import", "config": {"source": str(p), "arch": arch}, "seconds": 0.0, "result": {}})
        return ckpt
    raise UserError(f"{p} is neither a dnncompress checkpoint nor a state_dict; nothing to load")


def _import_full_model(p: Path, arch: str | None, arch_kwargs: dict | None) -> dict:
    try:
        obj = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # arbitrary pickles fail in arbitrary ways
        raise UserError(f"cannot unpickle {p}: {str(e).splitlines()[0][:160]}") from None
    if not isinstance(obj, nn.Module):
        raise UserError(f"{p} unpickled to {type(obj).__name__}, not a torch.nn.Module")
    arch = arch or _class_path(obj)
    from .models import build_model

    try:
        build_model(arch, arch_kwargs)
    except UserError as e:
        raise UserError(f"{p}: the model's class cannot be rebuilt from '{arch}' ({e}); pass --arch module:factory") from None
    ckpt = new_checkpoint(arch, arch_kwargs or {}, obj.state_dict())
    ckpt["history"].append({"stage": "import", "config": {"source": str(p), "trusted_pickle": True}, "seconds": 0.0, "result": {}})
    return ckpt

