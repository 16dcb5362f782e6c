"""The `shrink` stage: remove whole filters and neurons until the packed file fits a byte target (issue 12)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ..checkpoint import derive
from ..checks import MAX_EPOCHS, finite, whole
from ..errors import UserError
from ..surgery import model_from_checkpoint, update_checkpoint
from ..train import evaluate
from .base import Context, StageOutput, register_stage


@dataclass
class ShrinkParams:
    target_ratio: float | None = 400.0  # fp32 safetensors bytes (of the model before any structured pruning) / packed bytes
    target_bytes: int | None = None  # overrides target_ratio when set
    scheme: str = "ternary"  # what the file will store: candidates are quantized with it to measure their size
    options: dict = field(default_factory=dict)  # the scheme's options
    entropy: Literal["none", "huffman", "ans"] = "ans"  # how the result will be packed
    fp16: bool = True  # biases stored as fp16 in the pack (pack --fp16)
    channels: list = field(default_factory=lambda: [0.5, 0.6, 0.7, 0.8])  # fractions of every Conv's filters to try removing
    neurons: list = field(default_factory=lambda: [0.8, 0.85, 0.9, 0.93, 0.95])  # fractions of every hidden Linear's neurons
    recover_epochs: int = 1  # fine-tuning of each candidate before it is measured
    lr: float = 1e-3
    margin: float = 0.05  # candidates must fit (1 − margin) × target: QAT afterwards moves the codes' entropy a little
    importance: Literal["l1", "l2"] = "l1"
    seed: int = 0

    def __post_init__(self):
        if self.target_bytes is None and (self.target_ratio is None or not math.isfinite(self.target_ratio) or self.target_ratio <= 1):
            raise UserError(f"shrink needs target_ratio > 1 or target_bytes, got target_ratio {self.target_ratio}")
        if self.target_bytes is not None:
            whole(self.target_bytes, "target_bytes", 1, 1 << 62)
        for name in ("channels", "neurons"):
            values = getattr(self, name)
            if not isinstance(values, list) or not values or any(not isinstance(v, (int, float)) or not 0 <= v < 1 for v in values):
                raise UserError(f"shrink {name} must be a list of fractions in [0, 1), e.g. [0.5, 0.7]")
        whole(self.recover_epochs, "recover_epochs", 0, MAX_EPOCHS)
        finite(self.lr, "lr", 0.0, low_open=True)
        finite(self.margin, "margin", 0.0, 0.9, hint="a fraction, e.g. 0.05")
        whole(self.seed, "seed", 0, (1 << 63) - 1)
        if not isinstance(self.options, dict):
            raise UserError("shrink options must map the scheme's option names to values, e.g. {threshold: 0.7}")
        from ..quant import SCHEMES

        if self.scheme not in SCHEMES.names():
            raise UserError(f"unknown scheme '{self.scheme}': one of {', '.join(SCHEMES.names())}")


@register_stage("shrink", ShrinkParams, suffix="shrunk")
def shrink_stage(ckpt, p: ShrinkParams, ctx: Context) -> StageOutput:
    """Remove whole filters and neurons, chosen on validation, so that the packed file fits a byte target."""
    import copy
    import itertools

    from ..prune.shrink import prunable_units, search
    from ..quantize_model import quantize
    from ..report import reference_fp32_bytes, report_checkpoint
    from .prune import _example_inputs, recover

    if ckpt.get("quant") or ckpt.get("masks"):
        raise UserError("shrink starts from an uncompressed checkpoint (no masks, no quantizers): it is the first compression stage")
    val = ctx.validation(ckpt, "shrink")
    bundle = ctx.data_for(ckpt)
    model = model_from_checkpoint(ckpt).eval()
    fp32_bytes = reference_fp32_bytes(ckpt)
    target = p.target_bytes or fp32_bytes / p.target_ratio

    def brief_finetune(trial):
        recover(trial, ckpt, ctx, p.recover_epochs, p.lr, p.seed)

    def packed_bytes(trial):
        q = copy.deepcopy(trial)
        quantize(q, p.scheme, **p.options)
        return report_checkpoint(update_checkpoint(derive(ckpt), q), p.entropy, p.fp16)["packed_bytes"]

    def accuracy(trial):
        return evaluate(trial, val, device=ctx.device)["accuracy"]

    x = _example_inputs(ckpt)
    units = prunable_units(model, x)  # a model without Convs (or hidden Linears) has nothing of that kind to cut
    grid = list(itertools.product(sorted(set(p.channels)) if units["channel"] else [0.0], sorted(set(p.neurons)) if units["neuron"] else [0.0]))
    if grid == [(0.0, 0.0)]:
        raise UserError("shrink found no Conv filters or hidden Linear neurons to remove (only the output layer, which stays)")
    chosen, trials, fits = search(model, x, grid, target * (1 - p.margin), brief_finetune, accuracy, packed_bytes,
                                  p.importance, ctx.progress)
    out = update_checkpoint(derive(ckpt), chosen)
    metrics = evaluate(chosen, bundle.test, device=ctx.device)
    out["metrics"] = {**ckpt.get("metrics", {}), "accuracy": metrics["accuracy"], "loss": metrics["loss"]}
    result = {"chosen_on": f"validation ({len(val)} samples)", "target_bytes": int(target), "budget_bytes": int(target * (1 - p.margin)),
              "fp32_bytes": fp32_bytes, "scheme": p.scheme, "entropy": p.entropy, "fits": fits,
              "chosen": next(t for t in trials if t["chosen"]), "trials": trials,
              "structure": out.get("structure", {}), **metrics}
    if not fits:
        result["status"] = f"MISSED: no candidate packs within {int(target * (1 - p.margin)):,} bytes; the smallest was chosen"
        ctx.log(f"shrink: {result['status']}: add larger fractions to channels/neurons, or lower the target")
    return StageOutput(out, result)
