"""The architecture registry: zoo names, `torchvision:NAME`, and any `package.module:factory`."""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import UserError
from ..registry import Registry


@dataclass(frozen=True)
class ArchSpec:
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]
    params: int  # parameter count at the default input shape and 10 classes; checked by the tests


ARCHS: Registry[ArchSpec] = Registry("architecture")


def register_arch(name: str, input_shape: tuple[int, int, int], params: int):
    def add(factory):
        ARCHS.register(name)(ArchSpec(factory, input_shape, params))
        return factory

    return add


def _accepted_kwargs(factory: Callable, kwargs: dict) -> dict:
    """Only the kwargs the factory takes, so dataset-derived hints never break a user factory."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return dict(kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}


def import_torchvision(needed_for: str):
    """torchvision is optional (`dnncompress[vision]`): only `torchvision:NAME` models and image-folder
    data need it, and a torch build without a matching torchvision (a CPU wheel beside PyPI's CUDA
    torchvision) cannot import it at all."""
    try:
        import torchvision
    except (ImportError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:120]
        raise UserError(f"{needed_for} needs torchvision built for torch {torch.__version__} ({first}); "
                        f"install the torchvision release that matches your torch: pip install 'dnncompress[vision]'") from None
    return torchvision


def _resolve(arch: str) -> Callable[..., nn.Module]:
    if arch in ARCHS:
        return ARCHS.get(arch).factory
    if arch.startswith("torchvision:"):
        name = arch.split(":", 1)[1]
        tvm = import_torchvision(arch).models
        available = tvm.list_models()
        if name not in available:
            from ..registry import did_you_mean

            raise UserError(f"unknown torchvision model '{name}'{did_you_mean(name, available)}")

        def tv_factory(num_classes: int = 1000, **kw):
            return tvm.get_model(name, weights=None, num_classes=num_classes)

        return tv_factory
    if ":" in arch:
        module_name, attr = arch.split(":", 1)
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise UserError(f"cannot import '{module_name}' for architecture '{arch}': {e}") from None
        try:
            factory = getattr(module, attr)
        except AttributeError:
            raise UserError(f"module '{module_name}' has no attribute '{attr}' (architecture '{arch}')") from None
        if not callable(factory):
            raise UserError(f"architecture '{arch}' is not callable")
        return factory
    ARCHS.get(arch)  # raises the did-you-mean error
    raise AssertionError("unreachable")


def is_code_reference(arch: str) -> bool:
    """True for `package.module:factory`: building it imports and runs that module's code."""
    return ":" in arch and not arch.startswith("torchvision:")


SCALARS = (str, int, float, bool, type(None))


def check_arch_from_file(arch, arch_kwargs, source, named: str | None = None, trust: bool = False, allow: str | None = None) -> None:
    """An architecture read from a file may be a zoo name or `torchvision:NAME`; a `module:factory`
    only when the user named the same one on the command line (`named`) or passed --trust.
    Checked before anything is imported, built or called. `allow` says how to permit it (default: --arch/--trust)."""
    if not isinstance(arch, str) or not arch or len(arch) > 200:
        raise UserError(f"{source}: the recorded architecture must be a name, got {str(arch)[:60]!r}; re-create the file or pass --arch")
    if not isinstance(arch_kwargs, dict) or not all(isinstance(k, str) and isinstance(v, SCALARS) for k, v in arch_kwargs.items()):
        raise UserError(f"{source}: the recorded arch_kwargs must map names to plain values, got {str(arch_kwargs)[:60]!r}")
    if is_code_reference(arch):
        if not trust and arch != named:
            raise UserError(f"{source} names architecture '{arch}', which would import and run code from '{arch.split(':')[0]}'; "
                            f"if you trust that code, {allow or f'pass --arch {arch} (or --trust)'}")
        return
    if arch.startswith("torchvision:"):
        _resolve(arch)  # an unknown torchvision name fails here, before any build
        return
    if arch not in ARCHS:
        ARCHS.get(arch)  # raises the did-you-mean error


def build_model(arch: str, arch_kwargs: dict | None = None, structure: dict | None = None) -> nn.Module:
    """Build `arch` with the kwargs it accepts; a zoo name, `torchvision:NAME` or `module:factory`;
    `structure` (what structured pruning recorded) shrinks its modules to the pruned sizes."""
    factory = _resolve(arch)
    try:
        model = factory(**_accepted_kwargs(factory, arch_kwargs or {}))
    except (TypeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]  # torch's argument errors run to many lines
        raise UserError(f"cannot build '{arch}' with {arch_kwargs}: {first}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"architecture '{arch}' returned {type(model).__name__}, not a torch.nn.Module")
    if structure:
        from .structure import apply_structure

        apply_structure(model, structure)
    return model


def default_input_shape(arch: str) -> tuple[int, int, int]:
    """The input a zoo model is made for; (3, 224, 224) for torchvision, (1, 28, 28) when unknown."""
    if arch in ARCHS:
        return ARCHS.get(arch).input_shape
    if arch.startswith("torchvision:"):
        return (3, 224, 224)
    return (1, 28, 28)
