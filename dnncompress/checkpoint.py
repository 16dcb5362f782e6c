"""The checkpoint every stage reads and writes: a plain dict that `torch.load(weights_only=True)` accepts.

Keys (DESIGN §3): format, version, arch, arch_kwargs, dataset, state_dict, masks, quant,
metrics, history. Foreign files are imported: a bare state_dict (needs an architecture)
or, only with `trust=True`, a pickled nn.Module.
"""
from __future__ import annotations

import copy
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import UserError
from .fileio import atomic_torch_save, require_file
from .filekind import LEGACY_MAGIC, wrong_kind
from .models.zoo import check_arch_from_file
from .validate import check_checkpoint, check_state, expected_state

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


def _canonical(obj):
    """Fresh containers with interned strings: pickle's bytes depend on which objects are shared, so the
    same content must always be shared the same way (a resumed run loads its strings from disk)."""
    if isinstance(obj, dict):
        return {_canonical(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_canonical(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_canonical(v) for v in obj)
    if isinstance(obj, str):
        return sys.intern(obj)
    return obj


def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    """Atomic, fsynced, and byte-identical for the same content (fileio.atomic_torch_save)."""
    atomic_torch_save(_canonical(ckpt), path)
    return Path(path)


MAX_INFLATE = 4  # a torch zip stores tensors uncompressed: declared sizes far above the file's are a bomb


def _check_archive(p: Path) -> None:
    """Refuse an empty file, and a zip whose declared contents are much larger than the file (zip bomb),
    before torch inflates anything."""
    size = p.stat().st_size
    if size == 0:
        raise UserError(f"{p} is empty (0 bytes); re-create it or check the path")
    if not zipfile.is_zipfile(p):
        with open(p, "rb") as f:
            if f.read(len(LEGACY_MAGIC)) == LEGACY_MAGIC:
                return  # torch's pre-1.6 format: torch.load (weights_only) reads it
        raise UserError(wrong_kind(p, "checkpoint")
                        or f"{p} is not a PyTorch checkpoint (neither a zip archive nor torch's legacy format; truncated or damaged?)")
    try:
        with zipfile.ZipFile(p) as z:
            entries = z.infolist()
            declared = sum(i.file_size for i in entries)
            if declared > MAX_INFLATE * size + (1 << 20):
                raise UserError(f"{p} declares {declared:,} bytes of content in a {size:,}-byte file (a zip bomb?); refusing to inflate it")
            for info in entries:  # torch does not check the CRCs: a flipped bit in a tensor would load as another weight
                with z.open(info) as f:
                    while f.read(1 << 22):
                        pass
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as e:
        raise UserError(f"{p} is not a readable PyTorch checkpoint (damaged: {str(e)[:80]})") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def _class_path(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}:{cls.__qualname__}"


def load_checkpoint(path: str | Path, arch: str | None = None, arch_kwargs: dict | None = None, trust: bool = False) -> dict:
    """Load a dnncompress checkpoint, or import a bare state_dict / (with trust) a pickled model.

    `arch` is what the user named on the command line: it is needed for a bare state_dict, it
    replaces the architecture a checkpoint records, and it is the only way (besides `trust`) that a
    `module:factory` recorded in a file is imported. Every tensor is checked against the
    architecture (built on the meta device) before anything is built for real.
    """
    p = require_file(path)
    _check_archive(p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not trust:
            raise UserError(
                f"{p} holds pickled Python objects (a full model?), which can run code when loaded; "
                "pass --trust only if you trust its source, or save model.state_dict() and pass --arch"
            ) from None
        return _import_full_model(p, arch, arch_kwargs)
    except MemoryError:
        raise UserError(f"{p} needs more memory than this machine has to load; it is damaged or not a checkpoint") from None
    except Exception as e:  # weights_only loading runs no code: any failure means an unreadable file
        first = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise UserError(f"{p} is not a readable PyTorch checkpoint ({first})") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("version") != VERSION:
            raise UserError(f"{p} is checkpoint version {str(obj.get('version'))[:20]}, this dnncompress reads version {VERSION}; upgrade dnncompress")
        missing = [k for k in ("arch", "state_dict") if k not in obj]
        if missing:
            raise UserError(f"{p} is a damaged dnncompress checkpoint: missing {', '.join(missing)}")
        for key, default in (("arch_kwargs", {}), ("dataset", {}), ("masks", {}), ("quant", {}), ("metrics", {}), ("history", [])):
            obj.setdefault(key, default)
        if arch:
            obj["arch"] = arch
            if arch_kwargs is not None:
                obj["arch_kwargs"] = dict(arch_kwargs)
        check_checkpoint(obj, p, named=arch, trust=trust)
        return obj
    state = obj.get("state_dict") if isinstance(obj, dict) and _is_state_dict(obj.get("state_dict")) else obj
    if _is_state_dict(state):
        if not arch:
            raise UserError(f"{p} is a bare state_dict; pass --arch NAME so dnncompress knows which model it belongs to")
        from .models import build_model

        check_arch_from_file(arch, arch_kwargs or {}, "--arch", named=arch)
        check_state(state, expected_state(arch, arch_kwargs or {}, p), arch, p)
        model = build_model(arch, arch_kwargs)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise UserError(f"{p} does not fit architecture '{arch}': {str(e).splitlines()[0][:160]}") from None
        ckpt = new_checkpoint(arch, arch_kwargs or {}, model.state_dict())
        ckpt["history"].append({"stage": "import", "config": {"source": str(p), "arch": arch}, "result": {}})
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
    ckpt["history"].append({"stage": "import", "config": {"source": str(p), "trusted_pickle": True}, "result": {}})
    return ckpt

