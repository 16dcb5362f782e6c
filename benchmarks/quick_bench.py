"""`make bench-quick` (issue 14's guard, a few minutes): the speed ratios, each beside its baseline in the same run.

- QAT step of every scheme against an fp32 step of the same LeNet-5 (forward, backward, Adam; random
  inputs: speed does not depend on the values), batch 32 and 128; every scheme on ResNet-20 at batch
  32. The two models take turns one step at a time in blocks of 10 steps each, whose summed times give one ratio
  (work a scheme does every few steps counts); the row's ratio is the median over the blocks, so a slow spell
  of a shared machine lands on both sides.
- Whole-file pack and unpack of a four-value VGG-16 (durable file, in memory, new tensors, in place), against the
  copy that does the same memory work; 2/3/5/6/7-bit bit-packing and Huffman/ANS decoding; peak memory of each.

    python benchmarks/quick_bench.py [--blocks 16]
"""
from __future__ import annotations

import argparse
import copy
import gc
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from common import table, timeit, write_section

import dnncompress
from dnncompress.checkpoint import new_checkpoint, save_checkpoint
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
    ("pq 8-bit, auto d", {"scheme": "pq", "bits": 8}),  # d: a conv's k×k kernel, 4 weights in a Linear
]
TARGET = 1.15
PACK_ROUNDS = 31  # paired rounds per packing row: a round takes tens of ms, so 31 cost seconds against the QAT rows' minutes


class Stepper:
    def __init__(self, model: nn.Module, batch: int, shape=(1, 28, 28)):
        self.model = model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g)
        self.loss = nn.CrossEntropyLoss()

    def seconds(self, steps: int) -> float:
        """Seconds that `steps` consecutive steps took together: work a scheme does every few steps (pq re-assigns
        its units every 10) counts in full, as in a training run."""
        t0 = time.perf_counter()
        for _ in range(steps):
            self.opt.zero_grad(set_to_none=True)
            self.loss(self.model(self.x), self.y).backward()
            self.opt.step()
        return time.perf_counter() - t0


MODELS = {"lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}


def settle_gc() -> None:
    """Collect, then freeze what exists (gc.freeze): a full collection then walks only the objects the steps make,
    not this process's dozens of models and compiled kernels, whose pauses would land on whichever side they
    happened to hit (single rows had moved by up to 0.2 between runs). Collections of what a step allocates
    still count, as they would in a training loop."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


BLOCK_STEPS = 10  # steps timed together, a multiple of every scheme's period (pq: reassign_every = 10)


def interleaved(q: Stepper, fp: Stepper) -> tuple[float, float]:
    """(QAT seconds, fp32 seconds) over BLOCK_STEPS steps of each, the two taking turns step by step: a slow spell
    of this shared machine lands on both sides, and a scheme's periodic work falls in every block exactly once."""
    a = b = 0.0
    for _ in range(BLOCK_STEPS):
        a += q.seconds(1)
        b += fp.seconds(1)
    return a, b


def qat_rows(blocks: int, arch: str = "lenet5", batches=(32, 128), schemes=SCHEMES) -> list[list]:
    torch.manual_seed(0)
    base = build_model(arch)
    rows = []
    for batch in batches:
        fp = Stepper(copy.deepcopy(base), batch, MODELS[arch])
        fp.seconds(3)
        for name, opts in schemes:
            model = copy.deepcopy(base)
            dnncompress.quantize(model, **opts)
            q = Stepper(model, batch, MODELS[arch])
            q.seconds(3)
            settle_gc()
            timed = [interleaved(q, fp) for _ in range(blocks)]
            ratio = statistics.median(a / b for a, b in timed)
            rows.append([arch, name, batch, f"{1000 * statistics.median(b for _, b in timed) / BLOCK_STEPS:.2f}",
                         f"{1000 * statistics.median(a for a, _ in timed) / BLOCK_STEPS:.2f}", f"{ratio:.2f}×", "met" if ratio <= TARGET else "MISSED"])
            print(rows[-1], flush=True)
    return rows


def _skewed_codes(n: int, bits: int, seed: int = 0) -> np.ndarray:
    """Codes as a pruned, quantized layer has them: a few values common, the rest rare."""
    p = 0.5 ** np.arange(1, (1 << bits) + 1)
    return np.random.default_rng(seed).choice(1 << bits, n, p=p / p.sum()).astype(np.uint8)


def coder_rows(memcpy_per_byte: float) -> list[list]:
    """Bit-packing and entropy decoding of n codes, as MB/s of the fp32 weights the codes stand for."""
    rows = []
    n = 25_000_000
    for bits in (2, 3, 5, 6, 7):
        codes = np.random.default_rng(0).integers(0, 1 << bits, n).astype(np.uint8)
        words = bitpack.pack(codes, bits)
        tp = timeit(lambda: bitpack.pack(codes, bits), repeat=3)
        tu = timeit(lambda: bitpack.unpack(words, bits, n), repeat=3)
        for what, t in ((f"bit-pack {bits}-bit codes (100 MB of fp32)", tp), (f"bit-unpack {bits}-bit codes", tu)):
            rows.append([what, f"{4 * n / t / 1e6:,.0f}", f"{100 * memcpy_per_byte * 4 * n / t:.0f} %", "memcpy", "≥ 40 %" if bits in (3, 5, 6, 7) else ""])
    from dnncompress.pack import huffman
    from dnncompress.pack.layers import ans_decode, ans_encode

    m = 4_000_000
    skewed = _skewed_codes(m, 2)
    lengths, offsets, payload = huffman.encode(skewed, 4)
    th = timeit(lambda: huffman.decode(lengths, offsets, payload, m), repeat=3)
    rows.append([f"Huffman decode, 2-bit skewed codes ({payload.size / m * 8:.2f} bits/code)", f"{4 * m / th / 1e6:,.0f}",
                 f"{100 * memcpy_per_byte * 4 * m / th:.0f} %", "memcpy", ""])
    try:
        counts, ans_words = ans_encode(skewed, 4)
        ta = timeit(lambda: ans_decode(counts, ans_words, m), repeat=3)
        rows.append([f"ANS decode, the same codes ({ans_words.size * 32 / m:.2f} bits/code)", f"{4 * m / ta / 1e6:,.0f}",
                     f"{100 * memcpy_per_byte * 4 * m / ta:.0f} %", "memcpy", ""])
    except Exception as e:  # constriction is optional (the ans extra)
        rows.append(["ANS decode", "skipped", "", "", f"{type(e).__name__}: {str(e)[:60]}"])
    return rows


def vgg_checkpoint() -> tuple[dict, int]:
    torch.manual_seed(0)
    model = build_model("vgg16")
    dnncompress.quantize(model, scheme="fourval")
    ck = update_checkpoint(new_checkpoint("vgg16", {}, build_model("vgg16").state_dict()), model)
    return ck, sum(v.numel() * 4 for v in ck["state_dict"].values())


def paired(op, base, rounds: int = PACK_ROUNDS) -> tuple[float, float, float]:
    """(median seconds of `op`, median seconds of `base`, median of base/op) over rounds that time the two back to
    back: a slow spell of a shared machine lands on both sides of the ratio."""
    op(), base()
    pairs = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        base()
        t1 = time.perf_counter()
        op()
        pairs.append((time.perf_counter() - t1, t1 - t0))
    return statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs), statistics.median(b / a for a, b in pairs)


def pack_rows() -> tuple[list[list], float]:
    """Whole-file rows, each timed in alternation with a warm memcpy of the fp32 weights (into memory already in
    use). Rows that return new tensors also pay for fresh memory; a row of its own shows what a plain copy of the
    state dict into new tensors costs, which the allocator makes cheap or dear depending on what was freed before."""
    from dnncompress import load_packed
    from dnncompress.fileio import atomic_write_bytes
    from dnncompress.pack.container import build_packed, serialize
    from dnncompress.validate import skeleton

    ck, fp_bytes = vgg_checkpoint()
    big = torch.zeros(fp_bytes // 4).numpy()
    dst = np.empty_like(big)

    def warm():
        np.copyto(dst, big)

    rows, memcpy = [], []

    def row(what, op, target="≥ 50 %"):
        settle_gc()
        t, base, ratio = paired(op, warm)
        memcpy.append(base)
        rows.append([what, f"{fp_bytes / t / 1e6:,.0f}", f"{100 * ratio:.0f} %", target, f"{1000 * t:.1f}", f"{1000 * base:.1f}"])

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "vgg.dnc"
        row(f"pack VGG-16 fourval ({fp_bytes / 1e6:.0f} MB fp32) to a durable file (encode, hash, write, fsync, rename)",
            lambda: save_packed(ck, path))
        row("pack VGG-16 to bytes in memory (encode, hash; no file)", lambda: serialize(*build_packed(ck)[:2]))
        data = path.read_bytes()
        row(f"(the disk's share of the first row: write, fsync and rename the same {len(data) / 1e6:.1f} MB, nothing else)",
            lambda: atomic_write_bytes(Path(d) / "same.dnc", data), "")
        row("unpack VGG-16 to new tensors (read, verify, vet against the architecture, decode)", lambda: checkpoint_from_packed(path))
        model = build_model("vgg16")
        row("load_packed into a built VGG-16 (decoded in place)", lambda: load_packed(path, model=model))
        row("load_packed, architecture from the file (meta device, tensors adopted)", lambda: load_packed(path))
        row("(part of the two rows that vet: building VGG-16 on the meta device, which the file is checked against)",
            lambda: skeleton("vgg16", {}, path), "")
        row("(part of the rows that return new tensors: a plain copy of the state dict into new tensors)",
            lambda: {k: v.clone() for k, v in ck["state_dict"].items()}, "")
    return rows, statistics.median(memcpy) / fp_bytes


PEAK_CHILD = """
import gc, sys, torch
sys.path.insert(0, "benchmarks")
from pathlib import Path
from common import PeakRSS
from quick_bench import vgg_checkpoint
from dnncompress import load_packed
from dnncompress.models import build_model
from dnncompress.pack import checkpoint_from_packed, save_packed
what, path, fp, loaded = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "loaded"
if loaded:  # the kernels at once, as after a QAT step; else the default of a fresh process (compiled.py's budget)
    from dnncompress import compiled
    compiled.ONE_OFF_BUDGET = 0
ck = None  # what the operation starts from is resident before it
if what == "pack":  # kernels loaded: made here (its fit loads numba); the fresh default: read from the parent's file, as a CLI does
    from dnncompress.checkpoint import load_checkpoint
    ck = vgg_checkpoint()[0] if loaded else load_checkpoint(path.with_name("vgg.pt"))
model = build_model("vgg16") if what == "load_packed into a built model" else None
gc.collect()
with PeakRSS() as once:  # numba's import and its compiled kernels: paid once per process, whatever the model's size
    from dnncompress.pack import bitpack
    from dnncompress.quant import fastcode
    if loaded and bitpack.compiled(bitpack.COMPILED_FROM) is not None:
        bitpack.unpack(bitpack.pack(torch.zeros(1 << 16, dtype=torch.uint8).numpy(), 2), 2, 1 << 16)
        fastcode.gather_levels(torch.zeros(1, 4), torch.zeros(1, 1 << 16, dtype=torch.uint8))
        fastcode.fourval_codes(torch.zeros(1, 1 << 16), torch.ones(1))
        fastcode.count_below(torch.zeros(1, 1 << 16), torch.ones(1, 3))
gc.collect()
numba_before = "numba" in sys.modules
with PeakRSS() as peak:
    if what == "pack":
        save_packed(ck, path.with_name("again.dnc"))
    elif what == "unpack (checkpoint_from_packed)":
        out = checkpoint_from_packed(path)
    else:
        out = load_packed(path, model=model)
print(once.above_base_mb(), peak.above_base_mb() * 1e6 / fp, "before" if numba_before else "during" if "numba" in sys.modules else "no")
"""


def peak_rows() -> list[list]:
    """Peak resident memory above what the process held before the call, as a multiple of the fp32
    size, each in a fresh process (so that no freed memory from earlier work hides the peak); what the
    operation starts from (the checkpoint to pack, the model to fill) is built before the measurement. Twice: with
    numba's kernels loaded first (as after a QAT step; their import measured apart), and as a fresh process does it
    by default, where one-off work runs in torch/numpy until it has earned loading numba (compiled.py)."""
    import subprocess
    import sys

    ck, fp = vgg_checkpoint()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "vgg.dnc"
        save_packed(ck, path)
        save_checkpoint(ck, path.with_name("vgg.pt"))
        for loaded in ("loaded", "fresh"):
            for what in ("pack", "unpack (checkpoint_from_packed)", "load_packed into a built model", "load_packed, architecture from the file"):
                label = what if loaded == "loaded" else f"{what}, fresh process (default)"
                r = subprocess.run([sys.executable, "-c", PEAK_CHILD, what, str(path), str(fp), loaded], check=False, capture_output=True,
                                   text=True, cwd=Path(__file__).parent.parent)
                if r.returncode:
                    rows.append([label, "failed", r.stderr.strip().splitlines()[-1][:80] if r.stderr.strip() else "", "", ""])
                    continue
                once, ratio, numba = r.stdout.strip().splitlines()[-1].split()
                ratio = float(ratio)
                paid = f"{float(once):.0f} MB" if loaded == "loaded" else {"before": "loaded before the call",
                                                                             "during": "loaded during the call (in the peak)", "no": "not loaded"}[numba]
                rows.append([label, f"{ratio:.2f}×", paid, "≤ 1.5×", "met" if ratio <= 1.5 else "MISSED"])
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=16, help="10-step blocks per LeNet-5 batch-32 row (batch 128: 6, ResNet-20: 3)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    qat = qat_rows(args.blocks, batches=(32,))
    qat += qat_rows(6, batches=(128,))
    qat += qat_rows(3, "resnet20", (32,))
    pack, memcpy_per_byte = pack_rows()
    coders = coder_rows(memcpy_per_byte)
    peaks = peak_rows()
    body = (f"QAT step (forward + backward + Adam) against an fp32 step of the same model, the two taking turns step by step "
            f"in blocks of {BLOCK_STEPS} steps each, {args.blocks} blocks per row (LeNet-5 batch 128: 6, ResNet-20: 3); the ratio is the median of the blocks' "
            f"ratios of summed step times, the step times the medians of each side's block sums over {BLOCK_STEPS}. Summed, not "
            f"single steps' medians: pq re-assigns its units every 10 steps, and a median of single steps left that step out. "
            f"Target ≤ {TARGET}×. Random inputs: speed does not depend on the values. "
            f"Before each row (and each packing row below) the garbage collector collects and freezes what exists (gc.freeze): "
            f"a full collection then walks only what the timed steps made, not this process's dozens of models, whose pauses had "
            f"landed on one side or the other of a pair.\n\n")
    body += table(["model", "scheme", "batch", "fp32 step ms", "QAT step ms", "ratio", f"≤ {TARGET}×"], qat)
    body += ("\n\nWhole-file packing, in MB/s of the fp32 weights, each operation timed back to back with a warm memcpy of "
             f"those weights (np.copyto into memory already in use) over {PACK_ROUNDS} rounds; **of memcpy** is the median of the rounds' "
             "ratios, the times the medians of each side. The rows in parentheses are parts of the others, measured the same "
             "way, to show where the time goes.\n\n")
    body += table(["operation", "MB/s", "of memcpy", "target", "ms", "memcpy ms"], pack)
    body += "\n\nCode streams: bit-packing and entropy decoding, in MB/s of the fp32 weights the codes stand for, against the warm memcpy.\n\n"
    body += table(["operation", "MB/s", "of baseline", "baseline", "target"], coders)
    body += ("\n\nPeak memory of VGG-16 (fourval), each operation in a fresh process, above what the process held "
             "before it (the checkpoint to pack or the model to fill included), as a multiple of the fp32 size; numba's "
             "import and compiled kernels, paid once per process whatever the model's size, are measured first and apart "
             "(pack: numba was already loaded while its checkpoint was built). The rows marked fresh process are what a "
             "process does by default: one-off work runs in torch/numpy until it has earned loading numba (compiled.py), "
             "so the call pays the torch paths' temporaries and no numba import (pack reads its checkpoint from a file there, "
             "as the CLI does).\n\n")
    body += table(["operation", "peak × fp32 size", "numba, once per process", "target", ""], peaks)
    body += f"\n\nThe whole guard took {time.perf_counter() - t0:.0f} s.\n"
    write_section("speed_1_quick", "Speed guard: QAT and packing against their baselines (issue 14)", body, CMD)
    print(body)


if __name__ == "__main__":
    main()
