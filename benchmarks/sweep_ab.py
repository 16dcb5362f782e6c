"""The weight sweep (surgery.sweep_before_forward) on and off, in one process (issue 14).

The same quantized LeNet-5 twice, once with the sweep's hooks taken off, and an fp32 LeNet-5 take turns one step at
a time (batch 32, Adam), 20 blocks of 10 steps each; each block gives both QAT/fp32 ratios, and the row counts the
blocks in which the sweep's step was the faster. A same-process A/B: a slow spell of this shared machine lands on
all three sides, which separate guard runs cannot promise (their rows move by up to 0.1 from run to run).

    python benchmarks/sweep_ab.py
"""
from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn as nn
from common import table, write_section
from quick_bench import SCHEMES, settle_gc

import dnncompress
from dnncompress.models import build_model

CMD = "python benchmarks/sweep_ab.py"
BLOCKS, STEPS = 20, 10


def stepper(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss = nn.CrossEntropyLoss()

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss(model(x), y).backward()
        opt.step()
        return time.perf_counter() - t0

    return step


def row(name: str, options: dict, base: nn.Module, x, y) -> list:
    swept = copy.deepcopy(base)
    dnncompress.quantize(swept, **options)
    plain = copy.deepcopy(swept)
    plain._forward_pre_hooks.clear()  # the sweep's two hooks, and nothing else, are on the model
    plain._forward_hooks.clear()
    steps = {"fp32": stepper(copy.deepcopy(base), x, y), "no sweep": stepper(plain, x, y), "sweep": stepper(swept, x, y)}
    for _ in range(20):
        for step in steps.values():
            step()
    settle_gc()
    blocks = []
    for _ in range(BLOCKS):
        sums = dict.fromkeys(steps, 0.0)
        for _ in range(STEPS):
            for key, step in steps.items():
                sums[key] += step()
        blocks.append(sums)
    off = statistics.median(b["no sweep"] / b["fp32"] for b in blocks)
    on = statistics.median(b["sweep"] / b["fp32"] for b in blocks)
    faster = sum(b["sweep"] < b["no sweep"] for b in blocks)
    return [name, f"{1000 * statistics.median(b['fp32'] for b in blocks) / STEPS:.2f}", f"{off:.3f}×", f"{on:.3f}×",
            f"{faster} of {BLOCKS}"]


def main():
    torch.manual_seed(0)
    base = build_model("lenet5")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)
    chosen = ("fourval", "codebook 8-bit", "codebook 4-bit dynamic", "pq 8-bit, auto d")
    rows = []
    for name, options in SCHEMES:
        if name in chosen:
            rows.append(row(name, options, base, x, y))
            print(rows[-1], flush=True)
    body = (f"LeNet-5, batch 32: the QAT step against an fp32 step, with the sweep's hooks and without them, the three "
            f"models taking turns step by step; {BLOCKS} blocks of {STEPS} steps, medians of the blocks' ratios.\n\n")
    body += table(["scheme", "fp32 step ms", "QAT/fp32, no sweep", "QAT/fp32, sweep", "blocks the sweep was faster"], rows)
    write_section("speed_3_sweep", "The weight sweep on and off, same process (issue 14)", body, CMD)


if __name__ == "__main__":
    main()
