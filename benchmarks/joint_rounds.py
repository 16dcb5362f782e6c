"""joint, one-shot against rounds and against a search that includes structured cuts (issue 12): the per-layer
(sparsity, bits) allocation chosen once from the trained model, re-run between fine-tuning rounds on the model as the
last round left it (`rounds: 3`), or chosen together with a structured cut (`neurons`/`channels` candidates), with the
same pruning and QAT epochs, on LeNet-5 and the embedded MNIST, at several byte targets.
Writes docs/results/prune_5_joint_rounds.md.

    python benchmarks/joint_rounds.py [--targets 60,100,150]
"""
from __future__ import annotations

import argparse
import time

import torch
from common import table, trained_lenet5, write_section

from dnncompress.checkpoint import new_checkpoint
from dnncompress.stages import Context
from dnncompress.stages.joint import JointParams, joint_stage
from dnncompress.train import evaluate

CMD = "python benchmarks/joint_rounds.py"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="60,100,150")
    args = ap.parse_args()
    torch.set_num_threads(2)
    mnist, base = trained_lenet5()
    fp = evaluate(base, mnist.test)["accuracy"]
    ck = new_checkpoint("lenet5", mnist.arch_kwargs(), base.state_dict(), {"name": "mnist"})
    rows = []
    for target in [float(t) for t in args.targets.split(",")]:
        for label, extra in (("one-shot", {}), ("3 rounds", {"rounds": 3}),
                             ("+ structured cuts", {"channels": [0.5], "neurons": [0.5, 0.8, 0.9]})):
            t = time.perf_counter()
            out = joint_stage(ck, JointParams(target_ratio=target, prune_epochs=3, qat_epochs=2, entropy="ans", **extra),
                              Context(data_name="mnist")).result
            seconds = time.perf_counter() - t
            choice = ", ".join(f"{r['layer']} {100 * r['sparsity']:.0f} %/{r['bits']}b" for r in out["layers"])
            cut = next((t for t in out.get("structured", []) if t["chosen"]), None)
            if cut is not None:
                choice = f"cut filters −{100 * cut['channels_removed']:.0f} %, neurons −{100 * cut['neurons_removed']:.0f} %; " + choice
            rows.append([f"{target:g}×", label, choice, f"{out['packed_bytes']:,}",
                         f"**{out['ratio']:.1f}×**", "met" if out["target_met"] else "MISSED", f"{out['accuracy']:.2f}",
                         f"{out['accuracy'] - fp:+.2f}", f"{seconds:.0f}"])
            print(rows[-1], flush=True)
    body = (f"LeNet-5 trained 3 epochs on the embedded MNIST (fp32 test accuracy {fp:.2f} %; 1,000 test images, one is 0.1 pt). "
            "`joint` chooses every layer's sparsity and codebook bits on the validation split (400 images) under the byte target, "
            "prunes gradually (AGP), trains the codebooks (dynamic, 2 epochs) and packs with ANS; the packed size is measured. "
            "One-shot: one scan of the trained model, 3 epochs of pruning. Rounds: the scan and choice re-run after each of 3 "
            "one-epoch pruning rounds, each round starting every layer at its current sparsity; the same 3 epochs in all. "
            "Structured cuts: each pair of (filters, neurons) fractions from {0, 0.5} × {0, 0.5, 0.8, 0.9} is cut, fine-tuned "
            "one epoch, scanned and allocated under the target; the pair with the best validation accuracy minus its "
            "allocation's scan drops is trained in (one-shot).\n\n")
    body += table(["target", "allocation", "last choice (sparsity/bits)", ".dnc bytes", "ratio", "target", "test %", "Δ pt", "seconds"], rows)
    write_section("prune_5_joint_rounds", "joint: one-shot allocation against rounds (seed 002, issue 12)", body, CMD)


if __name__ == "__main__":
    main()
