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

    def __post_init__(self):
        if self.target_bytes is None and (self.target_ratio is None or not math.isfinite(self.target_ratio) or self.target_ratio <= 1):
            raise UserError(f"joint needs target_ratio > 1 or target_bytes, got target_ratio {self.target_ratio}")
        finite(self.lr, "lr", 0.0, low_open=True)
        whole(self.seed, "seed", 0, (1 << 63) - 1)
        whole(self.retries, "retries", 0, 10)
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
    from ..report import fp32_file_bytes, report_checkpoint, unpruned_fp32_bytes

    if ckpt.get("quant") or ckpt.get("masks"):
        raise UserError("joint starts from an uncompressed checkpoint (no masks, no quantizers)")
    val = ctx.validation(ckpt, "joint")
    model = model_from_checkpoint(ckpt).eval()
    base_test = evaluate(model, ctx.data_for(ckpt).test, device=ctx.device)["accuracy"]  # reported like every later accuracy
    layers = compressible_layers(model, p.include, p.exclude)
    # after structured pruning the ratio is against the model before it, as report measures it
    fp32_bytes = (unpruned_fp32_bytes(ckpt["arch"], ckpt.get("arch_kwargs"), "the checkpoint") if ckpt.get("structure")
                  else fp32_file_bytes(ckpt["state_dict"]))
    compressed_keys = {weight_key(n) for n in layers}
    leftovers = joint.leftover_bytes(ckpt["state_dict"], compressed_keys)
    target = p.target_bytes or fp32_bytes / p.target_ratio
    scanned = ctx.memo("scan", lambda: joint.scan(layers, lambda: evaluate(model, val, device=ctx.device)["accuracy"],
                                                  p.sparsities, p.bits, ctx.progress))
    sizes = {n: m.weight.numel() for n, m in layers.items()}
    overhead = joint.container_budget(len(layers))
    budget, attempts = target - leftovers - overhead, []
    choice, _ = joint.choose(scanned["table"], budget)
    for attempt in range(1 + p.retries):  # the target is kept on the real file: pack, check, tighten, repeat
        rows = joint.as_rows(choice, sizes)
        ctx.log(f"joint: target {target:,.0f} bytes; chosen " + ", ".join(f"{r['layer']} s={r['sparsity']:.2f} b={r['bits']}" for r in rows))
        tag = "" if attempt == 0 else f"-{attempt}"
        agp = AGPParams(final=0.0, overrides={n: r["sparsity"] for n, r in zip(choice, rows)}, end=0.6, every=10,
                        include=list(layers), exclude=[])
        ft = FinetuneParams(epochs=p.prune_epochs, lr=p.lr, agp=agp, seed=p.seed)
        pruned, pr = ctx.memo("prune" + tag, lambda ft=ft: finetune_model(ckpt, ft, ctx, phase="prune"))
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
    return StageOutput(out, result)
