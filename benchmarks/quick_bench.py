"""`make bench-quick` (issue 14's guard, a few minutes): the speed ratios, each beside its baseline in the same run.

- QAT step of every scheme against an fp32 step of the same LeNet-5 (forward, backward, Adam; random
  inputs: speed does not depend on the values), batch 32 and 128. The two models take turns in rounds
  and the ratio is the median over rounds, so a slow spell of a shared machine lands on both sides.
- Whole-file pack and unpack of a four-value VGG-16, and 2/5-bit bit-packing, against a memcpy of the same size.

    python benchmarks/quick_bench.py [--rounds 5] [--steps 8]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from common import table, timeit, write_section

import dnncompress
from dnncompress.checkpoint import new_checkpoint
from dnncompress.models import build_model
from dnncompress.pack import bitpack, checkpoint_from_packed, save_packed
from dnncompress.surgery import update_checkpoint

CMD = "python benchmarks/quick_bench.py"
SCHEMES = [
    ("fourval", {"scheme": "fourval"}),
    ("ternary (TWN)", {"scheme": "ternary"}),
    ("ternary (exact)", {"scheme": "ternary", "rule": "exact"}),
    ("asym-ternary", {"scheme": "asym-ternary"}),
    ("asym-quaternary", {"scheme": "asym-quaternary"}),
    ("codebook 2-bit", {"scheme": "codebook", "bits": 2}),
    ("codebook 4-bit", {"scheme": "codebook", "bits": 4}),
    ("codebook 8-bit", {"scheme": "codebook", "bits": 8}),
    ("codebook 4-bit dynamic", {"scheme": "codebook", "bits": 4, "codebook": "dynamic"}),
    ("pq d=4, 8-bit", {"scheme": "pq", "bits": 8}),
]
TARGET = 1.15


class Stepper:
    def __init__(self, model: nn.Module, batch: int):
        self.model = model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g)
        self.loss = nn.CrossEntropyLoss()

    def seconds(self, steps: int) -> float:
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            self.opt.zero_grad(set_to_none=True)
            self.loss(self.model(self.x), self.y).backward()
            self.opt.step()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


def qat_rows(rounds: int, steps: int) -> list[list]:
    torch.manual_seed(0)
    base = build_model("lenet5")
    rows = []
    for batch in (32, 128):
        fp = Stepper(copy.deepcopy(base), batch)
        fp.seconds(3)
        for name, opts in SCHEMES:
            model = copy.deepcopy(base)
            dnncompress.quantize(model, **opts)
            q = Stepper(model, batch)
            q.seconds(3)
            pairs = [(q.seconds(steps), fp.seconds(steps)) for _ in range(rounds)]
            ratio = statistics.median(a / b for a, b in pairs)
            rows.append([name, batch, f"{1000 * statistics.median(b for _, b in pairs):.2f}", f"{1000 * statistics.median(a for a, _ in pairs):.2f}",
                         f"{ratio:.2f}×", "met" if ratio <= TARGET else "MISSED"])
            print(rows[-1], flush=True)
    return rows


def pack_rows() -> list[list]:
    rows = []
    n = 25_000_000
    x = torch.randn(n).numpy()
    dst = np.empty_like(x)
    memcpy = timeit(lambda: np.copyto(dst, x), repeat=5)
    for bits in (2, 5):
        codes = np.random.default_rng(0).integers(0, 1 << bits, n).astype(np.uint8)
        words = bitpack.pack(codes, bits)
        tp = timeit(lambda: bitpack.pack(codes, bits), repeat=3)
        tu = timeit(lambda: bitpack.unpack(words, bits, n), repeat=3)
        for what, t in ((f"bit-pack {bits}-bit codes (100 MB of fp32)", tp), (f"bit-unpack {bits}-bit codes", tu)):
            rows.append([what, f"{x.nbytes / t / 1e6:,.0f}", f"{100 * memcpy / t:.0f} %", "≥ 40 %" if bits == 5 else ""])
    torch.manual_seed(0)
    model = build_model("vgg16")
    dnncompress.quantize(model, scheme="fourval")
    ck = update_checkpoint(new_checkpoint("vgg16", {}, build_model("vgg16").state_dict()), model)
    fp_bytes = sum(v.numel() * 4 for v in ck["state_dict"].values())
    big = torch.zeros(fp_bytes // 4).numpy()
    dst2 = np.empty_like(big)
    mc = timeit(lambda: np.copyto(dst2, big), repeat=5)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "vgg.dnc"
        tw = timeit(lambda: save_packed(ck, path), repeat=3)
        tr = timeit(lambda: checkpoint_from_packed(path), repeat=3)
    rows.append([f"pack VGG-16 fourval ({fp_bytes / 1e6:.0f} MB fp32)", f"{fp_bytes / tw / 1e6:,.0f}", f"{100 * mc / tw:.0f} %", "≥ 50 %"])
    rows.append(["unpack VGG-16 (read, verify, decode)", f"{fp_bytes / tr / 1e6:,.0f}", f"{100 * mc / tr:.0f} %", "≥ 50 %"])
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    t0 = time.perf_counter()
    qat = qat_rows(args.rounds, args.steps)
    pack = pack_rows()
    body = (f"QAT step (LeNet-5, forward + backward + Adam) against an fp32 step of the same model, taking turns over "
            f"{args.rounds} rounds of {args.steps} steps; the ratio is the median of the rounds' ratios. Target ≤ {TARGET}×.\n\n")
    body += table(["scheme", "batch", "fp32 step ms", "QAT step ms", "ratio", f"≤ {TARGET}×"], qat)
    body += "\n\nPacking throughput in MB/s of the fp32 weights the codes stand for, against a memcpy of the same size in the same run.\n\n"
    body += table(["operation", "MB/s", "of memcpy", "target"], pack)
    body += f"\n\nThe whole guard took {time.perf_counter() - t0:.0f} s.\n"
    write_section("speed_1_quick", "Speed guard: QAT and packing against their baselines (issue 14)", body, CMD)
    print(body)


if __name__ == "__main__":
    main()
