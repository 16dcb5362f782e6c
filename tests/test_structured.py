"""Structured pruning: whole units go, the model shrinks, and every file carries the smaller shapes."""
import json

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

import dnncompress
from dnncompress.checkpoint import load_checkpoint
from dnncompress.cli import main
from dnncompress.errors import UserError
from dnncompress.models import build_model
from dnncompress.models.structure import apply_structure
from dnncompress.pack import load_packed, save_packed
from dnncompress.prune.structured import structured_prune


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5))


def test_removing_all_zero_units_keeps_outputs_identical():
    """Neurons whose weights, bias and outgoing weights are zero contribute nothing: removing exactly them
    (the lowest-norm units) must leave every output bit-identical."""
    model = mlp().eval()
    dead = [1, 4, 9, 13]
    with torch.no_grad():
        model[1].weight[dead] = 0
        model[1].bias[dead] = 0
        model[3].weight[:, dead] = 0
    x = torch.randn(7, 20)
    ref = model(x)
    info = structured_prune(model, x, unit="neuron", amount=0.25, include=["1"])
    assert model[1].out_features == 12 and model[3].in_features == 12 and model[3].out_features == 12
    assert info["removed"] == {"1": {"out_features": 16}, "3": {"in_features": 16}}
    assert torch.equal(model(x), ref)


def test_removing_dead_filters_with_batchnorm_keeps_outputs_identical():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(6 * 6 * 6, 4)).eval()
    dead = [0, 5]
    with torch.no_grad():
        model[0].weight[dead] = 0
        model[0].bias[dead] = 0
        model[1].weight[dead] = 0
        model[1].bias[dead] = 0
        model[3].weight[:, dead] = 0
    x = torch.randn(2, 3, 8, 8)
    ref = model(x)
    structured_prune(model, x, unit="channel", amount=0.25, include=["0"])
    assert model[0].out_channels == 6 and model[1].num_features == 6 and model[3].in_channels == 6
    assert torch.allclose(model(x), ref, atol=1e-6)


def test_pruned_resnet_keeps_consistent_shapes_and_its_files_rebuild_it(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    info = structured_prune(model, x, flops=0.5)
    assert info["flops_after"] <= 0.5 * info["flops_before"] and info["params_after"] < info["params_before"]
    assert model(x).shape == (2, 10)
    for block in (b for layer in (model.layer1, model.layer2, model.layer3) for b in layer):  # the residual stream stays whole
        assert block.conv2.out_channels == block.bn2.num_features == block.conv1.in_channels * (2 if block.conv1.stride[0] == 2 else 1)
        assert block.conv1.out_channels == block.bn1.num_features == block.conv2.in_channels < 64
    fresh = apply_structure(build_model("resnet20"), info["structure"])
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.eval()(x), model(x))
    dnncompress.quantize(model, scheme="fourval", exclude=["conv1", "fc"])
    save_packed(model, tmp_path / "m.dnc", arch="resnet20")
    loaded = load_packed(tmp_path / "m.dnc")
    assert loaded.layer3[0].conv1.out_channels == model.layer3[0].conv1.out_channels
    assert torch.allclose(loaded(x), model.eval()(x), atol=1e-5)


def test_load_packed_shrinks_a_user_built_module(tmp_path):
    model = mlp()
    structured_prune(model, torch.randn(2, 20), unit="neuron", amount=0.5)
    dnncompress.quantize(model, scheme="codebook", bits=4)
    save_packed(model, tmp_path / "u.dnc")
    x = torch.randn(3, 20)
    out = load_packed(tmp_path / "u.dnc", model=mlp())  # the user's full-size module, shrunk from the file
    assert out[1].out_features == 8 and out[3].in_features == 8
    assert torch.allclose(out(x), model.eval()(x), atol=1e-6)


def test_a_structure_can_only_shrink_a_model():
    for bad in ({"1": {"in_features": 20, "out_features": 17}}, {"1": {"out_feature": 3}}, {"1": {}}, {"9": {"in_features": 1, "out_features": 1}},
                {"1": {"in_features": 20, "out_features": 0}}, {"1": {"in_features": 20, "out_features": True}}):
        with pytest.raises(UserError, match="structure|between"):
            apply_structure(mlp(), bad, "f.dnc")


def test_cli_structured_prune_then_quantize_pack_eval(in_tmp, tiny_ckpt):
    runner = CliRunner()
    r = runner.invoke(main, ["prune", str(tiny_ckpt), "--structured", "neuron", "--flops", "0.5", "-o", "s.pt", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["flops_removed"] >= 0.5 and out["params_after"] < out["params_before"]
    ckpt = load_checkpoint(in_tmp / "s.pt")
    assert ckpt["structure"] and ckpt["state_dict"]["1.weight"].shape[0] < 300
    for cmd in (["prune", "s.pt", "--sparsity", "0.5", "-o", "sp.pt"], ["quantize", "sp.pt", "--scheme", "ternary", "-o", "q.pt"],
                ["pack", "q.pt", "-o", "q.dnc"]):
        r = runner.invoke(main, cmd)
        assert r.exit_code == 0, r.output
    a = json.loads(runner.invoke(main, ["eval", "q.pt", "--json"]).stdout)
    b = json.loads(runner.invoke(main, ["eval", "q.dnc", "--json"]).stdout)
    assert a["accuracy"] == b["accuracy"]
    r = runner.invoke(main, ["prune", "q.pt", "--structured", "channel", "-o", "again.pt"])  # structured goes first
    assert r.exit_code == 2 and "goes first" in r.output and not (in_tmp / "again.pt").exists()
    r = runner.invoke(main, ["prune", str(tiny_ckpt), "--flops", "0.5", "-o", "x.pt"])
    assert r.exit_code == 2 and "--structured" in r.output and not (in_tmp / "x.pt").exists()


def test_cli_structured_auto_chooses_on_validation_within_budget(in_tmp, tiny_ckpt):
    r = CliRunner().invoke(main, ["prune", str(tiny_ckpt), "--structured", "neuron", "--sparsity", "auto", "--max-drop", "2",
                                  "-o", "a.pt", "--json"])
    assert r.exit_code == 0, r.output
    auto = json.loads(r.stdout)["auto"]
    assert auto["chosen_on"].startswith("validation") and auto["measured_drop"] <= 2
    assert all(t["val_drop"] <= 2 for t in auto["trials"][:-1])
