"""The `joint` stage (seed 002): choose per-layer sparsity and bits under a size target, then train them in."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from ..checkpoint import derive
from ..checks import MAX_EPOCHS, finite, whole
from ..errors import UserError
from ..prune import joint
from ..surgery import compressible_layers, model_from_checkpoint, update_checkpoint, weight_key
from ..train import evaluate
from .base import Context, StageOutput, register_stage
from .training import AGPParams, FinetuneParams, finetune_model


@dataclass
class JointParams:
    target_ratio: float | None = 60.0  # fp32 safetensors bytes / packed bytes
    target_bytes: int | None = None  # overrides target_ratio when set
    sparsities: list = field(default_factory=lambda: list(joint.SPARSITIES))
    bits: list = field(default_factory=lambda: list(joint.BITS))
    prune_epochs: int = 3  # gradual (AGP) pruning to the chosen sparsities
    qat_epochs: int = 2  # codebook QAT at the chosen bit widths
    lr: float = 1e-3
    codebook: Literal["static", "dynamic"] = "dynamic"
    entropy: Literal["none", "huffman", "ans"] = "huffman"  # how the result will be packed (for its measured size)
    include: list = field(default_factory=lambda: ["*"])
    exclude: list = field(default_factory=list)
    seed: int = 0
    retries: int = 2  # when the packed file misses the target: tighten the budget by the excess and train again
    # the allocation re-run between fine-tuning rounds (seed 002 learns it while training): each round scans the model
    # as the previous round left it, chooses again under the target, and prunes gradually from where each layer is to
    # its new sparsity for prune_epochs / rounds epochs; 1 is the one-shot scan
    rounds: int = 1
    # structured candidates in the same search: fractions of every Conv's filters (channels) and hidden Linear's neurons
    # to remove; each pair is cut from a copy, fine-tuned recover_epochs, scanned and allocated under the target, and the
    # pair whose validation accuracy after its predicted drops is highest wins (empty lists: no structured pruning)
    channels: list = field(default_factory=list)
    neurons: list = field(default_factory=list)
    recover_epochs: int = 1

    def __post_init__(self):
        if self.target_bytes is None and (self.target_ratio is None or not math.isfinite(self.target_ratio) or self.target_ratio <= 1):
            raise UserError(f"joint needs target_ratio > 1 or target_bytes, got target_ratio {self.target_ratio}")
        finite(self.lr, "lr", 0.0, low_open=True)
        whole(self.seed, "seed", 0, (1 << 63) - 1)
        whole(self.retries, "retries", 0, 10)
        whole(self.rounds, "rounds", 1, 10)
        whole(self.recover_epochs, "recover_epochs", 0, MAX_EPOCHS)
        for name in ("channels", "neurons"):
            values = getattr(self, name)
            if not isinstance(values, list) or any(not isinstance(v, (int, float)) or not 0 <= v < 1 for v in values):
                raise UserError(f"joint {name} must be a list of fractions in [0, 1), e.g. [0.0, 0.5, 0.7]")
        if self.rounds > 1 and self.prune_epochs < self.rounds:
            raise UserError(f"joint rounds={self.rounds} needs at least one prune epoch a round: set prune_epochs ≥ {self.rounds}")
        if self.target_bytes is not None and self.target_bytes <= 0:
            raise UserError("target_bytes must be > 0")
        if not self.bits or any(not isinstance(b, int) or not 2 <= b <= 8 for b in self.bits):
            raise UserError("joint bits must be integers in 2..8")
        if not self.sparsities or any(not isinstance(s, (int, float)) or not 0 <= s < 1 for s in self.sparsities):
            raise UserError("joint sparsities must be fractions in [0, 1)")
        whole(self.prune_epochs, "prune_epochs", 0, MAX_EPOCHS)
        whole(self.qat_epochs, "qat_epochs", 0, MAX_EPOCHS)


@register_stage("joint", JointParams, suffix="joint")
def joint_stage(ckpt, p: JointParams, ctx: Context) -> StageOutput:
    """Search per-layer sparsity and bit-width under a size target, then AGP-prune and QAT them in."""
    from ..report import reference_fp32_bytes, report_checkpoint

    if ckpt.get("quant") or ckpt.get("masks"):
        raise UserError("joint starts from an uncompressed checkpoint (no masks, no quantizers)")
    val = ctx.validation(ckpt, "joint")
    model = model_from_checkpoint(ckpt).eval()
    base_test = evaluate(model, ctx.data_for(ckpt).test, device=ctx.device)["accuracy"]  # reported like every later accuracy
    layers = compressible_layers(model, p.include, p.exclude)
    # after structured pruning the ratio is against the model before it, as report measures it
    fp32_bytes = reference_fp32_bytes(ckpt)
    compressed_keys = {weight_key(n) for n in layers}
    leftovers = joint.leftover_bytes(ckpt["state_dict"], compressed_keys)
    target = p.target_bytes or fp32_bytes / p.target_ratio
    sizes = {n: m.weight.numel() for n, m in layers.items()}
    overhead = joint.container_budget(len(layers))
    budget, attempts, rounds = target - leftovers - overhead, [], []
    start, scanned, structured = ckpt, None, None  # start: where pruning starts (the input, a structured cut, earlier rounds)
    if p.channels or p.neurons:  # structured and unstructured in one search: the cut with the best predicted accuracy
        start, scanned, structured = ctx.memo("structure", lambda: _structure(ckpt, model, p, ctx, val, target, overhead))
        model = model_from_checkpoint(start).eval()
        layers = compressible_layers(model, p.include, p.exclude)
        sizes = {n: m.weight.numel() for n, m in layers.items()}
        leftovers = joint.leftover_bytes(start["state_dict"], {weight_key(n) for n in layers})
        budget = target - leftovers - overhead
    for r in range(p.rounds - 1):  # every round but the last: scan the current model, choose, prune part of the way
        start, rows = _round(start, p, ctx, val, budget, sizes, r, scanned if r == 0 else None)  # the cut's scan serves round 1
        rounds.append(rows)
    if p.rounds > 1:
        model = model_from_checkpoint(start).eval()
        layers = compressible_layers(model, p.include, p.exclude)
    if scanned is None or p.rounds > 1:
        scanned = ctx.memo("scan", lambda: joint.scan(layers, lambda: evaluate(model, val, device=ctx.device)["accuracy"],
                                                      p.sparsities, p.bits, ctx.progress))
    choice, _ = joint.choose(scanned["table"], budget)
    prune_epochs = p.prune_epochs // p.rounds if p.rounds > 1 else p.prune_epochs
    for attempt in range(1 + p.retries):  # the target is kept on the real file: pack, check, tighten, repeat
        rows = joint.as_rows(choice, sizes)
        ctx.log(f"joint: target {target:,.0f} bytes; chosen " + ", ".join(f"{r['layer']} s={r['sparsity']:.2f} b={r['bits']}" for r in rows))
        tag = "" if attempt == 0 else f"-{attempt}"
        agp = AGPParams(final=0.0, overrides={n: r["sparsity"] for n, r in zip(choice, rows)}, end=0.6, every=10,
                        initial_overrides=_sparsities(start), include=list(layers), exclude=[])
        ft = FinetuneParams(epochs=prune_epochs, lr=p.lr, agp=agp, seed=p.seed)
        pruned, pr = ctx.memo("prune" + tag, lambda ft=ft: finetune_model(start, ft, ctx, phase="prune"))
        qmodel = model_from_checkpoint(pruned)
        from ..quantize_model import quantize

        quantize(qmodel, "codebook", list(layers), [], {n: {"bits": r["bits"]} for n, r in zip(choice, rows)}, mode=p.codebook)
        quantized = update_checkpoint(derive(pruned), qmodel)
        out, qr = finetune_model(quantized, dataclasses.replace(ft, epochs=p.qat_epochs, agp=None), ctx, phase="qat")
        rep = report_checkpoint(out, p.entropy)
        attempts.append({"budget_bytes": int(budget), "estimated_bytes": joint.estimated_total(choice, leftovers, overhead),
                         "packed_bytes": rep["packed_bytes"]})
        if rep["packed_bytes"] <= target:
            break
        budget -= (rep["packed_bytes"] - target) * 1.05 + 16
        tighter, _ = joint.choose(scanned["table"], budget)
        if tighter == choice:  # already the smallest configuration the grid allows
            break
        choice = tighter
    met = rep["packed_bytes"] <= target
    if not met:
        ctx.log(f"joint: MISSED the target: the packed file is {rep['packed_bytes']:,} bytes, the target {target:,.0f} "
                f"(after {len(attempts)} tries); lower --target-ratio, or allow smaller bits and higher sparsities")
    base_acc = base_test
    result = {"chosen_on": f"validation ({len(val)} samples)", "layers": rows, "target_bytes": int(target),
              "estimated_bytes": attempts[-1]["estimated_bytes"], "packed_bytes": rep["packed_bytes"], "fp32_bytes": rep["fp32_bytes"],
              "ratio": rep["ratio"], "target_met": met, "attempts": attempts,
              **({} if met else {"status": f"MISSED: packed {rep['packed_bytes']:,} bytes > target {int(target):,}"}),
              "baseline_accuracy": base_acc, "scan_baseline_validation": scanned["baseline"],
              "accuracy_after_prune": pr["accuracy"], "accuracy": qr["accuracy"],
              "accuracy_drop": base_acc - qr["accuracy"], "entropy": p.entropy,
              # the scan it chose from, per layer [sparsity, bits, validation drop, bytes]: report --html draws it
              "scan": {n: [[s, b, round(d, 4), nb] for s, b, d, nb in rows] for n, rows in scanned["table"].items()}}
    if rounds:
        result["rounds"] = [*rounds, rows]  # each round's choice, the last one trained in
    if structured is not None:
        result["structured"] = structured
    return StageOutput(out, result)


def _sparsities(ckpt: dict) -> dict[str, float]:
    """Each masked layer's current sparsity (a layer without a mask is at 0)."""
    import glob

    return {glob.escape(n): float(1 - m.float().mean()) for n, m in (ckpt.get("masks") or {}).items()}


def _structure(ckpt: dict, model, p: JointParams, ctx: Context, val, target: float, overhead: int) -> tuple[dict, dict, list]:
    """(the chosen cut's checkpoint, its scan, every candidate): each (channels, neurons) pair is cut from a copy and
    fine-tuned, then scanned and allocated under the target like the unpruned model; its predicted accuracy is its
    validation accuracy minus the scan drops of its allocation. The best prediction that fits wins."""
    import itertools

    from ..checkpoint import derive
    from ..prune.shrink import cut, prunable_units
    from .prune import _example_inputs, recover

    x = _example_inputs(ckpt)
    units = prunable_units(model, x)
    grid = list(itertools.product(sorted(set(p.channels) | {0.0}) if units["channel"] else [0.0],
                                  sorted(set(p.neurons) | {0.0}) if units["neuron"] else [0.0]))
    trials, best, best_key = [], None, None
    for c, n in grid:
        trial = cut(model, x, c, n) if (c or n) else model_from_checkpoint(ckpt)
        if c or n:
            recover(trial, ckpt, ctx, p.recover_epochs, p.lr, p.seed)
        trial.eval()
        candidate = update_checkpoint(derive(ckpt), trial)
        layers = compressible_layers(trial, p.include, p.exclude)
        budget = target - joint.leftover_bytes(candidate["state_dict"], {weight_key(k) for k in layers}) - overhead
        scanned = joint.scan(layers, lambda trial=trial: evaluate(trial, val, device=ctx.device)["accuracy"], p.sparsities, p.bits)
        choice, size = joint.choose(scanned["table"], budget)
        predicted = scanned["baseline"] - sum(max(r[2], 0.0) for r in choice.values())
        fits = size <= budget
        trials.append({"channels_removed": c, "neurons_removed": n, "params": sum(t.numel() for t in trial.parameters()),
                       "val_accuracy": scanned["baseline"], "predicted_accuracy": predicted, "estimated_bytes": int(size + target - budget),
                       "fits": fits})
        key = (fits, predicted if fits else -size)
        if best_key is None or key > best_key:
            best, best_key = (candidate, scanned, len(trials) - 1), key
        ctx.log(f"joint structure: filters −{c:.0%} neurons −{n:.0%}: val {scanned['baseline']:.2f} %, predicted {predicted:.2f} %"
                f"{'' if fits else ' (does not fit)'}")
    for i, t in enumerate(trials):
        t["chosen"] = i == best[2]
    return best[0], best[1], trials


def _round(ckpt: dict, p: JointParams, ctx: Context, val, budget: float, sizes: dict, r: int, scanned: dict | None = None) -> tuple[dict, list]:
    """One round before the last: scan the model as it is (unless `scanned` already did), choose under the budget,
    prune gradually towards it."""
    model = model_from_checkpoint(ckpt).eval()
    layers = compressible_layers(model, p.include, p.exclude)
    if scanned is None:
        scanned = ctx.memo(f"scan-r{r}", lambda: joint.scan(layers, lambda: evaluate(model, val, device=ctx.device)["accuracy"],
                                                            p.sparsities, p.bits, ctx.progress))
    choice, _ = joint.choose(scanned["table"], budget)
    rows = joint.as_rows(choice, sizes)
    ctx.log(f"joint round {r + 1}/{p.rounds}: " + ", ".join(f"{row['layer']} s={row['sparsity']:.2f} b={row['bits']}" for row in rows))
    agp = AGPParams(final=0.0, overrides={n: row["sparsity"] for n, row in zip(choice, rows)}, initial_overrides=_sparsities(ckpt),
                    end=0.6, every=10, include=list(layers), exclude=[])
    ft = FinetuneParams(epochs=p.prune_epochs // p.rounds, lr=p.lr, agp=agp, seed=p.seed + r + 1)
    pruned, _ = ctx.memo(f"prune-r{r}", lambda: finetune_model(ckpt, ft, ctx, phase=f"prune-r{r}"))
    return pruned, rows
