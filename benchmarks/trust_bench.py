"""Issue 9: trust and survival, measured.

- Fuzz every reader: ≥ 5,000 .dnc mutations (half re-signed by a forger who recomputes the digest),
  1,000 checkpoint mutations, 200 config mutations; count clean errors, crashes, wrong loads,
  hangs over 5 s, and the peak memory above the process's baseline against 2× the model's size.
- Kill -9 at seeded random moments during train, finetune (QAT) and run, resume, and compare the
  bytes of the result with an uninterrupted run's.
- What snapshots cost.

python benchmarks/trust_bench.py [--only fuzz|memory|kill|snapshots] [--dnc N --ckpt N --config N --kills N]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.common import ROOT, table, timeit, write_section

CMD = "python benchmarks/trust_bench.py"
OUTCOMES = ["error", "same", "forged", "wrong", "crash", "hang"]


def _row(label, counts: Counter, slowest: float, extra=()):
    return [label, sum(counts[o] for o in OUTCOMES), *[counts[o] for o in OUTCOMES], f"{1e3 * slowest:.0f}", *extra]


# ---------------------------------------------------------------- fuzz


def _warm_libraries() -> None:
    """Import once what a reader may import for any file (torchvision's model list is ~180 MB of code):
    the memory bound is about what a file makes the reader allocate, not about libraries."""
    import torchvision.models as tvm

    from dnncompress.validate import expected_state

    tvm.list_models()
    expected_state("torchvision:resnet18", {}, "warm-up")


def fuzz_section(n_dnc: int, n_ckpt: int, n_config: int) -> str:
    from dnncompress.checkpoint import load_checkpoint, save_checkpoint
    from dnncompress.config import load_config
    from dnncompress.pack import checkpoint_from_packed, save_packed
    from dnncompress.report import report_packed
    from tests import fuzzing as F
    from tests.conftest import _register_test_linear
    from tests.test_fuzz import lenet5_ckpt
    from tests.test_pack import linear_ckpt

    _register_test_linear()

    rows, problems = [], []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        bases = [("LeNet-5: pruned, codebook 4-bit + per-channel fourval + pruned-only fc1, plain", lenet5_ckpt(), "none", 0.74),
                 ("LeNet-5, same, Huffman-coded", lenet5_ckpt(), "huffman", 0.06),
                 ("Linear 3000, pruned 5-bit codebook, Huffman", linear_ckpt(3000, "codebook", 0.4, bits=5), "huffman", 0.20)]
        x_lenet, x_linear = torch.randn(2, 1, 28, 28), torch.randn(2, 3000)
        for label, ckpt, entropy, share in bases:
            path = d / "ok.dnc"
            save_packed(ckpt, path, entropy=entropy)
            data = path.read_bytes()
            original = checkpoint_from_packed(path)["state_dict"]
            report_packed(path)
            fits = F.fits_model(None, x_linear if "Linear" in label else x_lenet)
            rng = random.Random(zlib.crc32(label.encode()))
            n = int(n_dnc * share)
            for forged in (False, True):
                tally, rep = F.Tally(f"{label} {'forged' if forged else 'raw'}"), F.Tally(f"{label} report")
                for case in range(n // 2):
                    bad = d / "bad.dnc"
                    bad.write_bytes(F.forge_dnc(data, rng) if forged else F.mutate_bytes(data, rng))
                    tally.add(case, F.judge(lambda: checkpoint_from_packed(bad), lambda c: F.same_state(c["state_dict"], original),
                                            fits if forged else None))
                    if entropy == "none" or case % 3 == 0:  # Huffman decoding is slow in Python: report a third of those
                        rep.add(case, F.judge(lambda: report_packed(bad), None, lambda r: None))
                problems += tally.problems + rep.problems
                r = rep.counts
                rows.append(_row(f"{label} — {'re-signed forgeries' if forged else 'raw damage'}", tally.counts,
                                 max(tally.slowest, rep.slowest), [f"{r['error']} errors, {r['forged']} ok, {r['crash']} crashes, {r['hang']} hangs"]))

        ckpt = lenet5_ckpt()
        save_checkpoint(ckpt, d / "ok.pt")
        raw = (d / "ok.pt").read_bytes()
        original = load_checkpoint(d / "ok.pt")["state_dict"]
        fits = F.fits_model(None, x_lenet)
        rng = random.Random(5)
        tally = F.Tally("checkpoint")
        for case in range(n_ckpt):
            bad = d / "bad.pt"
            data, damaged = F.mutate_checkpoint(ckpt, raw, rng)
            bad.write_bytes(data)
            tally.add(case, F.judge(lambda: load_checkpoint(bad), lambda c: F.same_state(c["state_dict"], original),
                                    None if damaged else fits))
        problems += tally.problems
        rows.append(_row("LeNet-5 checkpoint (.pt): half byte damage, half hostile dicts re-saved", tally.counts, tally.slowest, [""]))

        texts = [p.read_text() for p in sorted((ROOT / "configs").glob("*.yaml"))]
        rng = random.Random(3)
        tally = F.Tally("config")
        cwd = os.getcwd()
        os.chdir(d)
        try:
            for case in range(n_config):
                (d / "c.yaml").write_bytes(F.mutate_config(rng.choice(texts), rng))
                tally.add(case, F.judge(lambda: load_config(d / "c.yaml"), None, lambda cfg: None))
        finally:
            os.chdir(cwd)
        problems += tally.problems
        tally.counts["same"] += tally.counts.pop("forged", 0)  # an accepted config: nothing to compare it with
        rows.append(_row("shipped configs (accepted ones counted as 'same')", tally.counts, tally.slowest, [""]))

    total = sum(r[1] for r in rows)
    body = (f"{total:,} seeded mutations. Outcomes: **error** = one-line `UserError`; **same** = loaded equal to the original "
            "(the edit touched nothing that decides a weight); **forged** = a re-signed file that loaded other weights which still fit "
            "the architecture exactly, run a forward pass and pack again (a forger with the file can always write another valid model; "
            "the digest is integrity, not a signature); **wrong** = a damaged file loaded with other weights, or a forged one accepted "
            "that then broke; **crash** = any other exception; **hang** = over 5 s.\n\n"
            + table(["input", "cases", *OUTCOMES, "slowest ms", "report on the same files"], rows)
            + "\n\nPeak memory is measured separately, in fresh processes without the judge's own model rebuilds (next section).\n")
    body += "\nProblems found: " + ("none." if not problems else "\n\n" + "\n".join(f"- {p}" for p in problems[:30]))
    return body


# ---------------------------------------------------------------- memory on a large model


def _measured(load) -> tuple[float, str]:
    """(MB the call made resident memory grow above where it started, outcome)."""
    import gc

    from benchmarks.common import PeakRSS
    from tests import fuzzing as F

    gc.collect()
    with PeakRSS() as mem:
        outcome, _, _ = F.judge(load, None, lambda c: None)
    return mem.above_base_mb(), outcome


def _memory_child(path: str, n: int, seed: int) -> None:
    """In a fresh process: load (and report) the good file, then n mutations, each measured on its own:
    the growth of resident memory during that one load, generating the mutation not included."""
    from dnncompress.checkpoint import load_checkpoint
    from dnncompress.pack import checkpoint_from_packed
    from dnncompress.report import report_packed
    from tests import fuzzing as F

    is_ckpt = path.endswith(".pt")
    raw = Path(path).read_bytes()
    _warm_libraries()
    ckpt = load_checkpoint(path) if is_ckpt else None
    loaders = [load_checkpoint] if is_ckpt else [checkpoint_from_packed, report_packed]
    for load in loaders:  # first use initializes kernels and allocator arenas
        load(path)
    good = max(_measured(lambda load=load: load(path))[0] for load in loaders)
    rng = random.Random(seed)
    counts, worst = Counter(), 0.0
    bad = Path(path).with_name("bad" + Path(path).suffix)
    for case in range(n):
        if is_ckpt:
            bad.write_bytes(F.mutate_checkpoint(ckpt, raw, rng)[0])
        else:
            bad.write_bytes(F.forge_dnc(raw, rng) if case % 2 else F.mutate_bytes(raw, rng))
        for load in loaders:
            grown, outcome = _measured(lambda load=load: load(bad))
            worst = max(worst, grown)
            if load is loaders[0]:
                counts[outcome] += 1
    print(json.dumps({"good_mb": good, "peak_mb": worst, "counts": counts}))


def memory_section(n: int) -> str:
    from dnncompress.checkpoint import new_checkpoint
    from dnncompress.models import build_model
    from dnncompress.pack import save_packed
    from dnncompress.quantize_model import quantize
    from dnncompress.report import fp32_file_bytes
    from dnncompress.surgery import update_checkpoint
    from tests.test_fuzz import lenet5_ckpt

    model = build_model("vgg16")
    quantize(model, "fourval")
    vgg = update_checkpoint(new_checkpoint("vgg16", {}, build_model("vgg16").state_dict()), model)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for label, ckpt, entropy in (("LeNet-5 mixed, plain", lenet5_ckpt(), "none"), ("LeNet-5 mixed, Huffman", lenet5_ckpt(), "huffman"),
                                     ("VGG-16 (BN) fourval, plain", vgg, "none"), ("LeNet-5 mixed, checkpoint .pt", lenet5_ckpt(), None),
                                     ("VGG-16 (BN) fourval, checkpoint .pt", vgg, None)):
            fp32 = fp32_file_bytes(ckpt["state_dict"]) / 1e6
            if entropy is None:
                from dnncompress.checkpoint import save_checkpoint

                path = Path(d) / "m.pt"
                save_checkpoint(ckpt, path)
            else:
                path = Path(d) / "m.dnc"
                save_packed(ckpt, path, entropy=entropy)
            r = subprocess.run([sys.executable, __file__, "--memory-child", str(path), str(n)], capture_output=True, text=True, check=True)
            out = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append([label, f"{fp32:.2f}", f"{path.stat().st_size / 1e6:.2f}", f"{out['good_mb']:.1f}", n, f"{out['peak_mb']:.1f}",
                         f"{max(out['peak_mb'], out['good_mb']) / fp32:.2f}×", ", ".join(f"{k} {v}" for k, v in sorted(out["counts"].items()))])
    return (f"Each row: a fresh process imports what any file may make it import (torchvision's model list) and loads the good "
            "file once (first use initializes kernels and allocator arenas, about 17 MB whatever the file). Then every load is "
            "measured on its own: the growth of resident memory (sampled every 0.5 ms) above where it stood before that load; "
            f"generating the mutation is not counted. `.dnc` rows: `checkpoint_from_packed` and `report` of the good file, then of {n} "
            f"mutations (half re-signed). `.pt` rows: `load_checkpoint` of the good file, then of {n} mutations (half byte damage, "
            "half hostile dicts). Target: worst case ≤ 2× the model's fp32 size. At LeNet-5's 1.7 MB the allocator decides more "
            "than the file: whether freed arenas went back to the OS makes the same good-file load measure 0–4 MB from one "
            "process to the next; VGG-16 is the meaningful scale.\n\n"
            + table(["file", "fp32 MB", "file MB", "good file MB", "mutations", "worst mutation MB", "worst of both × fp32", "outcomes"], rows))


# ---------------------------------------------------------------- kill -9


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _cli(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dnncompress", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)


def _kill(args, cwd, delay):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "dnncompress", *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    time.sleep(delay)
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    return p.wait() == -signal.SIGKILL


def kill_section(kills: int) -> str:
    rows = []
    rng = random.Random(60)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "c.yaml").write_text("model: {arch: lenet5}\ndata: {name: mnist}\nstages:\n  - train: {epochs: 1}\n"
                                  "  - quantize: {scheme: codebook, bits: 4, codebook: dynamic, refit_every: 20}\n"
                                  "  - finetune: {epochs: 1, agp: {final: 0.8, every: 10}}\n  - pack: {entropy: huffman}\n")
        scenarios = {
            "train lenet5 (2 epochs)": ["train", "lenet5", "--data", "mnist", "--epochs", "2", "--device", "cpu", "--snapshot-every", "10"],
            "run: train → dynamic codebook → QAT + AGP → pack": ["run", "c.yaml", "--device", "cpu", "--snapshot-every", "10"],
        }
        for label, args in scenarios.items():
            is_run = args[0] == "run"
            ref_args = [*args, "output_dir=ref"] if is_run else [*args, "-o", "ref.pt"]
            t0 = time.perf_counter()
            assert _cli(ref_args, d).returncode == 0
            length = time.perf_counter() - t0
            landed = identical = torn = leftovers = 0
            for k in range(kills):
                out_args = [*args, f"output_dir=k{k}"] if is_run else [*args, "-o", f"k{k}.pt"]
                landed += _kill(out_args, d, rng.uniform(0.1, 0.95) * length)
                outs = sorted((d / f"k{k}").glob("*")) if is_run else [d / f"k{k}.pt"]
                for o in outs:
                    if o.is_file() and _cli(["eval", str(o), "--json"] if o.suffix == ".pt" else ["report", str(o)], d).returncode != 0:
                        torn += 1
                r = _cli([*out_args, "--resume"], d)
                assert r.returncode == 0, r.stderr
                if is_run:
                    same = all(_sha(d / f"k{k}" / n.name) == _sha(n) for n in sorted((d / "ref").iterdir()))
                else:
                    same = _sha(d / f"k{k}.pt") == _sha(d / "ref.pt")
                identical += same
                leftovers += len(list(d.rglob("*.tmp"))) + len(list(d.rglob(".*.resume")))
            rows.append([label, f"{length:.1f}", kills, landed, identical, torn, leftovers])
    return ("Each kill: SIGKILL at a seeded random moment in 10–95 % of the uninterrupted run's wall time (process start "
            "included), then the same command with `--resume`; the result is compared byte for byte with the uninterrupted "
            "run's (every stage output for `run`). Snapshots every 10 steps.\n\n"
            + table(["scenario", "uninterrupted s", "kills", "killed before the end", "byte-identical after resume",
                     "torn outputs", "temp/snapshot files left"], rows))


# ---------------------------------------------------------------- snapshot cost


def snapshot_section() -> str:
    from dnncompress.data import load_data
    from dnncompress.models import build_model
    from dnncompress.train import Snapshots, TrainSettings, train

    bundle = load_data("mnist")
    rows, size = [], 0
    with tempfile.TemporaryDirectory() as d:
        for every in (0, 200, 50, 10):
            times = []
            for _ in range(5):
                torch.manual_seed(0)
                model = build_model("lenet5")
                snaps = Snapshots(Path(d) / "s.snap", every) if every else None
                stats = train(model, bundle.train, TrainSettings(epochs=2, device="cpu"), snapshots=snaps)
                times.append(stats["seconds"])
                if snaps:
                    size = snaps.path.stat().st_size
            rows.append([every or "off", f"{min(times):.2f}", stats["steps"]])
        from dnncompress.train import _save_snapshot

        model = build_model("lenet5")
        opt = torch.optim.Adam(model.parameters())
        model(torch.randn(2, 1, 28, 28)).sum().backward()
        opt.step()
        state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
        snap = Snapshots(Path(d) / "t.snap")
        write_ms = 1e3 * min(timeit(lambda: _save_snapshot(snap, state), repeat=5, number=4) for _ in range(2))
    base = float(rows[0][1])
    for r in rows:
        r.append(f"{100 * (float(r[1]) / base - 1):+.1f} %")
    return ("LeNet-5 (431k parameters), Adam, 2 epochs on the embedded MNIST (250 steps), best of 5; each snapshot is written "
            f"atomically with fsync (plus one per epoch){f', {size / 1e6:.1f} MB each' if size else ''}.\n\n"
            + table(["snapshot every N steps", "train seconds", "steps", "cost vs off"], rows)
            + f"\n\nOne snapshot write alone (model + Adam state, serialize + write + fsync + rename), best median of 2×5: "
              f"**{write_ms:.1f} ms**; at the default of every 200 steps that is {write_ms / 200:.2f} ms per step. The whole-run "
              "rows above move by ±10 % between runs on this machine (2.3–2.8 s with snapshots off).")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["fuzz", "memory", "kill", "snapshots"], default=None)
    ap.add_argument("--dnc", type=int, default=5000)
    ap.add_argument("--ckpt", type=int, default=1000)
    ap.add_argument("--config", type=int, default=200)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--memory-cases", type=int, default=100)
    ap.add_argument("--memory-child", nargs=2, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.memory_child:
        return _memory_child(args.memory_child[0], int(args.memory_child[1]), 17)
    if args.only in (None, "fuzz"):
        write_section("trust_1_fuzz", "Fuzzing every reader (issue 9)", fuzz_section(args.dnc, args.ckpt, args.config), CMD + " --only fuzz")
    if args.only in (None, "memory"):
        write_section("trust_2_memory", "Peak memory under hostile files (issue 9)", memory_section(args.memory_cases),
                      CMD + " --only memory")
    if args.only in (None, "kill"):
        write_section("trust_3_kill", "kill -9, then --resume (issue 9)", kill_section(args.kills), CMD + " --only kill")
    if args.only in (None, "snapshots"):
        write_section("trust_4_snapshots", "What snapshots cost (issue 9)", snapshot_section(), CMD + " --only snapshots")
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    main()
