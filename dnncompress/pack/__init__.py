"""Packing: a .dnc file whose size on disk is the compressed size, and the way back to a model."""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from ..errors import UserError
from ..quant import SCHEMES
from ..surgery import weight_key
from .container import FORMAT, NATURAL, VERSION, invalid_file, read_packed, read_packed_deferred, restore, write_packed

__all__ = ["FORMAT", "VERSION", "check_spec", "checkpoint_from_packed", "load_packed", "read_packed", "save_packed", "vet_packed", "write_packed"]


def _spec_field(spec: dict, key: str, kind: type, path, default):
    value = spec.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, kind):
        raise invalid_file(path, f"spec '{key}' must be a {kind.__name__}")
    return value


def vet_packed(path: str | os.PathLike, arch: str | None = None, trust: bool = False, model: nn.Module | None = None):
    """(spec, blobs, expected state or None): the file parsed, its digest verified, its architecture
    vetted (no code from the file runs unless named or trusted) and every layer's shape and kind
    checked against that architecture, all before a single weight is decoded."""
    spec, blobs, expected, _, digest = _vet(path, arch, trust, model)
    digest.check()
    return spec, blobs, expected


def _vet(path, arch, trust, model):
    """vet_packed, the meta-device model it built to vet against (None when the caller gave one) and the
    file's digest, still being checked (the caller calls check() before decoding)."""
    spec, blobs, digest = read_packed_deferred(path)
    try:
        return (spec, blobs, *_vet_spec(path, spec, arch, trust, model), digest)
    except UserError:
        digest.check()  # a damaged file is called damaged, whatever else it breaks
        raise


def _vet_spec(path, spec, arch, trust, model):
    """(expected state or None, the meta-device model built for it or None) for a parsed spec."""
    built = None
    recorded = spec.get("arch")
    if recorded is not None and not isinstance(recorded, str):
        raise invalid_file(path, "its architecture is not a name")
    arch_kwargs = _spec_field(spec, "arch_kwargs", dict, path, {})
    for key, kind in (("dataset", dict), ("metrics", dict)):
        spec[key] = _spec_field(spec, key, kind, path, {})
    spec["arch"] = arch or recorded
    expected = None
    if model is not None:
        from ..surgery import plain_state_dict

        if spec.get("structure"):  # the user's full-size module, shrunk to what was packed
            from ..models.structure import apply_structure

            apply_structure(model, spec["structure"], path)
        expected = plain_state_dict(model, clone=False)  # shapes and dtypes only: no copies
    elif spec["arch"]:
        from ..validate import check_arch_from_file, skeleton_and_state

        check_arch_from_file(spec["arch"], arch_kwargs, path, named=arch, trust=trust)
        built, expected = skeleton_and_state(spec["arch"], arch_kwargs, path, _spec_field(spec, "structure", dict, path, {}))
    check_spec(spec, expected, path)
    return expected, built


def check_spec(spec: dict, expected: dict | None, path) -> None:
    """Layer and leftover entries well-formed, each key once, and (given the architecture) the same
    keys, shapes and kinds of dtype as the architecture: no allocation can exceed the model's size."""
    seen = set()

    def claim(key, shape, what):
        if not isinstance(key, str) or key in seen:
            raise invalid_file(path, f"{what} {str(key)[:60]!r} is named twice or is not a name")
        seen.add(key)
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 31 for d in shape):
            raise invalid_file(path, f"{what} '{key}' has a bad shape")
        if expected is not None:
            if key not in expected:
                raise invalid_file(path, f"{what} '{key}' is not part of the architecture")
            if tuple(expected[key].shape) != tuple(shape):
                raise invalid_file(path, f"'{key}' has shape {tuple(shape)}, the architecture needs {tuple(expected[key].shape)}")

    for layer in spec["layers"]:
        if not isinstance(layer, dict) or not isinstance(layer.get("n"), str) or layer.get("k") not in ("q", "m", "t"):
            raise invalid_file(path, "a layer entry is malformed (name, kind q|m|t)")
        key = weight_key(layer["n"])
        claim(key, layer.get("s"), "layer")
        if expected is not None and not expected[key].dtype.is_floating_point:
            raise invalid_file(path, f"'{key}' is stored as floating point, the architecture needs {expected[key].dtype}")
        if "x" in layer and (not isinstance(layer["x"], dict) or layer["x"].get("l") not in ("bitmap", "gaps")):
            raise invalid_file(path, f"layer '{layer['n']}' has an unknown sparse layout")
        if layer["k"] == "q":
            q, tables = layer.get("q"), layer.get("t")
            if not isinstance(q, dict) or q.get("scheme") not in SCHEMES:
                raise invalid_file(path, f"layer '{layer['n']}' names an unknown quantization scheme")
            if not isinstance(tables, dict) or not all(isinstance(e, list) and len(e) == 3 for e in tables.values()):
                raise invalid_file(path, f"layer '{layer['n']}' has malformed tables")
    ties = []
    for entry in spec["leftovers"]:
        if not isinstance(entry, list) or len(entry) not in (4, 5) or entry[2] not in (*NATURAL, "tie"):
            raise invalid_file(path, "a leftover entry is malformed")
        key, shape, kind = entry[:3]
        claim(key, shape, "tensor")
        if kind == "tie":
            ties.append(entry)
        elif expected is not None and expected[key].dtype.is_floating_point != NATURAL[kind].is_floating_point:
            raise invalid_file(path, f"'{key}' is stored as {kind}, the architecture needs {expected[key].dtype}")
    for key, _shape, _, target, *_ in ties:
        if target not in seen or target in {t[0] for t in ties}:
            raise invalid_file(path, f"'{key}' is tied to {str(target)[:60]!r}, which the file does not store")
    if expected is not None:
        missing = [k for k in expected if k not in seen]
        if missing:
            raise invalid_file(path, f"'{missing[0]}' of the architecture is missing ({len(missing)} missing)")


def _tie_groups(model: nn.Module) -> list[list[str]]:
    """Names of parameters/buffers that are one object in `model` (tied weights), in groups of 2+."""
    groups: dict[int, list[str]] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        groups.setdefault(id(t), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def _retie(model: nn.Module, groups: list[list[str]]) -> None:
    """`load_state_dict(assign=True)` gives each name its own Parameter: make tied names one object again."""
    for first, *others in groups:
        owner, _, attr = first.rpartition(".")
        shared = getattr(model.get_submodule(owner), attr)
        for name in others:
            mod, _, attr = name.rpartition(".")
            setattr(model.get_submodule(mod), attr, shared)


_PLAIN_LOADERS = (nn.Module._load_from_state_dict, nn.modules.batchnorm._NormBase._load_from_state_dict)


def _loads_plainly(m: nn.Module) -> bool:
    """Whether load_state_dict(assign=True) would only assign `m`'s own tensors by name: torch's own loader (batch
    norm's adds a num_batches_tracked that a vetted state already has), no load hooks, no extra state."""
    return (type(m)._load_from_state_dict in _PLAIN_LOADERS and not m._load_state_dict_pre_hooks
            and not m._load_state_dict_post_hooks and type(m).set_extra_state is nn.Module.set_extra_state)


def _adopt(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """model.load_state_dict(state, assign=True) for a state already vetted against the model (the same keys, shapes
    and dtypes), without torch's pass over every key for every module (VGG-16: 2.4 ms, more than half a memcpy of
    its weights): each module takes its own tensors. A model with any module that loads its own way, keys that are not
    exactly its own (a shared submodule's second name too), or torch's swap-tensors mode goes through torch."""
    plan = []
    swapping = getattr(torch.__future__, "get_swap_module_params_on_conversion", lambda: False)()
    if not swapping and all(_loads_plainly(m) for m in model.modules()):
        for prefix, m in model.named_modules():
            dot = prefix + "." if prefix else ""
            plan += [(m, name, dot + name, p) for name, p in m._parameters.items() if p is not None]
            plan += [(m, name, dot + name, None) for name, b in m._buffers.items() if b is not None and name not in m._non_persistent_buffers_set]
    if not plan or {key for _, _, key, _ in plan} != state.keys():
        model.load_state_dict(state, assign=True)
        return
    for m, name, key, param in plan:
        t = state[key]
        if param is not None:
            if isinstance(t, nn.Parameter):
                t.requires_grad_(param.requires_grad)
            else:
                t = nn.Parameter(t, requires_grad=param.requires_grad)
        setattr(m, name, t)


def checkpoint_from_packed(path: str | os.PathLike, arch: str | None = None, trust: bool = False, model: nn.Module | None = None,
                           in_place: bool = False) -> dict:
    """A checkpoint dict (dequantized weights, masks, quantizer states) rebuilt from a .dnc.

    `arch` (what the user named) replaces the recorded architecture; a recorded `module:factory`
    is imported only when named so or with `trust`. `model` supplies the shapes instead, and with
    `in_place` its own (non-meta) tensors receive the decoded values: no second copy of the model.
    """
    return _checkpoint(path, arch, trust, model, in_place)[0]


def _checkpoint(path, arch, trust, model, in_place, states: bool = True):
    """checkpoint_from_packed, and the meta-device skeleton it vetted against (None when given a model).
    `states=False` (load_packed, which keeps only the weights): no quantizer states exported or vetted; each layer's
    quantizer was still built from the file's tables, and checked there, to decode it."""
    from ..checkpoint import FORMAT as CK_FORMAT
    from ..checkpoint import VERSION as CK_VERSION

    spec, blobs, expected, built, digest = _vet(path, arch, trust, model)
    into = {k: t for k, t in expected.items() if not t.is_meta} if in_place and model is not None and expected else None
    state, masks, quant = restore(spec, blobs, path, into, digest, states)
    if expected is not None:
        from ..validate import check_masks, check_quant, check_state

        for key, t in state.items():  # the file records dtypes; a model named by the caller decides
            if t.dtype != expected[key].dtype:
                state[key] = t.to(expected[key].dtype)
        check_state(state, expected, spec["arch"] or "the model", path)
        check_masks(masks, expected, path)
        check_quant(quant, expected, path, rebuild=False)  # restore built each quantizer from the file for this shape
    return {"format": CK_FORMAT, "version": CK_VERSION, "arch": spec["arch"], "arch_kwargs": spec.get("arch_kwargs") or {},
            "dataset": spec["dataset"], **({"structure": spec["structure"]} if spec.get("structure") else {}), "state_dict": state, "masks": masks, "quant": quant,
            "metrics": spec["metrics"], "history": [{"stage": "unpack", "config": {"source": str(path)}, "result": {}}]}, built


def load_packed(path: str | os.PathLike, model: nn.Module | None = None, trust: bool = False,
                device: str | torch.device | None = None) -> nn.Module:
    """An inference-ready nn.Module from a .dnc. Pass `model` to fill a module you built (needed for
    architectures packed without a spec); `trust=True` lets a recorded `module:factory` be imported;
    `device` ("cpu", "cuda", "cuda:1", …) is where the module ends up (decoding runs on the CPU)."""
    target = None
    if device is not None:
        from ..train import pick_device

        target = pick_device(device)  # checked before any decoding: a missing GPU fails fast
    model = _load_packed(path, model, trust)
    return model.to(target) if target is not None else model


def _load_packed(path, model, trust) -> nn.Module:
    if model is not None:  # decoded straight into the module's tensors; a meta module adopts new ones
        ckpt = _checkpoint(path, None, trust, model, True, states=False)[0]
        own = model.state_dict()
        if any(t.is_meta for t in own.values()):
            ties = _tie_groups(model)
            _adopt(model, ckpt["state_dict"])
            _retie(model, ties)
        else:
            if any(k not in own or v.data_ptr() != own[k].data_ptr() for k, v in ckpt["state_dict"].items()):
                model.load_state_dict(ckpt["state_dict"])  # some could not be decoded in place (dtype, device)
        return model.eval()
    ckpt, model = _checkpoint(path, None, trust, None, False, states=False)  # model: the meta-device skeleton it was vetted against
    if not ckpt["arch"] or model is None:
        raise UserError(f"{path} does not record its architecture; pass model= to load_packed")
    from ..models import build_model

    ties = _tie_groups(model)
    _adopt(model, ckpt["state_dict"])  # the decoded tensors themselves: no second copy
    _retie(model, ties)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # a non-persistent buffer: build for real
        model = build_model(ckpt["arch"], ckpt["arch_kwargs"], ckpt.get("structure"))
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
