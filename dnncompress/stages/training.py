"""The `train` and `finetune` stages (finetune is also QAT when the checkpoint carries quantizers)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..checkpoint import derive, new_checkpoint
from ..checks import finite, training_numbers, whole
from ..data import VAL_SPLIT
from ..errors import UserError
from ..models import build_model
from ..surgery import model_from_checkpoint, update_checkpoint
from ..train import TrainSettings, evaluate, seed_everything, train
from .base import Context, StageOutput, register_stage


def _check_common(p) -> None:
    training_numbers(p)


@dataclass
class TrainParams:
    arch: str | None = None
    arch_kwargs: dict = field(default_factory=dict)
    epochs: int = 3
    lr: float = 2e-3
    batch_size: int = 32
    optimizer: Literal["adam", "sgd"] = "adam"
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self):
        _check_common(self)
        if self.epochs == 0:
            raise UserError("epochs must be at least 1 for train (0 would write an untrained model); "
                            "to compress a model you already have, start from its checkpoint")


@dataclass
class AGPParams:
    """Gradual pruning during fine-tuning: s_t = s_f + (s_i − s_f)(1 − (t − t0)/(nΔt))³."""

    final: float = 0.9
    initial: float = 0.0
    start: float = 0.0  # fraction of the fine-tuning steps where pruning starts (t0)
    end: float = 0.75  # fraction where it reaches `final` (t0 + nΔt)
    every: int = 10  # Δt in steps
    scope: Literal["layer", "global"] = "layer"
    overrides: dict = field(default_factory=dict)  # fnmatch pattern → final sparsity
    initial_overrides: dict = field(default_factory=dict)  # fnmatch pattern → initial sparsity (where a layer already is)
    include: list = field(default_factory=lambda: ["*"])
    exclude: list = field(default_factory=list)

    def __post_init__(self):
        from ..prune.magnitude import check_sparsity

        check_sparsity(self.final, "agp.final")
        check_sparsity(self.initial, "agp.initial")
        finite(self.start, "agp.start", 0, 1)
        finite(self.end, "agp.end", 0, 1)
        if not 0 <= self.start < self.end <= 1:
            raise UserError("agp.start and agp.end are fractions with 0 ≤ start < end ≤ 1")
        whole(self.every, "agp.every", 1, 1 << 30)
        for pattern, value in self.overrides.items():
            check_sparsity(value, f"agp.overrides.{pattern}")
        for pattern, value in self.initial_overrides.items():
            check_sparsity(value, f"agp.initial_overrides.{pattern}")


@dataclass
class FinetuneParams:
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 32
    optimizer: Literal["adam", "sgd"] = "adam"
    schedule: Literal["onecycle", "cosine", "constant"] = "cosine"
    weight_decay: float = 0.0
    l1: float = 0.0  # L1 penalty on compressed weights (seed 001 tables 2)
    l2: float = 0.0  # L2 penalty on compressed weights (seed 001 tables 3)
    agp: AGPParams | None = None  # gradual pruning while fine-tuning
    seed: int = 0

    def __post_init__(self):
        _check_common(self)
        for name in ("l1", "l2"):
            finite(getattr(self, name), name, 0.0, hint="≥ 0 (l1 and l2 penalties)")


def _settings(p, ctx: Context, augment: bool) -> TrainSettings:
    return TrainSettings(
        epochs=p.epochs, lr=p.lr, batch_size=p.batch_size, optimizer=p.optimizer, schedule=p.schedule,
        weight_decay=p.weight_decay, seed=p.seed, device=ctx.device, augment=augment,
    )


def _dataset_record(bundle, ctx: Context) -> dict:
    return {"name": bundle.name, "data_dir": ctx.data_dir, "input_shape": list(bundle.input_shape), "num_classes": bundle.num_classes,
            "val_split": ctx.val_split if ctx.val_split is not None else VAL_SPLIT, "options": dict(ctx.data_options)}


@register_stage("train", TrainParams, suffix="base", needs_input=False)
def train_stage(ckpt, p: TrainParams, ctx: Context) -> StageOutput:
    """Train an architecture from scratch on a dataset."""
    if not p.arch:
        raise UserError("train needs an architecture (model.arch in the config, or ARCH on the command line)")
    bundle = ctx.data_for({"dataset": {"name": ctx.data_name or "mnist"}}, arch=p.arch)
    kwargs = {**bundle.arch_kwargs(), **p.arch_kwargs}
    seed_everything(p.seed)  # weight init depends on the seed, not on what ran before
    model = build_model(p.arch, kwargs)
    stats = train(model, bundle.train, _settings(p, ctx, bundle.augment), progress=ctx.progress, snapshots=ctx.snapshots("train"))
    metrics = evaluate(model, bundle.test, device=ctx.device)
    out = new_checkpoint(p.arch, kwargs, model.state_dict(), _dataset_record(bundle, ctx))
    out["metrics"] = {"accuracy": metrics["accuracy"], "loss": metrics["loss"], "fp32_accuracy": metrics["accuracy"]}
    return StageOutput(out, {**metrics, **stats})


class Penalty:
    """L1/L2 penalty on the shadow weights of compressed layers (or all weights when none are)."""

    def __init__(self, model, l1: float, l2: float):
        from ..surgery import compressible_layers, shadow_weight

        self.weights = [shadow_weight(m) for m in compressible_layers(model).values()]
        self.l1, self.l2 = l1, l2

    def penalty(self, model):
        total = 0.0
        for w in self.weights:
            if self.l1:
                total = total + self.l1 * w.abs().sum()
            if self.l2:
                total = total + self.l2 * w.pow(2).sum()
        return total


def finetune_model(ckpt: dict, p: FinetuneParams, ctx: Context, extra_hooks=(), phase: str = "finetune") -> tuple[dict, dict]:
    """Fine-tune (QAT when quantizers are attached) and return the updated checkpoint and result."""
    bundle = ctx.data_for(ckpt)
    model = model_from_checkpoint(ckpt)
    hooks = list(extra_hooks)
    if p.agp is not None:
        from ..prune import AGPHook
        from ..prune.magnitude import layer_sparsities
        from ..surgery import compressible_layers

        layers = compressible_layers(model, p.agp.include, p.agp.exclude)
        final = layer_sparsities(layers, p.agp.final, p.agp.overrides)
        initial = layer_sparsities(layers, p.agp.initial, p.agp.initial_overrides)
        hooks.append(AGPHook(layers, final, initial, p.agp.start, p.agp.end, p.agp.every, p.agp.scope))
    if p.l1 or p.l2:
        hooks.append(Penalty(model, p.l1, p.l2))
    hooks += _model_hooks(model)
    stats = train(model, bundle.train, _settings(p, ctx, bundle.augment), hooks=hooks, progress=ctx.progress, snapshots=ctx.snapshots(phase))
    metrics = evaluate(model, bundle.test, device=ctx.device)
    out = update_checkpoint(derive(ckpt), model.cpu())
    out["metrics"] = {**ckpt.get("metrics", {}), "accuracy": metrics["accuracy"], "loss": metrics["loss"]}
    if out["masks"]:
        from ..prune.magnitude import overall_sparsity

        stats["overall_sparsity"] = overall_sparsity(out["masks"])
    return out, {**metrics, **stats}


def _model_hooks(model):
    """Per-step hooks that attached quantizers ask for (periodic codebook re-fit; state a resume must restore)."""
    from ..surgery import compression_of

    hooks = []
    for module in model.modules():
        comp = compression_of(module)
        if comp is not None and comp.quantizer is not None and (hasattr(comp.quantizer, "on_step") or hasattr(comp.quantizer, "run_state")):
            hooks.append(comp.quantizer)
    return hooks


@register_stage("finetune", FinetuneParams, suffix="ft")
def finetune_stage(ckpt, p: FinetuneParams, ctx: Context) -> StageOutput:
    """Fine-tune a checkpoint; masks stay applied and quantizers make it quantization-aware (QAT)."""
    out, result = finetune_model(ckpt, p, ctx)
    return StageOutput(out, result)
