"""Structured pruning (issue 12): remove 50 % of the FLOPs of ResNet-20 and VGG-16 and measure CPU latency
at batch 1 and batch 64 against the unpruned model in the same run; check that the .dnc's `load_packed`
returns the smaller module with the checkpoint's outputs.

Weights: the zoo's initialization (seed 0); latency does not depend on the values, and no CIFAR-10 is
installed here (with a local copy, `dnncompress prune CKPT --structured channel --flops 0.5 --data cifar10
--data-dir DIR` gives the accuracy side).

    python benchmarks/structured_bench.py
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from common import table, timeit, write_section

from dnncompress.models import build_model
from dnncompress.pack import load_packed, save_packed
from dnncompress.prune.structured import structured_prune

CMD = "python benchmarks/structured_bench.py"


def latency_ms(model, batch: int) -> float:
    x = torch.randn(batch, 3, 32, 32)
    with torch.inference_mode():
        model(x)  # warm-up
        return 1000 * timeit(lambda: model(x), repeat=7, number=3 if batch == 1 else 1)


def main():
    torch.set_num_threads(2)
    rows = []
    for arch in ("resnet20", "vgg16"):
        torch.manual_seed(0)
        dense = build_model(arch).eval()
        slim = copy.deepcopy(dense)
        info = structured_prune(slim, torch.randn(2, 3, 32, 32), flops=0.5)
        slim.eval()
        with tempfile.TemporaryDirectory() as d:
            save_packed(slim, Path(d) / "s.dnc", arch=arch)
            loaded = load_packed(Path(d) / "s.dnc")
        x = torch.randn(8, 3, 32, 32)
        with torch.inference_mode():
            same = torch.equal(loaded(x), slim(x))
        smaller = sum(p.numel() for p in loaded.parameters()) == info["params_after"]
        lat = {b: (latency_ms(dense, b), latency_ms(slim, b)) for b in (1, 64)}
        rows.append([arch, f"{info['flops_before'] / 1e6:.1f} M → {info['flops_after'] / 1e6:.1f} M "
                           f"(−{100 * (1 - info['flops_after'] / info['flops_before']):.1f} %)",
                     f"{info['params_before']:,} → {info['params_after']:,}",
                     *(f"{lat[b][0]:.2f} → {lat[b][1]:.2f} ({lat[b][0] / lat[b][1]:.2f}×)" for b in (1, 64)),
                     "yes" if same and smaller else "NO"])
    body = ("`structured_prune(model, x, flops=0.5)` (L1 importance of each filter's whole dependency group, per layer, in "
            "steps of 2 % of the channels until half the FLOPs are gone; ResNet-20 keeps its residual stream whole and "
            "prunes each block's inner channels). Latency: median of 7 rounds, CPU, 2 threads, fp32, inference mode, "
            "the dense and the pruned model in the same run. 'load_packed': the .dnc of the pruned model loads as the "
            "smaller module and gives the same outputs bit for bit.\n\n")
    body += table(["model", "FLOPs (batch 1)", "parameters", "batch 1 latency ms (dense → pruned)", "batch 64 latency ms",
                   "load_packed smaller and equal"], rows)
    write_section("prune_3_structured", "Structured pruning: 50 % of the FLOPs and CPU latency (issue 12)", body, CMD)


if __name__ == "__main__":
    main()
