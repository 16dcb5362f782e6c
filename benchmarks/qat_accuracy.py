"""Issue 14's "accuracy must not move": the same QAT run with the compiled kernels and with the torch/numpy
reference paths they replace, side by side, on LeNet-5 and the embedded MNIST.

One fp32 base (seed 0); for each scheme, the same QAT from it twice (same seed, same batches): once with
the compiled kernels (numba), once with them turned off. Reports test accuracy after QAT, the accuracy of
the packed file loaded back, validation accuracy, and the mean step time of each. Nothing is chosen on
data here, so the validation split only is reported.

    python benchmarks/qat_accuracy.py [--base-epochs 3] [--qat-epochs 2]
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

from common import table, write_section
from quick_bench import SCHEMES as QUICK_SCHEMES

import dnncompress
from dnncompress.data import load_data
from dnncompress.models import build_model
from dnncompress.pack import bitpack, load_packed, save_packed
from dnncompress.quant import fastcode
from dnncompress.train import TrainSettings, evaluate, seed_everything, train

CMD = "python benchmarks/qat_accuracy.py"
SCHEMES = QUICK_SCHEMES  # every scheme the speed guard times


def run(base, data, opts, settings, compiled: bool) -> tuple[float, float, float, float]:
    fastcode.USE_COMPILED = bitpack.USE_COMPILED = compiled
    try:
        model = copy.deepcopy(base)
        dnncompress.quantize(model, **opts)
        seed_everything(settings.seed)
        t0 = time.perf_counter()
        train(model, data.train, settings)
        seconds = time.perf_counter() - t0
        test, val = evaluate(model, data.test)["accuracy"], evaluate(model, data.val)["accuracy"]
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "m.dnc"
            save_packed(model, path, arch="lenet5")
            packed = evaluate(load_packed(path), data.test)["accuracy"]
        return test, packed, val, seconds
    finally:
        fastcode.USE_COMPILED = bitpack.USE_COMPILED = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-epochs", type=int, default=3)
    ap.add_argument("--qat-epochs", type=int, default=2)
    args = ap.parse_args()
    data = load_data("mnist", seed=0)
    seed_everything(0)
    base = build_model("lenet5")
    train(base, data.train, TrainSettings(epochs=args.base_epochs, seed=0, augment=data.augment))
    fp32 = evaluate(base, data.test)["accuracy"]
    settings = TrainSettings(epochs=args.qat_epochs, lr=1e-3, schedule="cosine", seed=0, augment=data.augment)
    steps = args.qat_epochs * -(-len(data.train) // settings.batch_size)
    rows = []
    for name, opts in SCHEMES:
        fast = run(base, data, opts, settings, True)
        slow = run(base, data, opts, settings, False)
        rows.append([name, f"{slow[0]:.2f}", f"{fast[0]:.2f}", f"{fast[0] - slow[0]:+.2f}",
                     f"{slow[1]:.2f} / {fast[1]:.2f}", f"{slow[2]:.2f} / {fast[2]:.2f}",
                     f"{1000 * slow[3] / steps:.1f} / {1000 * fast[3] / steps:.1f}"])
        print(rows[-1], flush=True)
    body = (f"LeNet-5 on the embedded MNIST ({len(data.train):,} train / {len(data.val):,} validation / {len(data.test):,} test "
            f"images), fp32 base {fp32:.2f} % test after {args.base_epochs} epochs (seed 0). Each scheme: the same "
            f"{args.qat_epochs}-epoch QAT (Adam, lr 1e-3, cosine, seed 0) from that base, once on the torch/numpy reference "
            "paths and once with the compiled kernels (and the one-node product-quantizer forward, which is off with them). The compiled per-step table updates sum in float64 where torch "
            "sums in float32, so the runs may part by rounding; the table shows how far that moves accuracy. "
            "**step ms** is the whole training loop's time per step (data, forward, backward, Adam).\n\n")
    body += table(["scheme", "test % reference", "test % compiled", "Δ pt", "packed file test % (ref / compiled)",
                   "validation % (ref / compiled)", "step ms (ref / compiled)"], rows)
    write_section("speed_2_accuracy", "QAT accuracy with and without the compiled kernels (issue 14)", body, CMD)
    print(body)


if __name__ == "__main__":
    main()
