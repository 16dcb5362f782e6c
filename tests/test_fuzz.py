"""Seeded fuzz of every reader: .dnc files (half re-signed by a forger), checkpoints and configs.
Nothing may crash, hang, or load a damaged file as if it were whole (`benchmarks/trust_bench.py`
runs the same with thousands of cases)."""
import random

import pytest
import torch

from dnncompress.checkpoint import load_checkpoint, new_checkpoint, save_checkpoint
from dnncompress.config import load_config
from dnncompress.models import build_model
from dnncompress.pack import checkpoint_from_packed, save_packed
from dnncompress.report import report_packed
from dnncompress.surgery import update_checkpoint
from tests import fuzzing as F
from tests.test_config import CONFIGS
from tests.test_pack import linear_ckpt


def lenet5_ckpt():
    from dnncompress import prune_model, quantize

    torch.manual_seed(0)
    m = build_model("lenet5")
    prune_model(m, 0.8, exclude=["conv1"])
    quantize(m, "codebook", exclude=["fc1"], bits=4, overrides={"conv2": {"scheme": "fourval", "bits": 2, "per_channel": True}})
    return update_checkpoint(new_checkpoint("lenet5", {}, m.state_dict(), {"name": "mnist"}), m)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    out = {}
    for name, ckpt, entropy in (("linear-huffman", linear_ckpt(3000, "codebook", 0.4, bits=5), "huffman"),
                                ("lenet5-mixed", lenet5_ckpt(), "none")):
        path = d / f"{name}.dnc"
        save_packed(ckpt, path, entropy=entropy)
        out[name] = (path.read_bytes(), checkpoint_from_packed(path)["state_dict"], ckpt)
    return out


def _assert_clean(*tallies: F.Tally):
    for t in tallies:
        assert not any(t.counts[o] for o in F.Tally.BAD), t.problems[:5]


@pytest.mark.parametrize("base,cases", [("linear-huffman", 300), ("lenet5-mixed", 160)])
def test_dnc_fuzz_half_resigned(bases, base, cases, tmp_path):
    data, original, ckpt = bases[base]
    x = torch.randn(2, *((1, 1, 3000) if base.startswith("linear") else (1, 28, 28)))
    fits = F.fits_model(None, x.reshape(2, -1) if base.startswith("linear") else x)
    rng = random.Random(2024)
    loads, reports = F.Tally(base), F.Tally(f"{base} report")
    for case in range(cases):
        forged = case % 2 == 1
        path = tmp_path / "bad.dnc"
        path.write_bytes(F.forge_dnc(data, rng) if forged else F.mutate_bytes(data, rng))
        loads.add(case, F.judge(lambda: checkpoint_from_packed(path), lambda c: F.same_state(c["state_dict"], original),
                                fits if forged else None))
        if case % 4 == 0:
            reports.add(case, F.judge(lambda: report_packed(path), None, lambda r: None))
    _assert_clean(loads, reports)
    assert loads.counts["error"] > cases * 0.6, loads.counts  # nearly every damaged or forged file is refused


def test_checkpoint_fuzz(tmp_path):
    ckpt = lenet5_ckpt()
    save_checkpoint(ckpt, tmp_path / "ok.pt")
    raw = (tmp_path / "ok.pt").read_bytes()
    original = load_checkpoint(tmp_path / "ok.pt")["state_dict"]
    fits = F.fits_model(None, torch.randn(2, 1, 28, 28))
    rng = random.Random(7)
    loads = F.Tally("checkpoint")
    for case in range(150):
        path = tmp_path / "bad.pt"
        data, damaged = F.mutate_checkpoint(ckpt, raw, rng)
        path.write_bytes(data)
        loads.add(case, F.judge(lambda: load_checkpoint(path), lambda c: F.same_state(c["state_dict"], original),
                                None if damaged else fits))
    _assert_clean(loads)
    assert loads.counts["error"] > 75, loads.counts


def test_config_fuzz(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    texts = [p.read_text() for p in CONFIGS]
    rng = random.Random(11)
    loads = F.Tally("config")
    for case in range(100):
        path = tmp_path / "c.yaml"
        path.write_bytes(F.mutate_config(rng.choice(texts), rng))
        loads.add(case, F.judge(lambda: load_config(path), None, lambda cfg: None))
    _assert_clean(loads)
    assert loads.counts["error"] > 50, loads.counts
