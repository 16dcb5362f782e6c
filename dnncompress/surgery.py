"""Puts masks and quantizers onto any nn.Module as weight parametrizations, and takes them off.

One `CompressedWeight` parametrization per compressed weight: the stored parameter stays the
fp32 shadow weight; the forward pass sees `quantize(weight * mask)`. Gradients reach the
shadow weight through the straight-through estimator. This works for every module with a
`weight` of 2+ dims (Conv, Linear, user modules), not only the zoo.
"""
from __future__ import annotations

import fnmatch
import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .errors import UserError
from .models import build_model
from .quant import quantizer_from_state

SUFFIX = ".parametrizations.weight.original"


class CompressedWeight(nn.Module):
    """weight → quantizer(weight · mask); either part may be absent."""

    def __init__(self, mask: torch.Tensor | None = None, quantizer: nn.Module | None = None):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool, copy=True) if mask is not None else None)  # never the caller's tensor
        self.quantizer = quantizer

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A state saved after pruning began (a resume snapshot) carries a mask this fresh module lacks."""
        key = prefix + "mask"
        if self.mask is None and key in state_dict:
            self.mask = torch.zeros_like(state_dict[key], dtype=torch.bool)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        swept = self.__dict__.pop("_swept", None)
        if swept is not None and swept[0] is w and swept[1] == w._version:  # computed by sweep() for this use
            return swept[2]
        return self.compute(w)

    def compute(self, w: torch.Tensor) -> torch.Tensor:
        mask = self.mask
        if mask is not None:
            w = w * mask.view(torch.uint8)  # uint8 arithmetic: several times faster than bool (quant/fastcode.py)
        if self.quantizer is not None:
            w = self.quantizer(w, mask)
        return w

    def sweep(self, w: torch.Tensor) -> None:
        """Compute the weight of `w` (the layer's shadow weight) now; the layer's next use takes it, while `w` is
        unchanged since (its version counter: an optimizer step moves it). See sweep_before_forward."""
        self.__dict__["_swept"] = (w, w._version, self.compute(w))

    def __getstate__(self):
        """deepcopy leaves out a swept weight (a graph's output, which it cannot copy)."""
        state = super().__getstate__()
        state.pop("_swept", None)
        return state


def compressible_layers(model: nn.Module, include: Iterable[str] = ("*",), exclude: Iterable[str] = ()) -> dict[str, nn.Module]:
    """Modules with a 2+-dim `weight` parameter whose name matches include and not exclude (fnmatch)."""
    include, exclude = list(include), list(exclude)
    out, owners = {}, {}
    for name, module in model.named_modules():
        w = module.parametrizations["weight"].original if parametrize.is_parametrized(module, "weight") else getattr(module, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() < 2:
            continue
        owners.setdefault(id(w), []).append(name)
        if not any(fnmatch.fnmatchcase(name, p) for p in include):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        out[name] = module
    for names in owners.values():  # a tied weight: compressing one side only would leave the other seeing fp32
        chosen = [n for n in names if n in out]
        if chosen and len(chosen) < len(names):
            left = next(n for n in names if n not in out)
            raise UserError(f"'{chosen[0]}.weight' is tied to '{left}.weight'; include both layers or neither "
                            f"(e.g. exclude '{chosen[0]}')")
    return out


def check_patterns(model: nn.Module, patterns: Iterable[str], what: str) -> None:
    """Every pattern the user gave must match some compressible layer: a typo must not pass silently."""
    names = list(compressible_layers(model))
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            shown = ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")
            raise UserError(f"{what} '{pattern}' matches no layer; the layers are: {shown or 'none'}")


def check_layer_patterns(model: nn.Module, include=("*",), exclude=(), overrides=None, blocks=None) -> None:
    """check_patterns for each kind of pattern a command takes."""
    check_patterns(model, [p for p in include if p != "*"], "include pattern")
    check_patterns(model, exclude, "exclude pattern")
    check_patterns(model, overrides or {}, "override pattern")
    check_patterns(model, blocks if isinstance(blocks, dict) else {}, "block pattern")


def compression_of(module: nn.Module) -> CompressedWeight | None:
    if parametrize.is_parametrized(module, "weight"):
        for p in module.parametrizations["weight"]:
            if isinstance(p, CompressedWeight):
                return p
    return None


_ATTACHED = [0]  # how many weights attach() has given a CompressedWeight: a sweep's list of layers is kept until it moves


def attach(module: nn.Module, mask: torch.Tensor | None = None, quantizer: nn.Module | None = None) -> CompressedWeight:
    """Give `module.weight` a CompressedWeight (or update the one it has)."""
    comp = compression_of(module)
    if comp is None:
        comp = CompressedWeight(mask, quantizer)
        parametrize.register_parametrization(module, "weight", comp, unsafe=True)
        _ATTACHED[0] += 1
        return comp
    if mask is not None:
        comp.mask = mask.to(torch.bool).to(comp.mask.device if comp.mask is not None else mask.device)
    if quantizer is not None:
        comp.quantizer = quantizer
    return comp


def sweep_before_forward(model: nn.Module) -> nn.Module:
    """Make each training forward of `model` (training mode, gradients on) compute every compressed weight first,
    one after another, each layer then taking its own when it runs. A layer's quantizer otherwise starts cold,
    after the layers before it and the last step's backward and optimizer have pushed its code and tables out of
    the caches: on LeNet-5 at batch 32 a layer's first call took about three times what a second call right after
    took (pq conv1 161 against 59 µs); sweeping took 0.005–0.03 off the QAT/fp32 step ratio of the codebook and pq
    schemes, −0.001–0.03 off fourval's (benchmarks/sweep_ab.py, three runs). The values and
    gradients are the same. Inference (eval mode or no_grad) computes one weight at a time as before: no extra
    copies held. Installed once per module (two forward hooks, which deepcopy keeps); returns `model`."""
    if not model.__dict__.get("_dnncompress_sweep"):
        model.register_forward_pre_hook(_sweep_in)
        model.register_forward_hook(_sweep_out, always_call=True)
        model.__dict__["_dnncompress_sweep"] = True
    return model


def _swept_weights(model: nn.Module) -> list[tuple[nn.Module, CompressedWeight]]:
    """(layer, its CompressedWeight) for every layer of `model` whose weight is that alone, listed once and kept on
    the model while attach() has added none anywhere (a layer compressed later is computed when it runs until
    then: slower, never wrong). A copy of the model (another id) lists its own."""
    kept = model.__dict__.get("_dnncompress_layers")
    key = (id(model), _ATTACHED[0])
    if kept is None or kept[0] != key:
        pairs = [(m, comp) for m in model.modules() if (comp := compression_of(m)) is not None and _shadow_of(m, comp) is not None]
        kept = (key, pairs)
        model.__dict__["_dnncompress_layers"] = kept
    return kept[1]


_SWEEPING = threading.local()  # .comps: the CompressedWeights swept by forwards of this thread that have not ended


def _in_progress() -> weakref.WeakSet:
    comps = getattr(_SWEEPING, "comps", None)
    if comps is None:
        comps = _SWEEPING.comps = weakref.WeakSet()
    return comps


def _sweep_in(model: nn.Module, args) -> None:
    """Forward pre-hook: in a training forward, compute every weight of the model that no enclosing model's forward
    (a model holding this one, quantized too) has computed already. First undo what a forward of this model that
    never ended (an interrupt inside it) left."""
    stack = _sweep_stack(model)
    while stack:
        _end_sweep(stack.pop())
    mine = []
    if model.training and torch.is_grad_enabled():
        busy = _in_progress()
        try:
            for layer, comp in _swept_weights(model):
                shadow = _shadow_of(layer, comp)
                if shadow is None:  # its compression was taken off or replaced since the list was made
                    model.__dict__.pop("_dnncompress_layers", None)
                elif comp not in busy:
                    busy.add(comp)
                    mine.append(comp)
                    comp.sweep(shadow)
        except BaseException:
            _end_sweep(mine)
            raise
    stack.append(mine)


def _shadow_of(layer: nn.Module, comp: CompressedWeight) -> torch.Tensor | None:
    """The shadow weight `comp` computes `layer.weight` from, or None where comp no longer does."""
    plist = layer._modules.get("parametrizations")
    entry = plist._modules.get("weight") if plist is not None else None
    if entry is None or len(entry) != 1 or entry[0] is not comp:
        return None
    return entry.original


def _sweep_out(model: nn.Module, args, output) -> None:
    """Forward hook (also when the forward raised): drop what this forward swept and no layer took (a skipped branch)."""
    stack = _sweep_stack(model)
    if stack:
        _end_sweep(stack.pop())


def _sweep_stack(model: nn.Module) -> list:
    """This model's sweeps not yet ended, one list of CompressedWeights each. Kept with the model's id: a copy made
    by copying __dict__ (DataParallel's replicas, which run in threads of their own) starts its own."""
    kept = model.__dict__.get("_dnncompress_swept")
    if kept is None or kept[0] != id(model):
        kept = model.__dict__["_dnncompress_swept"] = (id(model), [])
    return kept[1]


def _end_sweep(comps: list) -> None:
    busy = _in_progress()
    for comp in comps:
        busy.discard(comp)
        comp.__dict__.pop("_swept", None)


def weight_key(layer: str) -> str:
    """state_dict key of a layer's weight; the root module (name '') has plain 'weight'."""
    return f"{layer}.weight" if layer else "weight"


@contextmanager
def shadow_weights_replaced(values: dict[nn.Module, torch.Tensor]) -> Iterator[None]:
    """Temporarily give modules other shadow weights (for what-if evaluations); always restored."""
    saved = {m: shadow_weight(m).detach().clone() for m in values}
    try:
        with torch.no_grad():
            for m, v in values.items():
                shadow_weight(m).copy_(v)
        yield
    finally:
        with torch.no_grad():
            for m, w0 in saved.items():
                shadow_weight(m).copy_(w0)


def shadow_weight(module: nn.Module) -> torch.Tensor:
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations["weight"].original
    return module.weight


def tensor_identity(t: torch.Tensor) -> tuple:
    """Two state_dict entries are one tied tensor when they view the same memory the same way."""
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype) if t.numel() else (id(t),)


def plain_state_dict(model: nn.Module, clone: bool = True) -> dict[str, torch.Tensor]:
    """The state_dict with shadow weights under their plain names and no parametrization buffers
    (CPU copies, tied tensors still one tensor; `clone=False` gives the module's own tensors)."""
    out, copies = {}, {}
    for key, value in model.state_dict().items():
        if key == SUFFIX[1:]:  # the root module itself is parametrized (e.g. a bare nn.Linear)
            name = "weight"
        elif key.endswith(SUFFIX):
            name = key[: -len(SUFFIX)] + ".weight"
        elif key.startswith("parametrizations.") or ".parametrizations." in key:
            continue
        else:
            name = key
        if clone:
            ident = tensor_identity(value)
            if ident not in copies:
                copies[ident] = value.detach().cpu().clone()
            value = copies[ident]
        out[name] = value
    return out


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, module in model.named_modules():
        comp = compression_of(module)
        if comp is not None and comp.mask is not None:
            out[name] = comp.mask.detach().cpu().clone()
    return out


def quant_state_of(model: nn.Module) -> dict[str, dict]:
    out = {}
    for name, module in model.named_modules():
        comp = compression_of(module)
        if comp is not None and comp.quantizer is not None:
            out[name] = comp.quantizer.export_state()
    return out


def model_from_checkpoint(ckpt: dict, with_compression: bool = True, model: nn.Module | None = None) -> nn.Module:
    """Build the checkpoint's model (or fill `model`, a module the user built: shrunk to the checkpoint's
    structure first) with its fp32 weights, masks and quantizers in place."""
    if model is None:
        model = build_model(ckpt["arch"], ckpt.get("arch_kwargs"), ckpt.get("structure"))
    elif ckpt.get("structure"):
        from .models.structure import apply_structure

        apply_structure(model, ckpt["structure"], "the checkpoint")
    model.load_state_dict(ckpt["state_dict"])
    if with_compression:
        modules = dict(model.named_modules())
        quant = ckpt.get("quant", {}) or {}
        for name in sorted(set(ckpt.get("masks", {})) | set(quant)):
            if name not in modules:
                raise UserError(f"checkpoint names layer '{name}', which the model '{ckpt['arch']}' does not have")
            quantizer = None
            if name in quant:
                quantizer = quantizer_from_state(quant[name])
            attach(modules[name], ckpt.get("masks", {}).get(name), quantizer)
        sweep_before_forward(model)
    return model


def update_checkpoint(ckpt: dict, model: nn.Module) -> dict:
    """Write the model's shadow weights, masks and quantizer states back into `ckpt` (in place)."""
    ckpt["state_dict"] = plain_state_dict(model)
    ckpt["masks"] = masks_of(model)
    ckpt["quant"] = quant_state_of(model)
    if getattr(model, "_dnncompress_structure", None):  # structured pruning shrank it: the sizes to rebuild it with
        ckpt["structure"] = model._dnncompress_structure
    return ckpt


@torch.no_grad()
def effective_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What inference sees: masked, dequantized weights under plain names (for unpack/export)."""
    out = plain_state_dict(model)
    model_was_training = model.training
    model.eval()
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            out[weight_key(name)] = module.weight.detach().cpu().clone()
    model.train(model_was_training)
    return out
