"""Pack benchmark (issue 5): file size vs fp32, Huffman gain, throughput vs memcpy, peak memory, fuzz.

    python benchmarks/pack_bench.py [--fuzz 3000]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, table, timeit, write_section

import dnncompress
from dnncompress.checkpoint import new_checkpoint, save_checkpoint
from dnncompress.data import load_data
from dnncompress.models import build_model
from dnncompress.pack import bitpack, checkpoint_from_packed, load_packed, save_packed
from dnncompress.prune import prune
from dnncompress.report import report_packed
from dnncompress.surgery import update_checkpoint
from dnncompress.train import TrainSettings, evaluate, seed_everything, train

CMD = "python benchmarks/pack_bench.py"


def fp32_file_bytes(state, d):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(Path(d) / "fp32.safetensors"))
    return (Path(d) / "fp32.safetensors").stat().st_size


def trained_lenet5(mnist):
    seed_everything(0)
    model = build_model("lenet5")
    train(model, mnist.train, TrainSettings(epochs=3))
    return model


def size_section(mnist, d):
    base = trained_lenet5(mnist)
    rows = []
    fp = fp32_file_bytes(base.state_dict(), d)
    # four-value, no pruning (seed 000)
    m = copy.deepcopy(base)
    dnncompress.quantize(m, scheme="fourval")
    train(m, mnist.train, TrainSettings(epochs=2, lr=1e-3, schedule="cosine"))
    ck = update_checkpoint(new_checkpoint("lenet5", {}, base.state_dict()), m)
    save_packed(ck, Path(d) / "fv.dnc")
    acc_q = evaluate(m, mnist.test)["accuracy"]
    acc_p = evaluate(load_packed(Path(d) / "fv.dnc"), mnist.test)["accuracy"]
    size = (Path(d) / "fv.dnc").stat().st_size
    rows.append(["fourval, dense (seed 000)", f"{size:,}", f"{100 * size / fp:.2f} %", f"{fp / size:.1f}×", f"{acc_q:.2f} / {acc_p:.2f}"])
    # four-value per channel: one α per row is all the file keeps of the level table (issue 10)
    m = copy.deepcopy(base)
    dnncompress.quantize(m, scheme="fourval", per_channel=True)
    train(m, mnist.train, TrainSettings(epochs=2, lr=1e-3, schedule="cosine"))
    save_packed(m, Path(d) / "fvpc.dnc", arch="lenet5")
    rep = report_packed(Path(d) / "fvpc.dnc")
    pc_size, tables = rep["packed_bytes"], sum(r["tables"] for r in rep["layers"])
    n_rows = sum(r["tables"] // 4 for r in rep["layers"])
    rows.append(["fourval, per channel", f"{pc_size:,}", f"{100 * pc_size / fp:.2f} %", f"{fp / pc_size:.1f}×",
                 f"{evaluate(m, mnist.test)['accuracy']:.2f} / {evaluate(load_packed(Path(d) / 'fvpc.dnc'), mnist.test)['accuracy']:.2f}"])
    # Deep Compression style: pruned + 5-bit codebook, with and without Huffman
    m = copy.deepcopy(base)
    prune(m, 0.92, overrides={"conv1": 0.5, "conv2": 0.8})
    train(m, mnist.train, TrainSettings(epochs=3, lr=1e-3, schedule="cosine"))
    dnncompress.quantize(m, scheme="codebook", bits=5, mode="dynamic")
    train(m, mnist.train, TrainSettings(epochs=2, lr=5e-4, schedule="cosine"))
    ck = update_checkpoint(new_checkpoint("lenet5", {}, base.state_dict()), m)
    acc = evaluate(m, mnist.test)["accuracy"]
    sizes = {}
    for entropy in ("none", "huffman"):
        path = Path(d) / f"dc_{entropy}.dnc"
        save_packed(ck, path, entropy=entropy)
        sizes[entropy] = path.stat().st_size
        acc_p = evaluate(load_packed(path), mnist.test)["accuracy"]
        rows.append([f"pruned 92 % + 5-bit codebook, entropy={entropy}", f"{sizes[entropy]:,}", f"{100 * sizes[entropy] / fp:.2f} %",
                     f"{fp / sizes[entropy]:.1f}×", f"{acc:.2f} / {acc_p:.2f}"])
    gain = 1 - sizes["huffman"] / sizes["none"]
    body = (f"LeNet-5 on the embedded MNIST; fp32 safetensors file of the same state_dict: {fp:,} bytes; fp32 accuracy "
            f"{evaluate(base, mnist.test)['accuracy']:.2f} %. Accuracy column: quantized checkpoint / `load_packed` of the file.\n\n"
            + table(["model", ".dnc bytes", "of fp32", "ratio", "accuracy % (ckpt / packed)"], rows)
            + f"\n\nfourval target ≤ 6.5 % of fp32 → {100 * size / fp:.2f} % "
            + f"({'met' if size / fp <= 0.065 else 'MISSED'}); seed 000 reports 6.74 %, the 2-bit floor is 6.25 %.\n\n"
            + f"Per channel, the scheme stores one α per row: {n_rows} rows → {tables:,} bytes of tables "
            + f"({100 * tables / pc_size:.1f} % of the file). Version 2 files stored each row's 4 levels and 3 thresholds: "
            + f"{7 * tables:,} bytes, which would make this file {pc_size + 6 * tables:,} bytes.\n\n"
            + f"Huffman coding of codes and index gaps shrinks the pruned + 5-bit file by **{100 * gain:.1f} %** "
            + "(Deep Compression reports 20–30 % on its models).")
    write_section("pack_1_sizes", "Packed file sizes (issue 5)", body, CMD)


def throughput_section():
    n = 25_000_000  # 100 MB of fp32 weights
    x = torch.randn(n).numpy()
    dst = np.empty_like(x)
    memcpy = timeit(lambda: np.copyto(dst, x), repeat=5)
    rows = [["memcpy (np.copyto, 100 MB)", f"{x.nbytes / memcpy / 1e6:,.0f}", "100 %"]]
    for bits in (2, 5):
        codes = np.random.default_rng(0).integers(0, 1 << bits, n).astype(np.uint8)
        words = bitpack.pack(codes, bits)
        tp = timeit(lambda: bitpack.pack(codes, bits), repeat=3)
        tu = timeit(lambda: bitpack.unpack(words, bits, n), repeat=3)
        for name, t in ((f"bit-pack {bits}-bit codes", tp), (f"bit-unpack {bits}-bit codes", tu)):
            rows.append([name, f"{x.nbytes / t / 1e6:,.0f}", f"{100 * memcpy / t:.0f} %"])
    # whole file: quantized VGG-16 (14.7 M weights) → .dnc → restored dense weights
    torch.manual_seed(0)
    model = build_model("vgg16")
    dnncompress.quantize(model, scheme="fourval")
    ck = update_checkpoint(new_checkpoint("vgg16", {}, build_model("vgg16").state_dict()), model)
    fp_bytes = sum(v.numel() * 4 for v in ck["state_dict"].values())
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "vgg.dnc"
        tw = timeit(lambda: save_packed(ck, path), repeat=3)
        tr = timeit(lambda: checkpoint_from_packed(path), repeat=3)
        big = torch.zeros(fp_bytes // 4).numpy()
        dst2 = np.empty_like(big)
        mc = timeit(lambda: np.copyto(dst2, big), repeat=5)
    rows.append([f"memcpy ({fp_bytes / 1e6:.0f} MB, VGG-16 size)", f"{fp_bytes / mc / 1e6:,.0f}", "100 %"])
    rows.append(["pack VGG-16 fourval (encode + bit-pack + write)", f"{fp_bytes / tw / 1e6:,.0f}", f"{100 * mc / tw:.0f} %"])
    rows.append(["unpack VGG-16 (read + verify SHA-256 + decode)", f"{fp_bytes / tr / 1e6:,.0f}", f"{100 * mc / tr:.0f} %"])
    body = ("Throughput in MB/s of fp32 weights (the size the codes stand for), next to a plain memory copy of a tensor of "
            "the same size in the same run; target ≥ 25 % of memcpy.\n\n" + table(["operation", "MB/s (fp32 equiv.)", "of memcpy"], rows))
    return body


PEAK_SCRIPT = r"""
import os, sys, threading, time, torch, dnncompress
from dnncompress.pack import save_packed, checkpoint_from_packed, load_packed
from dnncompress.checkpoint import load_checkpoint, save_checkpoint
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
op, src, dst = sys.argv[1:4]
import gc; gc.collect()
base = rss()  # current resident size after imports: the interpreter's baseline
peak = [base]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)
t = threading.Thread(target=sample, daemon=True); t.start()
if op == "pack":
    save_packed(load_checkpoint(src), dst)
elif op == "unpack":
    save_checkpoint(checkpoint_from_packed(src), dst)
else:
    model = load_packed(src)
done.set(); t.join()
peak[0] = max(peak[0], rss())
print(peak[0] - base)
"""


def memory_section(d):
    torch.manual_seed(0)
    model = build_model("vgg16")
    dnncompress.quantize(model, scheme="fourval")
    ck = update_checkpoint(new_checkpoint("vgg16", {}, build_model("vgg16").state_dict()), model)
    fp_bytes = sum(v.numel() * v.element_size() for v in ck["state_dict"].values())
    save_checkpoint(ck, Path(d) / "vgg.pt")
    save_packed(ck, Path(d) / "vgg.dnc")
    rows = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for op, src, dst in (("pack", "vgg.pt", "out.dnc"), ("unpack", "vgg.dnc", "out.pt"), ("load_packed", "vgg.dnc", "-")):
        out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, op, str(Path(d) / src), str(Path(d) / dst)],
                             capture_output=True, text=True, env=env, check=True)
        peak = int(out.stdout.strip().splitlines()[-1])
        rows.append([op, f"{peak / 1e6:.0f}", f"{peak / fp_bytes:.2f}×", "met" if peak <= 2 * fp_bytes else "MISSED"])
    return (f"Peak resident memory above the interpreter's baseline (after imports), each operation in a fresh process, "
            f"VGG-16 (BN, random init, fourval): fp32 state_dict {fp_bytes / 1e6:.0f} MB; .dnc {(Path(d) / 'vgg.dnc').stat().st_size / 1e6:.1f} MB. "
            "Target ≤ 2× the fp32 size.\n\n" + table(["operation", "peak MB over baseline", "× fp32 size", "target"], rows))


def fuzz_section(cases, d):
    sys.path.insert(0, str(ROOT))
    from tests.fuzzing import mutate_bytes as mutate
    from tests.test_pack import linear_ckpt

    ckpt = linear_ckpt(3000, "codebook", 0.4, bits=5)
    path = Path(d) / "ok.dnc"
    save_packed(ckpt, path, entropy="huffman")
    expected = checkpoint_from_packed(path)["state_dict"]
    data = path.read_bytes()
    rng = random.Random(99)
    counts = {"clean error": 0, "correct load": 0, "wrong load": 0, "crash": 0}
    t0 = time.perf_counter()
    slowest = 0.0
    for _ in range(cases):
        (Path(d) / "bad.dnc").write_bytes(mutate(data, rng))
        t1 = time.perf_counter()
        try:
            state = checkpoint_from_packed(Path(d) / "bad.dnc")["state_dict"]
            ok = state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
            counts["correct load" if ok else "wrong load"] += 1
        except dnncompress.UserError:
            counts["clean error"] += 1
        except Exception:  # anything but UserError is a crash to count
            counts["crash"] += 1
        slowest = max(slowest, time.perf_counter() - t1)
    return (f"{cases} seeded mutations (truncation, bit flips, lying header length, overwrites, insertions, trailing bytes) "
            f"of a pruned 5-bit Huffman-coded file, {time.perf_counter() - t0:.1f} s in all, slowest case {1e3 * slowest:.0f} ms.\n\n"
            + table(["outcome", "cases"], [[k, v] for k, v in counts.items()]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fuzz", type=int, default=3000)
    ap.add_argument("--only", choices=["sizes", "speed", "fuzz"], default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as d:
        if args.only in (None, "sizes"):
            size_section(load_data("mnist"), d)
        if args.only in (None, "speed"):
            body = throughput_section() + "\n\n" + memory_section(d)
            write_section("pack_2_speed", "Pack/unpack throughput and peak memory (issue 5)", body, CMD + " --only speed")
        if args.only in (None, "fuzz"):
            write_section("pack_3_fuzz", "Fuzzing the .dnc reader (issue 5)", fuzz_section(args.fuzz, d), CMD + " --only fuzz")
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    main()
