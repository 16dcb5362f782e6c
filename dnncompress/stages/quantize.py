"""The `quantize` stage: post-training fit of a scheme to every layer (fine-tune afterwards for QAT)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..checkpoint import derive
from ..checks import finite, whole
from ..errors import UserError
from ..quant import SCHEMES
from ..quantize_model import merge_override, quantize
from ..surgery import model_from_checkpoint, update_checkpoint
from ..train import evaluate
from .base import Context, StageOutput, register_stage


@dataclass
class QuantizeParams:
    scheme: str = "fourval"
    bits: int | None = None
    per_channel: bool = False
    rule: Literal["twn", "exact"] | None = None  # ternary only
    codebook: Literal["static", "dynamic"] | None = None  # codebook only (mode)
    zero: bool | None = None  # codebook only
    init: Literal["kmeans", "linear", "pow2"] | None = None  # codebook only
    grad: Literal["sum", "mean"] | None = None  # dynamic codebook only
    refit_every: int | None = None  # dynamic codebook only
    refit: Literal["fast", "exact", "none"] = "fast"  # scale re-fit per QAT step (fourval/ternary/asym)
    group_size: int = 0  # one scale per run of this many weights of a row (fourval/ternary/asym/codebook; 0: per layer or per channel)
    rotate: bool = False  # quantize in a randomized Hadamard frame (scalar schemes; unpruned layers)
    options: dict = field(default_factory=dict)  # any scheme's own options by name, e.g. pq: {d: 4, table: fp16}
    calibrate: int = 0  # calibrated PTQ (GPTQ-style, the scheme's own levels) on this many validation samples; 0: data-free
    # mixed precision: each layer's bits (codebook, pq) chosen so the quantized layers average at most this many bits per
    # weight, codes and tables counted, by each layer's effect on the output over the calibration samples
    target_bits: float | None = None
    # then, every code fixed, train per-row factors (folded into the tables), biases and norms for this many epochs so
    # the outputs match the unquantized model's on the calibration samples (no bytes added; needs calibrate)
    tune_epochs: int = 0
    include: list = field(default_factory=lambda: ["*"])
    exclude: list = field(default_factory=list)
    overrides: dict = field(default_factory=dict)
    evaluate: bool = True

    def __post_init__(self):
        SCHEMES.get(self.scheme)  # did-you-mean for unknown schemes
        from ..quant import make_quantizer

        make_quantizer(self.scheme, **self.quantizer_options())  # conflicts fail at validation, not after loading data
        whole(self.calibrate, "calibrate", 0, 1 << 24)
        whole(self.tune_epochs, "tune-epochs", 0, 1000)
        if self.tune_epochs and not self.calibrate:
            raise UserError("--tune-epochs trains against the model's own outputs on calibration samples: add --calibrate N")
        if self.target_bits is not None:
            finite(self.target_bits, "target-bits", 0.0, 32.0, low_open=True, hint="bits per weight, e.g. 4")
            if not self.calibrate:
                raise UserError("--target-bits chooses each layer's bits by its effect on the output: add --calibrate N (validation samples)")
        if not isinstance(self.options, dict) or not all(isinstance(k, str) for k in self.options):
            raise UserError("quantize options must map option names to values, e.g. {d: 4}")
        if not isinstance(self.overrides, dict):
            raise UserError("quantize overrides must map layer patterns to options, e.g. {conv1: {bits: 8}}")
        for pattern, extra in self.overrides.items():
            if not isinstance(extra, dict):
                raise UserError(f"override for '{pattern}' must be a mapping like {{bits: 8}}, got {extra!r}")
            opts = merge_override({"scheme": self.scheme, **self.quantizer_options()}, extra)
            if "codebook" in opts:
                opts["mode"] = opts.pop("codebook")
            if opts.pop("skip", False):
                continue
            try:
                make_quantizer(opts.pop("scheme"), **opts)
            except UserError as e:
                raise UserError(f"override for '{pattern}': {e}") from None
            except TypeError as e:
                raise UserError(f"override for '{pattern}': {e}") from None

    def quantizer_options(self) -> dict:
        opts = {"bits": self.bits, "per_channel": self.per_channel, "refit": self.refit, "rule": self.rule,
                "mode": self.codebook, "zero": self.zero, "init": self.init, "grad": self.grad, "refit_every": self.refit_every,
                "group_size": self.group_size or None, "rotate": self.rotate or None}
        return {**{k: v for k, v in opts.items() if v is not None}, **self.options}


@register_stage("quantize", QuantizeParams, suffix="q")
def quantize_stage(ckpt, p: QuantizeParams, ctx: Context) -> StageOutput:
    """Fit a quantization scheme to every layer; masks are respected, eval then sees the quantized model."""
    model = model_from_checkpoint(ckpt)
    if ckpt.get("quant"):
        raise UserError("this checkpoint is already quantized; quantize its unquantized parent instead")
    calibration = None
    if p.calibrate:
        val = ctx.validation(ckpt, "--calibrate")
        calibration = val.tensors[0][: p.calibrate]
    summary = quantize(model, p.scheme, p.include, p.exclude, p.overrides, calibration=calibration, target_bits=p.target_bits,
                       tune_epochs=p.tune_epochs, progress=ctx.progress, **p.quantizer_options())
    out = update_checkpoint(derive(ckpt), model)
    result = {"layers": summary}
    if calibration is not None:
        result["calibration"] = {"samples": len(calibration), "split": "validation"}
    if summary.tuning:
        result["tuning"] = {**summary.tuning, "split": f"validation ({len(calibration)} samples)"}
    if p.target_bits is not None:
        result["allocation"] = {"target_bits": p.target_bits, "chosen_on": f"validation ({len(calibration)} samples)",
                                "bits": {r["layer"]: r["bits"] for r in summary}}
    if p.evaluate:
        bundle = ctx.data_for(ckpt)
        metrics = evaluate(model, bundle.test, device=ctx.device)
        out["metrics"] = {**ckpt.get("metrics", {}), "accuracy": metrics["accuracy"], "loss": metrics["loss"]}
        result.update(metrics)
    return StageOutput(out, result)
