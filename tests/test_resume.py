"""Runs survive a kill: snapshots hold everything training needs, a resumed run ends bit-identical
(same checkpoint bytes) to one never interrupted, `run --resume` skips complete stages, and a real
SIGKILL at seeded random moments never leaves a torn output."""
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dnncompress.stages import Context, execute
from dnncompress.stages.quantize import QuantizeParams
from dnncompress.stages.training import AGPParams, FinetuneParams, TrainParams


class Crash(Exception):
    pass


class CrashAt:
    """A hook that dies at step `n`, as a kill would (the snapshot before it is all that survives)."""

    def __init__(self, n):
        self.n = n

    def on_step(self, step, total):
        if step == self.n:
            raise Crash(step)


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def qat_input(tmp_path_factory):
    """A lenet300 on synthetic data, dynamic-codebook quantized (mean gradient, periodic re-fit)."""
    d = tmp_path_factory.mktemp("resume")
    ctx = Context(data_name="synthetic", run_dir=str(d))
    base, _ = execute("train", TrainParams(arch="lenet300", epochs=1), None, d / "base.pt", ctx)
    execute("quantize", QuantizeParams(scheme="codebook", bits=3, codebook="dynamic", grad="mean", refit_every=4), base, d / "q.pt", ctx)
    from dnncompress.checkpoint import load_checkpoint

    return load_checkpoint(d / "q.pt")


@pytest.mark.parametrize("crash_at", [5, 16, 29])
def test_crash_then_resume_is_bit_identical(qat_input, tmp_path, monkeypatch, crash_at):
    """QAT with AGP pruning and a re-fitting dynamic codebook: the hardest state to carry over."""
    import dnncompress.stages.training as training

    params = FinetuneParams(epochs=2, lr=1e-3, agp=AGPParams(final=0.6, every=3), seed=3)

    def ctx(resume):
        return Context(run_dir=str(tmp_path), resume=resume, snapshot_every=3)

    execute("finetune", params, qat_input, tmp_path / "ref.pt", ctx(False))
    original = training._model_hooks
    monkeypatch.setattr(training, "_model_hooks", lambda m: [*original(m), CrashAt(crash_at)])
    with pytest.raises(Crash):
        execute("finetune", params, qat_input, tmp_path / "out.pt", ctx(False))
    assert not (tmp_path / "out.pt").exists() and (tmp_path / ".out.pt.resume" / "finetune.snap").is_file()
    monkeypatch.setattr(training, "_model_hooks", original)
    logs = []
    c = ctx(True)
    c.log = logs.append
    execute("finetune", params, qat_input, tmp_path / "out.pt", c)
    assert any("continuing from step" in m for m in logs), logs
    assert _sha(tmp_path / "out.pt") == _sha(tmp_path / "ref.pt")
    assert not (tmp_path / ".out.pt.resume").exists()  # a complete output leaves no snapshots behind


def test_a_snapshot_of_another_run_is_not_used(qat_input, tmp_path, monkeypatch):
    import dnncompress.stages.training as training

    original = training._model_hooks
    monkeypatch.setattr(training, "_model_hooks", lambda m: [*original(m), CrashAt(10)])
    with pytest.raises(Crash):
        execute("finetune", FinetuneParams(epochs=1, seed=1), qat_input, tmp_path / "out.pt", Context(run_dir=str(tmp_path), snapshot_every=3))
    monkeypatch.setattr(training, "_model_hooks", original)
    logs = []
    c = Context(run_dir=str(tmp_path), resume=True, snapshot_every=3, log=logs.append)
    execute("finetune", FinetuneParams(epochs=1, seed=2), qat_input, tmp_path / "out.pt", c)  # another seed: another run
    assert any("belongs to another run" in m for m in logs), logs
    execute("finetune", FinetuneParams(epochs=1, seed=2), qat_input, tmp_path / "ref.pt", Context(run_dir=str(tmp_path)))
    assert _sha(tmp_path / "out.pt") == _sha(tmp_path / "ref.pt")


def test_joint_resumes_after_its_finished_phases(tmp_path, monkeypatch):
    import dnncompress.stages.training as training
    from dnncompress.stages.joint import JointParams

    ctx = Context(data_name="synthetic", run_dir=str(tmp_path), snapshot_every=4)
    base, _ = execute("train", TrainParams(arch="lenet300", epochs=1), None, tmp_path / "base.pt", ctx)
    p = JointParams(target_ratio=20, sparsities=[0.0, 0.5, 0.8], bits=[3, 5], prune_epochs=1, qat_epochs=1)
    execute("joint", p, base, tmp_path / "ref.pt", Context(run_dir=str(tmp_path), snapshot_every=4))
    calls = []
    real = training.finetune_model

    def crash_in_qat(ckpt, fp, c, extra_hooks=(), phase="finetune"):
        calls.append(phase)
        return real(ckpt, fp, c, [CrashAt(6)] if phase == "qat" else extra_hooks, phase)

    import dnncompress.stages.joint as joint_stage

    monkeypatch.setattr(joint_stage, "finetune_model", crash_in_qat)
    with pytest.raises(Crash):
        execute("joint", p, base, tmp_path / "out.pt", Context(run_dir=str(tmp_path), snapshot_every=4))
    monkeypatch.setattr(joint_stage, "finetune_model", lambda *a, **k: (calls.append(k.get("phase")), real(*a, **k))[1])
    calls.clear()
    logs = []
    execute("joint", p, base, tmp_path / "out.pt", Context(run_dir=str(tmp_path), resume=True, snapshot_every=4, log=logs.append))
    assert calls == ["qat"], calls  # the scan and the pruning phase were not run again
    assert any("phase 'scan' already done" in m for m in logs) and any("continuing from step" in m for m in logs), logs
    assert _sha(tmp_path / "out.pt") == _sha(tmp_path / "ref.pt")


# ---------------------------------------------------------------- real processes, real SIGKILL

CLI = [sys.executable, "-m", "dnncompress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(args, cwd, **kw):
    return subprocess.run([*CLI, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300, check=False, **kw)


def _kill_when_snapshotted(args, cwd, snap_dir: Path, delay: float) -> int:
    """Start the command, wait for its first snapshot, then SIGKILL it after `delay` seconds."""
    p = subprocess.Popen([*CLI, *args], cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while p.poll() is None and time.monotonic() < deadline and not any(snap_dir.glob("*.snap")):
        time.sleep(0.01)
    time.sleep(delay)
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    return p.wait()


def test_sigkill_at_random_moments_then_resume(tmp_path):
    args = ["train", "lenet300", "--data", "mnist", "--epochs", "1", "--device", "cpu", "--snapshot-every", "4"]
    assert _cli([*args, "-o", "ref.pt"], tmp_path).returncode == 0
    rng = random.Random(9)
    killed = 0
    for trial in range(3):
        out = f"k{trial}.pt"
        rc = _kill_when_snapshotted([*args, "-o", out], tmp_path, tmp_path / f".{out}.resume", rng.uniform(0.0, 0.4))
        killed += rc == -signal.SIGKILL
        if (tmp_path / out).exists():  # never torn: an output that exists is complete
            assert _cli(["eval", out, "--json"], tmp_path).returncode == 0
        r = _cli([*args, "-o", out, "--resume"], tmp_path)
        assert r.returncode == 0, r.stderr
        assert _sha(tmp_path / out) == _sha(tmp_path / "ref.pt"), f"trial {trial}: resumed weights differ"
    assert killed >= 2, "the kills landed after the runs had finished; nothing was tested"
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.glob(".*.resume"))


def test_run_resume_skips_complete_stages_after_a_kill(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {arch: lenet300}\ndata: {name: mnist}\nstages:\n  - train: {epochs: 1}\n"
                   "  - quantize: {scheme: fourval}\n  - finetune: {epochs: 2}\n  - pack: {entropy: huffman}\n")
    assert _cli(["run", "c.yaml", "output_dir=ref", "--device", "cpu"], tmp_path).returncode == 0
    args = ["run", "c.yaml", "output_dir=out", "--device", "cpu", "--snapshot-every", "5"]
    rc = _kill_when_snapshotted(args, tmp_path, tmp_path / "out" / ".02-finetune.pt.resume", 0.3)
    assert rc == -signal.SIGKILL
    train_mtime = (tmp_path / "out" / "00-train.pt").stat().st_mtime_ns
    r = _cli([*args, "--resume"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "[0] train: " in r.stderr and "skipped" in r.stderr and "continuing from step" in r.stderr, r.stderr
    assert (tmp_path / "out" / "00-train.pt").stat().st_mtime_ns == train_mtime  # an earlier stage's output is never rewritten
    for name in ("00-train.pt", "01-quantize.pt", "02-finetune.pt", "03-pack.dnc"):
        assert _sha(tmp_path / "out" / name) == _sha(tmp_path / "ref" / name), name
    r = _cli([*args, "--resume"], tmp_path)  # everything complete: nothing runs
    assert r.returncode == 0 and r.stderr.count("skipped") == 4, r.stderr


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PLANTED",))


def test_a_planted_snapshot_runs_no_code(qat_input, tmp_path, monkeypatch):
    """Snapshots load with weights_only=True: a pickle planted in the snapshot folder is refused, not run."""
    monkeypatch.chdir(tmp_path)
    snap_dir = tmp_path / ".out.pt.resume"
    snap_dir.mkdir()
    torch.save({"format": "dnncompress-snapshot", "evil": _Payload()}, snap_dir / "finetune.snap")
    logs = []
    c = Context(run_dir=str(tmp_path), resume=True, snapshot_every=3, log=logs.append)
    execute("finetune", FinetuneParams(epochs=1), qat_input, tmp_path / "out.pt", c)
    assert not (tmp_path / "PLANTED").exists() and any("unreadable" in m for m in logs), logs
