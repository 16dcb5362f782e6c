"""The `prune` stage: magnitude pruning at a fixed sparsity, or `auto` from a sensitivity scan."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..checkpoint import derive
from ..checks import finite
from ..errors import UserError
from ..fileio import check_plot_path
from ..prune import apply_masks, mask_summary
from ..prune.magnitude import check_block, check_sparsity, layer_sparsities, magnitude_masks, overall_sparsity
from ..surgery import compressible_layers, model_from_checkpoint, update_checkpoint
from ..train import evaluate
from .base import Context, StageOutput, register_stage


@dataclass
class PruneParams:
    sparsity: float | str = 0.9  # a fraction in [0, 1), or "auto"
    scope: Literal["layer", "global"] = "layer"
    max_drop: float = 0.5  # auto: accuracy budget in points, before fine-tuning
    include: list = field(default_factory=lambda: ["*"])
    exclude: list = field(default_factory=list)
    overrides: dict = field(default_factory=dict)  # fnmatch pattern → sparsity
    block: int | dict = 1  # prune runs of this many contiguous weights of a row together (or {pattern: length})
    plot: str | None = None  # auto: PNG of the sensitivity curves

    def __post_init__(self):
        if isinstance(self.sparsity, str):
            if self.sparsity != "auto":
                try:
                    self.sparsity = float(self.sparsity)
                except ValueError:
                    raise UserError(f"sparsity must be a fraction in [0, 1) or 'auto', got '{self.sparsity}'") from None
        if self.sparsity != "auto":
            check_sparsity(self.sparsity)
        finite(self.max_drop, "max-drop", 0.0, hint="≥ 0 points")
        if self.plot is not None:
            check_plot_path(self.plot, "plot")
        if not isinstance(self.overrides, dict):
            raise UserError("prune overrides must map layer patterns to sparsities, e.g. {conv1: 0.5}")
        for pattern, value in self.overrides.items():
            check_sparsity(value, f"sparsity of '{pattern}'")
        if isinstance(self.block, dict) and not all(isinstance(k, str) for k in self.block):
            raise UserError("prune block must map layer patterns to lengths, e.g. {fc1: 4}")
        for value in (self.block.values() if isinstance(self.block, dict) else [self.block]):
            check_block(value)  # each length checked here, not after loading the data


@register_stage("prune", PruneParams, suffix="pruned")
def prune_stage(ckpt, p: PruneParams, ctx: Context) -> StageOutput:
    """Prune Conv and Linear weights by magnitude; masks go into the checkpoint and stay applied."""
    model = model_from_checkpoint(ckpt)
    layers = compressible_layers(model, p.include, p.exclude)
    if not layers:
        raise UserError("no layer matched: check include/exclude patterns")
    result: dict = {}
    if p.sparsity == "auto":
        from ..prune.sensitivity import auto_sparsity, plot_curves

        try:
            val = ctx.validation(ckpt, "--sparsity auto")
        except UserError as e:
            raise UserError(f"--sparsity auto needs data for the sensitivity scan: {e}") from None
        model.eval()
        auto = auto_sparsity(layers, lambda: evaluate(model, val, device=ctx.device)["accuracy"], p.max_drop, progress=ctx.progress)
        targets = auto["targets"]
        result.update({"auto": {"chosen_on": f"validation ({len(val)} samples)", "baseline": auto["baseline"],
                                "measured_drop": auto["measured_drop"], "max_drop": p.max_drop,
                                "targets": targets, "curves": {n: [list(x) for x in c] for n, c in auto["curves"].items()}}})
        if p.plot:
            plot_curves(auto["curves"], p.plot, targets)
    else:
        targets = layer_sparsities(layers, p.sparsity, p.overrides)
    masks = magnitude_masks(layers, targets, p.scope, p.block)
    apply_masks(layers, masks)
    result["layers"] = mask_summary(masks)
    result["overall_sparsity"] = overall_sparsity(masks)
    out = update_checkpoint(derive(ckpt), model)
    if ctx.data_name or (ckpt.get("dataset") or {}).get("name"):
        metrics = evaluate(model, ctx.data_for(ckpt).test, device=ctx.device)
        out["metrics"] = {**ckpt.get("metrics", {}), "accuracy": metrics["accuracy"], "loss": metrics["loss"]}
        result.update(metrics)
    return StageOutput(out, result)
