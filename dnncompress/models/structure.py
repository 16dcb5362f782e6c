"""A model's structure: the sizes of its resizable modules, and how to shrink a freshly built model to a
recorded one (what structured pruning leaves), so files carry plain sizes and never code."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..errors import UserError

# the size attributes of each module kind, and the shape of each of its tensors from them
_CONV = ("in_channels", "out_channels", "groups")


def _conv_shapes(m, a):
    return {"weight": (a["out_channels"], a["in_channels"] // a["groups"], *m.kernel_size), "bias": (a["out_channels"],)}


def _norm_shapes(m, a):
    n = (a["num_features"],)
    return {"weight": n, "bias": n, "running_mean": n, "running_var": n}


KINDS: list[tuple[type, tuple[str, ...], Callable]] = [
    (nn.modules.conv._ConvNd, _CONV, _conv_shapes),
    (nn.Linear, ("in_features", "out_features"), lambda m, a: {"weight": (a["out_features"], a["in_features"]), "bias": (a["out_features"],)}),
    (nn.modules.batchnorm._BatchNorm, ("num_features",), _norm_shapes),
    (nn.GroupNorm, ("num_channels",), lambda m, a: {"weight": (a["num_channels"],), "bias": (a["num_channels"],)}),
    (nn.LayerNorm, ("normalized_shape",), lambda m, a: {"weight": tuple(a["normalized_shape"]), "bias": tuple(a["normalized_shape"])}),
    (nn.Embedding, ("embedding_dim",), lambda m, a: {"weight": (m.num_embeddings, a["embedding_dim"])}),
    (nn.PReLU, ("num_parameters",), lambda m, a: {"weight": (a["num_parameters"],)}),
]


def _kind(module: nn.Module):
    for cls, attrs, shapes in KINDS:
        if isinstance(module, cls) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
            return attrs, shapes
    return None


def _sizes(module: nn.Module, attrs) -> dict:
    return {a: list(getattr(module, a)) if isinstance(getattr(module, a), tuple) else int(getattr(module, a)) for a in attrs}


def sizes_of(model: nn.Module) -> dict[str, dict]:
    """Every resizable module's size attributes."""
    return {n: _sizes(m, k[0]) for n, m in model.named_modules() if (k := _kind(m))}


def structure_of(model: nn.Module, before: dict[str, dict]) -> dict[str, dict]:
    """The modules whose sizes differ from `before` (sizes_of the unpruned model), with the sizes that changed."""
    now = sizes_of(model)
    return {n: {a: v for a, v in s.items() if before.get(n, {}).get(a) != v} for n, s in now.items() if before.get(n) != s}


def apply_structure(model: nn.Module, structure: dict, source="the checkpoint") -> nn.Module:
    """Shrink a freshly built model to a recorded structure, in place: sizes may only shrink, so a file can
    never make the model larger than its architecture. The tensors are new and uninitialized (a state_dict
    fills them); they keep each old tensor's dtype and device (meta stays meta)."""
    if not isinstance(structure, dict):
        raise UserError(f"{source}: 'structure' must map module names to their sizes")
    original = sizes_of(model)
    modules = dict(model.named_modules())
    for name, sizes in structure.items():
        module = modules.get(name) if isinstance(name, str) else None
        kind = _kind(module) if module is not None else None
        if kind is None or not isinstance(sizes, dict) or not sizes or not set(sizes) <= set(kind[0]):
            raise UserError(f"{source}: structure entry {str(name)[:60]!r} does not name a resizable module with its sizes")
        old = _sizes(module, kind[0])
        for attr, value in sizes.items():
            values = value if isinstance(value, list) else [value]
            was = old[attr] if isinstance(old[attr], list) else [old[attr]]
            if len(values) != len(was) or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= w for v, w in zip(values, was)):
                raise UserError(f"{source}: '{name}.{attr}' = {str(value)[:30]} is not between 1 and the architecture's {old[attr]}")
        full = {**old, **sizes}  # the sizes not written are the architecture's
        if "groups" in full and (full["in_channels"] % full["groups"] or full["out_channels"] % full["groups"]):
            raise UserError(f"{source}: '{name}' groups must divide its channels")
        for attr, value in full.items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
        for tensor_name, shape in kind[1](module, full).items():
            for store in (module._parameters, module._buffers):
                t = store.get(tensor_name)
                if t is not None and tuple(t.shape) != tuple(shape):
                    new = torch.empty(shape, dtype=t.dtype, device=t.device)
                    store[tensor_name] = nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else new
    remember_structure(model, original)
    return model


def remember_structure(model: nn.Module, original: dict) -> None:
    """Keep the architecture's sizes and the structure on the module, so save_packed(model) records it."""
    original = getattr(model, "_dnncompress_original_sizes", None) or original
    model._dnncompress_original_sizes = original
    model._dnncompress_structure = structure_of(model, original)
