"""Quantize any nn.Module: attach a fitted quantizer to every matching layer's weight.

This is model surgery, so it lives beside `surgery.py`; `quant/` stays pure tensor math and
imports nothing from the model side (no import cycle)."""
from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch
import torch.nn as nn

from . import tune as tuning
from .calibrate import calibrate
from .errors import UserError
from .quant import make_quantizer
from .surgery import attach, check_layer_patterns, compressible_layers, compression_of, shadow_weight, sweep_before_forward


def _options_for(name: str, base: dict, overrides: dict | None) -> dict:
    """Base options updated by every override whose fnmatch pattern matches the layer name, in order.
    An override that switches to another scheme starts from that scheme's defaults (the base scheme's
    bits and options mean nothing to it)."""
    opts = dict(base)
    for pattern, extra in (overrides or {}).items():
        if fnmatch.fnmatchcase(name, pattern):
            if not isinstance(extra, dict):
                raise UserError(f"override for '{pattern}' must be a mapping like {{bits: 8}}")
            opts = merge_override(opts, extra)
    return opts


def merge_override(opts: dict, extra: dict) -> dict:
    """One override applied to a layer's options (a switch of scheme drops the old scheme's options)."""
    if extra.get("scheme", opts["scheme"]) != opts["scheme"]:
        return dict(extra)
    return {**opts, **extra}


def quantize(
    model: nn.Module,
    scheme: str = "fourval",
    include: Iterable[str] = ("*",),
    exclude: Iterable[str] = (),
    overrides: dict | None = None,
    calibration=None,
    calibration_options: dict | None = None,
    target_bits: float | None = None,
    bits_choices: Iterable[int] | None = None,
    tune_epochs: int = 0,
    tune_lr: float = 1e-3,
    progress=None,
    **options,
) -> Summary:
    """Put a fitted quantizer on each Conv/Linear (any module with a 2-D+ weight) matching include/exclude.

    `overrides` maps fnmatch patterns of module names to option dicts (e.g. {"conv1": {"bits": 8}});
    an override may also change the scheme, or set `skip: true` to leave a layer in fp32.
    Existing pruning masks are respected. `calibration` (a tensor of inputs, a list of batches or a
    DataLoader of (x, y); a dict of tensors is passed as keyword inputs) turns on calibrated PTQ: each
    layer minimizes its output error on them (`dnncompress.calibrate`; `calibration_options` go to it:
    damp, refit, weighting). `target_bits` (codebook, pq: schemes with a bit width) chooses each layer's bits
    from `bits_choices` so that the quantized layers average at most that many bits per weight, codes and
    tables counted, least harm to the model's output on the calibration data first (`dnncompress.mixed`); a
    layer whose override sets its bits keeps them. `tune_epochs` (needs calibration) then trains, with every code
    fixed, per-row factors folded into the level tables, the quantized layers' biases and the norms, so the
    model's outputs match its own outputs from before quantization on the calibration data (`dnncompress.tune`;
    no bytes added). Returns the per-layer summary (a list; its `.tuning` holds the tuning's own summary).
    """
    if "codebook" in options:  # the CLI's name for the codebook mode
        options["mode"] = options.pop("codebook")
    check_layer_patterns(model, include, exclude, overrides)
    layers = compressible_layers(model, include, exclude)
    if not layers:
        raise UserError("no layer matched: quantize needs modules with a 2-D+ weight (check include/exclude patterns)")
    batches = calibration_batches(calibration, next(model.parameters()).device) if calibration is not None else None
    chunks = targets = None
    if tune_epochs:
        if batches is None:
            raise UserError("tune_epochs trains against the model's own outputs on calibration data: it needs calibration "
                            "(--calibrate N, or calibration=... in Python)")
        chunks = tuning.minibatches(batches)
        targets = tuning.reference_outputs(model, chunks)  # before any layer is quantized: the teacher
    if target_bits is not None:
        overrides = _allocated(model, layers, scheme, options, overrides, batches, target_bits, bits_choices, progress)
    quantized = []
    for name, module in layers.items():
        opts = _options_for(name, {"scheme": scheme, **options}, overrides)
        if opts.pop("skip", False):
            continue
        q = make_quantizer(opts.pop("scheme"), **opts)
        comp = compression_of(module)
        mask = comp.mask if comp is not None else None
        w = shadow_weight(module)
        q.to(w.device).fit(w.detach(), mask)
        attach(module, quantizer=q)
        quantized.append(name)
    errors = {}
    if batches is not None:
        errors = {r.pop("layer"): r for r in calibrate(model, batches, **(calibration_options or {}))}
    tuned = tuning.tune(model, chunks, targets, tune_epochs, tune_lr, progress=progress) if tune_epochs else {}
    sweep_before_forward(model)
    return Summary([{**layer_summary(name, layers[name]), **errors.get(name, {})} for name in quantized], tuned)


class Summary(list):
    """quantize()'s per-layer rows; `tuning` holds the tuning summary (empty when it did not run)."""

    def __init__(self, rows, tuning: dict | None = None):
        super().__init__(rows)
        self.tuning = tuning or {}


def _allocated(model, layers, scheme, options, overrides, batches, target_bits, bits_choices, progress) -> dict:
    """The overrides with every free layer's bits chosen under the byte budget `target_bits` implies."""
    import glob
    import math

    from . import mixed
    from .pack.layers import storage_bytes

    if not isinstance(target_bits, (int, float)) or not math.isfinite(target_bits) or target_bits <= 0:
        raise UserError(f"target_bits must be a positive number of bits per weight, e.g. 4, got {target_bits!r}")
    if batches is None:
        raise UserError("target_bits chooses each layer's bits by its effect on the model's output: it needs calibration data "
                        "(--calibrate N, or calibration=... in Python)")
    choices = tuple(sorted(set(bits_choices or mixed.BITS)))
    per_layer = {n: _options_for(n, {"scheme": scheme, **options}, overrides) for n in layers}
    fixed = {n for n in layers if any(fnmatch.fnmatchcase(n, p) and "bits" in (e or {}) for p, e in (overrides or {}).items())}
    free, fixed_bytes = {}, 0
    for name, opts in per_layer.items():
        if opts.get("skip"):
            continue
        rest = {k: v for k, v in opts.items() if k != "scheme"}
        if name in fixed:
            w = shadow_weight(layers[name]).detach()
            comp = compression_of(layers[name])
            mask = comp.mask if comp is not None else None
            fixed_bytes += storage_bytes(make_quantizer(opts["scheme"], **rest).fit(w, mask).storage(w, mask))
            continue
        try:
            widths = {make_quantizer(opts["scheme"], **{**rest, "bits": b}).bits for b in (choices[0], choices[-1])}
        except (UserError, TypeError):
            widths = set()
        if widths != {choices[0], choices[-1]}:
            raise UserError(f"target_bits picks a bit width per layer, and '{opts['scheme']}' has a fixed one: use codebook or pq")
        free[name] = layers[name]
    total = sum(shadow_weight(layers[n]).numel() for n, o in per_layer.items() if not o.get("skip"))
    budget = target_bits * total / 8 - fixed_bytes
    table = mixed.scan(model, free, per_layer, batches, choices, progress)
    bits, _ = mixed.allocate(table, budget)
    return {**(overrides or {}), **{glob.escape(n): {"bits": b} for n, b in bits.items()}}


def calibration_batches(data, device) -> list:
    """Input batches from a tensor (one batch: calibration joins its batches anyway), a dict of tensors
    (a tokenizer's output: keyword inputs), a list of either, or a DataLoader/iterable of (x, y) or of dicts."""
    if isinstance(data, torch.Tensor):
        return [data.to(device)]
    if isinstance(data, dict):
        data = [data]
    out = []
    try:
        for item in data:
            x = item[0] if isinstance(item, (tuple, list)) else item
            if isinstance(x, dict) and x and all(isinstance(v, torch.Tensor) for v in x.values()):
                out.append({k: v.to(device) for k, v in x.items()})
            elif isinstance(x, torch.Tensor):
                out.append(x.to(device))
            else:
                raise TypeError(type(x).__name__)
    except TypeError as e:
        raise UserError(f"calibration data must be a tensor of inputs, a dict of input tensors, a list of them or a "
                        f"DataLoader of (x, y), got {e}") from None
    if not out:
        raise UserError("calibration data is empty")
    return out


@torch.no_grad()
def layer_summary(name: str, module: nn.Module) -> dict:
    comp = compression_of(module)
    q = comp.quantizer
    w = shadow_weight(module).detach().float()
    mask = comp.mask
    wm = w * mask if mask is not None else w
    was = q.training
    q.eval()
    wq = q(w, mask)
    q.train(was)
    err = float((wq - wm).norm() / wm.norm().clamp_min(1e-12))
    return {
        "layer": name, "scheme": q.describe(), "bits": q.bits, "per_channel": q.per_channel,
        "params": w.numel(), "nonzeros": int((wq != 0).sum()),
        "distinct_values": int(torch.unique(wq).numel()),
        **q.summary(),
        "rel_error": err,
    }


def quantization_summary(model: nn.Module) -> list[dict]:
    return [layer_summary(n, m) for n, m in model.named_modules() if (c := compression_of(m)) is not None and c.quantizer is not None]
