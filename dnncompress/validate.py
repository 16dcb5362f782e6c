"""Check what a file claims against the architecture it names, before anything is built for real,
decoded or allocated: a hostile or damaged file gets a one-line UserError, never a wrong model.

The architecture is first vetted by `check_arch_from_file` (no code from a file runs unless the
user named it), then built on the meta device: shapes and dtypes without memory.
"""
from __future__ import annotations

import functools
import math
import threading
import warnings

import torch
import torch.nn as nn

from .errors import UserError
from .models.zoo import build_model, check_arch_from_file
from .surgery import weight_key

MAX_PARAMS = 1 << 31

try:  # torch's own `with torch.device(...)` mode; private, so a torch without it builds through torch.device("meta")
    from torch.utils._device import DeviceContext as _DeviceContext
except ImportError:  # pragma: no cover - every torch this supports has it
    _DeviceContext = None

# In-place ops that only set values: a meta tensor has none to set
_VALUE_ONLY = frozenset(getattr(torch.Tensor, name) for name in (
    "uniform_", "normal_", "bernoulli_", "random_", "exponential_", "cauchy_", "log_normal_", "geometric_", "fill_", "zero_"))


def _init_target(func, args, kwargs):
    """The meta tensor an init or fill call would only write values into, or None to run the call."""
    if func not in _VALUE_ONLY and getattr(func, "__module__", None) != "torch.nn.init":
        return None
    t = args[0] if args else (kwargs or {}).get("tensor")  # nn.init passes its tensor by keyword to a mode
    return t if isinstance(t, torch.Tensor) and t.is_meta else None


if _DeviceContext is not None:
    class _MetaBuild(_DeviceContext):
        """torch.device("meta") that skips initialization on meta tensors. On the meta device nn.init and the random
        fills run Python decompositions, for values no meta tensor holds: ResNet-20's kaiming_normal_ loop made its
        build 11.5 ms against 5.3 without (A/B, 300 alternating builds). get_default_device() still says meta."""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            target = _init_target(func, args, kwargs)
            if target is not None:
                return target
            return super().__torch_function__(func, types, args, kwargs)

        def __enter__(self):
            _MetaResets.enter()
            try:
                return super().__enter__()
            except BaseException:
                _MetaResets.exit()
                raise

        def __exit__(self, *exc):
            try:
                return super().__exit__(*exc)
            finally:
                _MetaResets.exit()


def _skip_on_meta(original):
    @functools.wraps(original)
    def reset_parameters(self, *args, **kwargs):
        if all(t is None or t.is_meta for t in (*self._parameters.values(), *self._buffers.values())):
            return None  # values for tensors that hold none
        return original(self, *args, **kwargs)

    return reset_parameters


class _MetaResets:
    """While any meta build runs, torch's own layers skip reset_parameters when every tensor of theirs is on the meta
    device: the fan-in arithmetic before each (skipped) init call still went through the device mode, tensor method
    by tensor method (VGG-16's skeleton: 2.6 → 2.2 ms). Installed and removed under a lock, counted, so that nested
    and concurrent builds agree; another thread building real layers meanwhile gets the original method through the
    wrapper, since its tensors are not meta."""

    CLASSES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.Embedding)
    lock = threading.Lock()
    depth = 0
    saved: dict = {}

    @classmethod
    def enter(cls) -> None:
        with cls.lock:
            if cls.depth == 0:
                for c in cls.CLASSES:
                    own = vars(c).get("reset_parameters")
                    if own is not None:
                        cls.saved[c] = own
                        c.reset_parameters = _skip_on_meta(own)
            cls.depth += 1

    @classmethod
    def exit(cls) -> None:
        with cls.lock:
            cls.depth -= 1
            if cls.depth == 0:
                for c, own in cls.saved.items():
                    c.reset_parameters = own
                cls.saved.clear()


def meta_device():
    """A context in which modules are built on the meta device without running their initialization."""
    return _MetaBuild("meta") if _DeviceContext is not None else torch.device("meta")


def expected_state(arch: str, arch_kwargs: dict, source, structure: dict | None = None) -> dict[str, torch.Tensor]:
    """The architecture's state_dict as meta tensors (shapes and dtypes, no memory), shrunk to `structure`."""
    return skeleton_and_state(arch, arch_kwargs, source, structure)[1]


def skeleton(arch: str, arch_kwargs: dict, source, structure: dict | None = None):
    """The architecture built on the meta device (no memory for weights), shrunk to `structure`, its size
    checked: what a file's weights are vetted against, and what load_packed fills."""
    return skeleton_and_state(arch, arch_kwargs, source, structure)[0]


def skeleton_and_state(arch: str, arch_kwargs: dict, source, structure: dict | None = None) -> tuple:
    """(skeleton, its state_dict as a dict of meta tensors): the size check already walks the state, and a second
    walk cost a VGG-16 load 0.1–0.2 ms."""
    try:
        with warnings.catch_warnings(), meta_device():
            warnings.simplefilter("ignore")  # odd but legal kwargs (zero-size layers) must not print from a library
            model = build_model(arch, arch_kwargs)
        if structure:
            from .models.structure import apply_structure

            apply_structure(model, structure, source)
    except UserError:
        raise
    except Exception as e:  # a factory given bad kwargs may fail in any way
        raise UserError(f"{source}: cannot build '{arch}' with {arch_kwargs}: {type(e).__name__}") from None
    state = dict(model.state_dict())
    total = sum(t.numel() for t in state.values())
    if total > MAX_PARAMS:
        raise UserError(f"{source}: '{arch}' with {arch_kwargs} has {total:,} parameters; refusing to build it")
    return model, state


def _same_kind(a: torch.dtype, b: torch.dtype) -> bool:
    """Floating vs integer/bool must agree; within a kind a cast is lossless enough (fp16 ↔ fp32, bool ↔ int)."""
    return a.is_floating_point == b.is_floating_point and a.is_complex == b.is_complex


def check_state(state, expected: dict[str, torch.Tensor], arch: str, source) -> None:
    """Same keys, shapes and kinds of dtype as the architecture's state_dict."""
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise UserError(f"{source}: state_dict is not a mapping of names to tensors")
    missing = [k for k in expected if k not in state]
    if missing:
        raise UserError(f"{source}: '{missing[0]}' of {arch} is missing ({len(missing)} missing); the file does not fit its architecture")
    extra = [k for k in state if k not in expected]
    if extra:
        raise UserError(f"{source}: has '{extra[0]}', which {arch} does not ({len(extra)} extra); the file does not fit its architecture")
    for key, want in expected.items():
        t = state[key]
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.is_meta:
            raise UserError(f"{source}: '{key}' is not a dense tensor")
        if tuple(t.shape) != tuple(want.shape):
            raise UserError(f"{source}: '{key}' has shape {tuple(t.shape)}, {arch} needs {tuple(want.shape)}")
        if not _same_kind(t.dtype, want.dtype):
            raise UserError(f"{source}: '{key}' is {t.dtype}, {arch} needs {want.dtype}")


def _per_layer(group, what: str, expected: dict[str, torch.Tensor], source):
    """(layer name, state_dict key of its weight, entry) for a masks/quant mapping; unknown layers refused."""
    if not isinstance(group, dict):
        raise UserError(f"{source}: {what}s are not a mapping of layer names")
    for name, entry in group.items():
        key = weight_key(name) if isinstance(name, str) else None
        if key not in expected:
            raise UserError(f"{source}: has a {what} for layer {str(name)[:60]!r}, which the model does not have")
        yield name, key, entry


def check_masks(masks, expected: dict[str, torch.Tensor], source) -> None:
    for name, key, m in _per_layer(masks, "mask", expected, source):
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or tuple(m.shape) != tuple(expected[key].shape):
            raise UserError(f"{source}: the mask of '{name}' must be a bool tensor of shape {tuple(expected[key].shape)}")


def check_quant(quant, expected: dict[str, torch.Tensor], source, rebuild: bool = True) -> None:
    """Every quantizer state must rebuild its scheme and fit its layer's shape (`rebuild=False`: states that a
    quantizer built for that very shape just exported, as a packed file's restore gives them: the structure
    is still checked, the rebuild is skipped)."""
    from .quant import quantizer_from_state

    for name, key, q in _per_layer(quant, "quantizer", expected, source):
        check_quant_state(q, tuple(expected[key].shape), f"{source}: layer '{name}'")
        if not rebuild:
            continue
        try:
            quantizer_from_state(q)
        except UserError as e:
            raise UserError(f"{source}: layer '{name}': {str(e)[:200]}") from None
        except Exception as e:  # a forged state may break a scheme's constructor in any way
            raise UserError(f"{source}: layer '{name}' has a broken quantizer state ({type(e).__name__})") from None


def check_quant_state(q, shape: tuple, where: str) -> None:
    """Structure of one quantizer state: a known scheme, bits, plain options, and what the scheme checks."""
    from .quant import SCHEMES

    if not isinstance(q, dict):
        raise UserError(f"{where}: quantizer state is not a mapping")
    scheme, bits = q.get("scheme"), q.get("bits")
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise UserError(f"{where}: unknown quantization scheme {str(scheme)[:40]!r}; known: {', '.join(SCHEMES.names())}")
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise UserError(f"{where}: bit width must be 1..8, got {str(bits)[:20]!r}")
    options = q.get("options", {})
    if not isinstance(options, dict) or not isinstance(q.get("per_channel", False), bool) or q.get("refit", "fast") not in ("fast", "exact", "none"):
        raise UserError(f"{where}: bad quantizer options (per_channel, refit)")
    if not all(isinstance(k, str) and isinstance(v, (str, int, float, bool, type(None))) for k, v in options.items()):
        raise UserError(f"{where}: quantizer options must be plain values")
    try:
        SCHEMES.get(scheme).check_state(q, shape)  # the scheme knows what its own state holds
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise UserError(f"{where}: {str(e)[:200] or type(e).__name__}") from None


def check_checkpoint(ckpt: dict, source, named: str | None = None, trust: bool = False) -> None:
    """Vet a checkpoint read from a file: its architecture, then every tensor against it."""
    for key, kind in (("arch_kwargs", dict), ("dataset", dict), ("masks", dict), ("quant", dict), ("metrics", dict), ("history", list)):
        if not isinstance(ckpt.get(key), kind):
            raise UserError(f"{source}: '{key}' must be a {kind.__name__}; the checkpoint is damaged")
    check_arch_from_file(ckpt.get("arch"), ckpt["arch_kwargs"], source, named, trust)
    if not isinstance(ckpt.get("structure", {}), dict):
        raise UserError(f"{source}: 'structure' must be a dict; the checkpoint is damaged")
    expected = expected_state(ckpt["arch"], ckpt["arch_kwargs"], source, ckpt.get("structure"))
    check_state(ckpt.get("state_dict"), expected, ckpt["arch"], source)
    check_masks(ckpt["masks"], expected, source)
    check_quant(ckpt["quant"], expected, source)
    options = ckpt["dataset"].get("options", {})
    if not isinstance(options, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, float, bool, type(None))) for k, v in options.items()):
        raise UserError(f"{source}: dataset.options must map names to plain values")
    shape = ckpt["dataset"].get("input_shape")
    if shape is not None and (not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(d, int) and 0 < d <= 4096 for d in shape)):
        raise UserError(f"{source}: dataset.input_shape must be 3 positive integers, got {str(shape)[:40]}")
    if math.prod(shape or [1]) > 1 << 24:
        raise UserError(f"{source}: dataset.input_shape {shape} is too large")
