"""The `prune` stage: magnitude pruning at a fixed sparsity, or `auto` from a sensitivity scan."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..checkpoint import derive
from ..checks import finite, whole
from ..errors import UserError
from ..fileio import check_plot_path
from ..prune import apply_masks, mask_summary
from ..prune.magnitude import check_block, check_sparsity, layer_sparsities, magnitude_masks, overall_sparsity, overridden
from ..surgery import check_layer_patterns, compressible_layers, model_from_checkpoint, update_checkpoint
from ..train import evaluate
from .base import Context, StageOutput, register_stage

LARGE_DROP = 5.0  # points of test accuracy lost before fine-tuning that earn a warning


@dataclass
class PruneParams:
    sparsity: float | str = 0.9  # a fraction in [0, 1), or "auto"
    # global by default: one magnitude threshold over all layers spares small, sensitive layers (LeNet-5 at 0.9:
    # 96.9 % with global, 48.6 % with 0.9 in every layer including the 500-weight conv1)
    scope: Literal["layer", "global"] = "global"
    max_drop: float = 0.5  # auto: accuracy budget in points, before fine-tuning
    include: list = field(default_factory=lambda: ["*"])
    exclude: list = field(default_factory=list)
    overrides: dict = field(default_factory=dict)  # fnmatch pattern → sparsity
    block: int | dict = 1  # prune runs of this many contiguous weights of a row together (or {pattern: length})
    plot: str | None = None  # auto: PNG of the sensitivity curves
    # structured: remove whole Conv filters (channel) or Linear neurons (neuron) and what depends on them;
    # `sparsity` is then the fraction of units, or `flops` the fraction of FLOPs to remove
    structured: Literal["channel", "neuron"] | None = None
    flops: float | None = None
    importance: Literal["l1", "l2", "taylor"] = "l1"
    # structured auto: fine-tune each candidate this many epochs (training split) before its validation drop is
    # measured; 0 measures the drop right after the cut, which stops far short of what fine-tuning recovers
    recover_epochs: int = 0

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
        if self.flops is not None:
            finite(self.flops, "flops", 0.0, 1.0, hint="the fraction of FLOPs to remove, e.g. 0.5")
            if not self.structured:
                raise UserError("--flops is a structured pruning target: add --structured channel (or neuron)")
        whole(self.recover_epochs, "recover-epochs", 0, 1000)
        if self.recover_epochs and not (self.structured and self.sparsity == "auto"):
            raise UserError("--recover-epochs is for --structured ... --sparsity auto (it fine-tunes each candidate before measuring it)")
        if self.structured and (self.overrides or self.block != 1):
            raise UserError("structured pruning removes whole units: --override and --block are for unstructured pruning")


@register_stage("prune", PruneParams, suffix="pruned")
def prune_stage(ckpt, p: PruneParams, ctx: Context) -> StageOutput:
    """Prune Conv and Linear weights by magnitude; masks go into the checkpoint and stay applied."""
    if p.structured:
        return structured_stage(ckpt, p, ctx)
    model = model_from_checkpoint(ckpt)
    check_layer_patterns(model, p.include, p.exclude, p.overrides, p.block)
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
        def val_accuracy():
            return evaluate(model, val, device=ctx.device)["accuracy"]

        auto = auto_sparsity(layers, val_accuracy, p.max_drop, progress=ctx.progress, block=p.block)
        targets = auto["targets"]
        result.update({"auto": {"chosen_on": f"validation ({len(val)} samples)", "baseline": auto["baseline"],
                                "measured_drop": auto["measured_drop"], "max_drop": p.max_drop,
                                "targets": targets, "curves": {n: [list(x) for x in c] for n, c in auto["curves"].items()}}})
        if p.plot:
            plot_curves(auto["curves"], p.plot, targets)
    else:
        targets = layer_sparsities(layers, p.sparsity, p.overrides)
    # auto's allocation is per layer: written with the per-layer masks it measured, whatever the scope
    masks = magnitude_masks(layers, targets, "layer" if p.sparsity == "auto" else p.scope, p.block, pinned=overridden(layers, p.overrides))
    apply_masks(layers, masks)
    if p.sparsity == "auto":  # the drop of what is written, on the split that chose it
        result["auto"]["measured_drop"] = auto["baseline"] - val_accuracy()
        result["auto"]["scope"] = "per-layer allocation" + (" (auto ignores --scope global)" if p.scope == "global" else "")
    result["layers"] = mask_summary(masks)
    result["overall_sparsity"] = overall_sparsity(masks)
    out = update_checkpoint(derive(ckpt), model)
    if ctx.data_name or (ckpt.get("dataset") or {}).get("name"):
        metrics = evaluate(model, ctx.data_for(ckpt).test, device=ctx.device)
        out["metrics"] = {**ckpt.get("metrics", {}), "accuracy": metrics["accuracy"], "loss": metrics["loss"]}
        result.update(metrics)
        _warn_on_drop(ckpt, metrics, result)
    return StageOutput(out, result)


def _warn_on_drop(ckpt: dict, metrics: dict, result: dict) -> None:
    before = (ckpt.get("metrics") or {}).get("accuracy")
    if before is not None and before - metrics["accuracy"] > LARGE_DROP:
        result["warning"] = (f"pruning took test accuracy from {before:.1f} % to {metrics['accuracy']:.1f} %: lower --sparsity, "
                             f"prune with --sparsity auto --max-drop 0.5, or fine-tune next")


def _example_inputs(ckpt: dict):
    import torch

    from ..models import default_input_shape

    shape = (ckpt.get("dataset") or {}).get("input_shape") or default_input_shape(ckpt.get("arch") or "")
    return torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))


def _taylor_loss(ckpt: dict, ctx: Context):
    """Cross-entropy on 4 training batches of 64: what gradient × weight importance is measured on."""
    import torch
    import torch.nn.functional as F

    train = ctx.data_for(ckpt).train
    g = torch.Generator().manual_seed(ctx.seed)
    idx = torch.randperm(len(train), generator=g)[:256]
    x, y = train[idx][:2]

    def loss(model):
        model.train()
        return sum(F.cross_entropy(model(x[i : i + 64]), y[i : i + 64]) for i in range(0, len(idx), 64)) / 4

    return loss


GRID_UNITS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
GRID_UNITS_RECOVERED = GRID_UNITS + (0.93, 0.95, 0.97)  # fine-tuned candidates survive far deeper cuts


def recover(trial, ckpt: dict, ctx: Context, epochs: int, lr: float = 1e-3, seed: int | None = None) -> None:
    """Fine-tune a pruned candidate in place on the training split (cosine schedule), as the next stage would, so
    that a choice is made on what fine-tuning recovers rather than on the drop right after the cut (structured
    auto with --recover-epochs, and shrink)."""
    from ..train import TrainSettings, train

    bundle = ctx.data_for(ckpt)
    if epochs:
        train(trial, bundle.train, TrainSettings(epochs=epochs, lr=lr, schedule="cosine", seed=ctx.seed if seed is None else seed,
                                                 device=ctx.device, augment=bundle.augment))
    trial.cpu().eval()


def structured_stage(ckpt, p: PruneParams, ctx: Context) -> StageOutput:
    """Structured pruning: the model physically shrinks; the checkpoint records the smaller sizes."""
    import copy

    from ..prune.structured import structured_prune

    if ckpt.get("masks") or ckpt.get("quant"):
        raise UserError("structured pruning goes first: run it on a checkpoint without masks or quantizers, then prune or quantize the result")
    model = model_from_checkpoint(ckpt)
    check_layer_patterns(model, p.include, p.exclude)
    x = _example_inputs(ckpt)
    loss = _taylor_loss(ckpt, ctx) if p.importance == "taylor" else None
    kw = dict(unit=p.structured, importance=p.importance, scope=p.scope, include=p.include, exclude=p.exclude, loss_fn=loss)
    result: dict = {"structured": p.structured, "importance": p.importance}
    if p.sparsity == "auto":  # the largest fraction of units whose validation drop (before fine-tuning) fits the budget
        try:
            val = ctx.validation(ckpt, "--sparsity auto")
        except UserError as e:
            raise UserError(f"--structured --sparsity auto needs data to choose on: {e}") from None
        reference = model
        if p.recover_epochs:  # the same fine-tuning on the unpruned model: the drop is the cut's, not the extra training's
            reference = copy.deepcopy(model)
            recover(reference, ckpt, ctx, p.recover_epochs)
        base = evaluate(reference.eval(), val, device=ctx.device)["accuracy"]
        chosen, trials, misses = None, [], 0
        for f in (GRID_UNITS_RECOVERED if p.recover_epochs else GRID_UNITS):
            trial = copy.deepcopy(model)
            info = structured_prune(trial, x, amount=f, **kw)
            if p.recover_epochs:
                recover(trial, ckpt, ctx, p.recover_epochs)
            drop = base - evaluate(trial.eval(), val, device=ctx.device)["accuracy"]
            trials.append({"units_removed": f, "flops_removed": 1 - info["flops_after"] / max(info["flops_before"], 1), "val_drop": drop})
            if drop > p.max_drop:
                misses += 1
                # right after the cut the drop only grows with the fraction: the first miss ends the scan; a
                # fine-tuned candidate's drop is noisy (one validation image is 0.25 pt on MNIST's 400), so two in a row
                if misses >= (2 if p.recover_epochs else 1):
                    break
                continue
            misses = 0
            chosen = (trial, info, drop, f)
        if chosen is None:  # like unstructured auto: nothing fits the budget, so nothing is removed (and it is said)
            from ..prune.structured import flops_of

            ops, n = flops_of(model, x), sum(t.numel() for t in model.parameters())
            chosen = (model, {"flops_before": ops, "flops_after": ops, "params_before": n, "params_after": n, "removed": {}}, 0.0, 0.0)
            result["warning"] = (f"even removing {GRID_UNITS[0]:.0%} of the units costs more than {p.max_drop} pt on validation: "
                                 f"nothing was removed; raise --max-drop or fine-tune between smaller steps")
        model, info, drop, _ = chosen
        result["auto"] = {"chosen_on": f"validation ({len(val)} samples)", "baseline": base, "measured_drop": drop,
                          "max_drop": p.max_drop, "recover_epochs": p.recover_epochs, "trials": trials}
    else:
        info = structured_prune(model, x, amount=None if p.flops is not None else p.sparsity, flops=p.flops, **kw)
    out = update_checkpoint(derive(ckpt), model)  # the model carries its structure against the architecture
    result.update({k: info[k] for k in ("flops_before", "flops_after", "params_before", "params_after", "removed")})
    result["flops_removed"] = 1 - info["flops_after"] / max(info["flops_before"], 1)
    result["layers"] = [{"layer": n, "params": 0, "kept": 0, "sparsity": 0.0, "sizes": s} for n, s in out.get("structure", {}).items()]
    result["overall_sparsity"] = 1 - info["params_after"] / max(info["params_before"], 1)
    if ctx.data_name or (ckpt.get("dataset") or {}).get("name"):
        metrics = evaluate(model, ctx.data_for(ckpt).test, device=ctx.device)
        out["metrics"] = {**ckpt.get("metrics", {}), "accuracy": metrics["accuracy"], "loss": metrics["loss"]}
        result.update(metrics)
        _warn_on_drop(ckpt, metrics, result)
    return StageOutput(out, result)
