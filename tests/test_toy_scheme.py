"""The seam proves itself: a scheme defined in this test directory (tests/toy_scheme.py, 1-bit
sign·α) quantizes, trains (QAT), packs, unpacks, loads and reports through the public API and
the CLI, with no edit to any file under dnncompress/."""
import json

import torch
from click.testing import CliRunner
from torch.utils.data import TensorDataset

import tests.toy_scheme  # noqa: F401  (registers 'test-sign')
from dnncompress import load_checkpoint, load_packed, quantize, save_checkpoint, save_packed
from dnncompress.checkpoint import new_checkpoint
from dnncompress.cli import main
from dnncompress.models import build_model
from dnncompress.prune.magnitude import prune
from dnncompress.report import report_packed
from dnncompress.surgery import effective_state_dict, update_checkpoint
from dnncompress.train import TrainSettings, evaluate, train


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    return TensorDataset(x, (x.mean((1, 2, 3)) > 0).long())


def test_toy_scheme_through_the_whole_pipeline(in_tmp):
    torch.manual_seed(0)
    model = build_model("lenet300")
    prune(model, 0.5)
    summary = quantize(model, scheme="test-sign")
    assert {r["scheme"] for r in summary} == {"test-sign"}
    data = _data()
    result = train(model, data, TrainSettings(epochs=1, batch_size=64, device="cpu"))  # QAT: the STE moves the shadow weights
    assert result["steps"] > 0
    model.eval()
    for name, w in effective_state_dict(model).items():
        if name.endswith("weight") and w.dim() == 2:
            assert torch.unique(w).numel() <= 3  # ±α and the pruned zeros
    ckpt = update_checkpoint(new_checkpoint("lenet300", {}, {}), model)
    save_checkpoint(ckpt, "q.pt")
    assert load_checkpoint("q.pt")["quant"]["1"]["scheme"] == "test-sign"  # the scheme vets its own state
    info = save_packed(model, "m.dnc", arch="lenet300")
    rep = report_packed("m.dnc")
    assert rep["packed_bytes"] == info["bytes"] == (in_tmp / "m.dnc").stat().st_size
    fc1 = next(r for r in rep["layers"] if r["layer"] == "1")
    assert fc1["scheme"] == "test-sign" and fc1["bits"] == 1 and fc1["tables"] == 4  # one α
    kept = int(ckpt["masks"]["1"].sum())
    assert fc1["codes"] == ((kept + 31) // 32) * 4  # one bit per kept weight
    loaded = load_packed("m.dnc")
    x = data.tensors[0][:32]
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert evaluate(loaded, data)["accuracy"] == evaluate(model, data)["accuracy"]
    runner = CliRunner()
    r = runner.invoke(main, ["unpack", "m.dnc", "-o", "back.pt", "--json"])
    assert r.exit_code == 0, r.output
    back = load_checkpoint(json.loads(r.output)["output"])
    assert back["quant"]["1"]["scheme"] == "test-sign"
    r = runner.invoke(main, ["report", "m.dnc", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["packed_bytes"] == info["bytes"]
