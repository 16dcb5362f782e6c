"""Pruning: exact counts, masks surviving every stage, AGP formula, auto budget, joint, bad input."""
import json

import pytest
import torch
from click.testing import CliRunner

from dnncompress.checkpoint import load_checkpoint
from dnncompress.cli import main
from dnncompress.errors import UserError
from dnncompress.pack import checkpoint_from_packed
from dnncompress.prune import AGPHook, agp_sparsity, prune
from dnncompress.prune.sensitivity import allocate
from dnncompress.surgery import compressible_layers, model_from_checkpoint


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(100, 50), torch.nn.ReLU(), torch.nn.Linear(50, 10))


def test_layer_scope_prunes_exact_counts_per_layer():
    model = net()
    rows = {r["layer"]: r for r in prune(model, 0.9, scope="layer")}
    assert rows["0"]["kept"] == 500 and rows["2"]["kept"] == 50
    assert int((model[0].weight == 0).sum()) == 4500
    assert torch.all(model[0].bias != 0)  # biases untouched


def test_global_scope_uses_one_threshold():
    model = net()
    with torch.no_grad():
        model[2].weight.mul_(10)  # the small layer now holds the large weights
    before = torch.cat([model[0].weight.detach().abs().flatten(), model[2].weight.detach().abs().flatten()])
    rows = {r["layer"]: r for r in prune(model, 0.9, scope="global")}
    assert rows["0"]["kept"] + rows["2"]["kept"] == 550
    assert rows["2"]["kept"] > 50  # global keeps more of the large-magnitude layer
    kept = torch.cat([model[0].parametrizations.weight[0].mask.flatten(), model[2].parametrizations.weight[0].mask.flatten()])
    assert before[~kept].max() <= before[kept].min()  # one threshold across both layers


def test_overrides_and_bad_sparsity():
    model = net()
    rows = {r["layer"]: r for r in prune(model, 0.5, overrides={"2": 0.8})}
    assert rows["0"]["sparsity"] == pytest.approx(0.5) and rows["2"]["sparsity"] == pytest.approx(0.8)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(UserError, match=r"\[0, 1\)"):
            prune(net(), bad)


def test_agp_schedule_matches_formula():
    s_i, s_f, t0, n, dt = 0.1, 0.9, 100, 10, 20
    assert agp_sparsity(50, s_i, s_f, t0, n, dt) == s_i
    assert agp_sparsity(t0 + n * dt + 5, s_i, s_f, t0, n, dt) == s_f
    for t in range(t0, t0 + n * dt, 7):
        assert agp_sparsity(t, s_i, s_f, t0, n, dt) == pytest.approx(s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3)
    values = [agp_sparsity(t, s_i, s_f, t0, n, dt) for t in range(0, 400)]
    assert values == sorted(values)  # monotone


def test_agp_hook_reaches_target_and_pruned_weights_never_regrow():
    from dnncompress.data import load_data
    from dnncompress.train import TrainSettings, train

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    layers = compressible_layers(model)
    hook = AGPHook(layers, {n: 0.8 for n in layers}, end=0.5, every=2)
    seen = []
    orig = hook.on_step

    def spy(step, total):
        orig(step, total)
        if "1" in layers and hasattr(model[1], "parametrizations"):
            seen.append(model[1].parametrizations.weight[0].mask.clone())

    hook.on_step = spy
    train(model, load_data("synthetic").train, TrainSettings(epochs=1, batch_size=32), hooks=[hook])
    final = model[1].parametrizations.weight[0].mask
    assert 1 - final.float().mean() == pytest.approx(0.8, abs=1e-3)
    for earlier, later in zip(seen, seen[1:]):
        assert not (later & ~earlier).any()  # a pruned weight never comes back
    assert torch.all(model[1].weight[~final] == 0)


def test_allocate_prefers_cheap_large_layers():
    curves = {"big": [(0.0, 0.0), (0.5, 0.0), (0.9, 0.1)], "small": [(0.0, 0.0), (0.5, 0.3), (0.9, 2.0)]}
    steps = allocate(curves, {"big": 1000, "small": 10}, budget=0.2)
    assert ("big", 0.9) in steps and all(n != "small" or s < 0.9 for n, s in steps)


def test_masks_survive_every_stage_through_the_cli(in_tmp, tiny_ckpt):
    r = CliRunner()
    assert r.invoke(main, ["prune", str(tiny_ckpt), "--sparsity", "0.8", "-o", "p.pt"]).exit_code == 0
    masks = load_checkpoint(in_tmp / "p.pt")["masks"]
    assert set(masks) == {"1", "3", "5"}
    assert r.invoke(main, ["finetune", "p.pt", "--epochs", "1", "-o", "f.pt"]).exit_code == 0
    assert r.invoke(main, ["quantize", "f.pt", "--scheme", "codebook", "--bits", "4", "--codebook", "dynamic", "-o", "q.pt"]).exit_code == 0
    assert r.invoke(main, ["finetune", "q.pt", "--epochs", "1", "-o", "qat.pt"]).exit_code == 0
    res = r.invoke(main, ["pack", "qat.pt", "-o", "m.dnc", "--entropy", "huffman"])
    assert res.exit_code == 0, res.output
    for path in ("f.pt", "q.pt", "qat.pt"):
        ck = load_checkpoint(in_tmp / path)
        assert all(torch.equal(ck["masks"][n], masks[n]) for n in masks), path
        model = model_from_checkpoint(ck).eval()
        for n, m in masks.items():
            assert torch.all(dict(model.named_modules())[n].weight[~m] == 0), (path, n)
    packed = checkpoint_from_packed(in_tmp / "m.dnc")
    assert all(torch.equal(packed["masks"][n], masks[n]) for n in masks)
    assert all(torch.all(packed["state_dict"][f"{n}.weight"][~m] == 0) for n, m in masks.items())


def test_auto_prune_stays_within_budget_and_records_history(in_tmp, tiny_ckpt):
    res = CliRunner().invoke(main, ["prune", str(tiny_ckpt), "--sparsity", "auto", "--max-drop", "1.0", "--plot", "s.png", "-o", "a.pt", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["overall_sparsity"] > 0.3
    assert (in_tmp / "s.png").exists()
    hist = load_checkpoint(in_tmp / "a.pt")["history"][-1]
    assert hist["stage"] == "prune" and "curves" in hist["result"]["auto"]
    drop = _val_drop(tiny_ckpt, in_tmp / "a.pt")  # the written checkpoint, re-evaluated on the split that chose it
    assert drop <= 1.0
    assert drop == pytest.approx(out["auto"]["measured_drop"], abs=1e-9)


def _val_drop(base_path, pruned_path) -> float:
    from dnncompress.data import load_data
    from dnncompress.train import evaluate

    base, pruned = load_checkpoint(base_path), load_checkpoint(pruned_path)
    val = load_data("synthetic", input_shape=tuple(base["dataset"]["input_shape"])).val
    accuracy = {k: evaluate(model_from_checkpoint(c).eval(), val)["accuracy"] for k, c in (("base", base), ("pruned", pruned))}
    return accuracy["base"] - accuracy["pruned"]


def test_auto_with_global_scope_writes_the_per_layer_allocation_it_measured(in_tmp, tiny_ckpt):
    res = CliRunner().invoke(main, ["prune", str(tiny_ckpt), "--sparsity", "auto", "--max-drop", "2.0", "--scope", "global",
                                    "-o", "g.pt", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    chosen = out["auto"]["targets"]
    written = {row["layer"]: row["sparsity"] for row in out["layers"]}
    for name, s in chosen.items():  # each layer got the sparsity the allocation gave it, not a global threshold's
        assert written[name] == pytest.approx(s, abs=1e-3)
    assert _val_drop(tiny_ckpt, in_tmp / "g.pt") == pytest.approx(out["auto"]["measured_drop"], abs=1e-9)


@pytest.mark.parametrize("args,needle", [
    (["--sparsity", "1.0"], "[0, 1)"), (["--sparsity", "lots"], "'auto'"), (["--sparsity", "auto", "--max-drop", "-1"], "max-drop"),
    (["--override", "x"], "PATTERN=SPARSITY"),
])
def test_prune_bad_input(in_tmp, tiny_ckpt, args, needle):
    res = CliRunner().invoke(main, ["prune", str(tiny_ckpt), *args, "-o", "o.pt"])
    assert res.exit_code == 2 and needle in res.output and len(res.output.strip().splitlines()) == 1
    assert not (in_tmp / "o.pt").exists()


def test_auto_without_data_is_a_clear_error(in_tmp):
    from dnncompress.checkpoint import new_checkpoint, save_checkpoint
    from dnncompress.models import build_model

    save_checkpoint(new_checkpoint("lenet300", {}, build_model("lenet300").state_dict()), in_tmp / "nodata.pt")
    res = CliRunner().invoke(main, ["prune", "nodata.pt", "--sparsity", "auto", "-o", "o.pt"])
    assert res.exit_code == 2 and "needs data" in res.output


def test_what_if_weights_are_restored_even_when_evaluation_fails():
    from dnncompress.surgery import shadow_weights_replaced, weight_key

    layer = torch.nn.Linear(4, 2)
    before = layer.weight.detach().clone()
    with pytest.raises(RuntimeError):
        with shadow_weights_replaced({layer: torch.zeros_like(before)}):
            assert torch.all(layer.weight == 0)
            raise RuntimeError("evaluation failed")
    assert torch.equal(layer.weight, before)
    assert weight_key("") == "weight" and weight_key("fc1") == "fc1.weight"


def test_a_large_accuracy_drop_is_warned_on_stderr(in_tmp, tiny_ckpt):
    res = CliRunner().invoke(main, ["prune", str(tiny_ckpt), "--sparsity", "0.995", "--scope", "layer", "-o", "w.pt", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    before = load_checkpoint(tiny_ckpt)["metrics"]["accuracy"]
    assert before - out["accuracy"] > 5
    assert "warning: pruning took test accuracy from" in res.stderr and "--sparsity auto" in res.stderr
    res = CliRunner().invoke(main, ["prune", str(tiny_ckpt), "--sparsity", "0.2", "-o", "ok.pt"])
    assert res.exit_code == 0 and "warning" not in res.stderr


def test_joint_keeps_its_target_on_the_real_file_or_says_missed(tmp_path):
    """The packed size of joint's output is measured: within the target, or MISSED in the result (and the history)."""
    from dnncompress.stages import Context, execute
    from dnncompress.stages.joint import JointParams
    from dnncompress.stages.training import TrainParams

    ctx = Context(data_name="synthetic", run_dir=str(tmp_path))
    base, _ = execute("train", TrainParams(arch="lenet300", epochs=1), None, tmp_path / "base.pt", ctx)
    grid = dict(sparsities=[0.0, 0.8, 0.95], bits=[2, 4], prune_epochs=1, qat_epochs=1, retries=1)
    logs = []
    _, res = execute("joint", JointParams(target_ratio=40, **grid), base, tmp_path / "j.pt", Context(run_dir=str(tmp_path), log=logs.append))
    assert res["target_met"] and res["packed_bytes"] <= res["target_bytes"] and "status" not in res
    from dnncompress.report import report_checkpoint

    assert report_checkpoint(load_checkpoint(tmp_path / "j.pt"), "huffman")["packed_bytes"] == res["packed_bytes"]
    # below the biases and the container alone: no choice of bits and sparsities reaches it
    _, res = execute("joint", JointParams(target_bytes=1500, **grid), base, tmp_path / "m.pt", Context(run_dir=str(tmp_path), log=logs.append))
    assert not res["target_met"] and res["status"].startswith("MISSED") and 1 <= len(res["attempts"]) <= 2
    assert any("MISSED" in m for m in logs)
    assert load_checkpoint(tmp_path / "m.pt")["history"][-1]["result"]["status"].startswith("MISSED")


def test_cli_joint_prints_its_choice_and_says_missed(in_tmp, tiny_ckpt):
    from click.testing import CliRunner

    from dnncompress.cli import main

    r = CliRunner().invoke(main, ["joint", str(tiny_ckpt), "--target-bytes", "1500", "--prune-epochs", "1", "--qat-epochs", "1",
                                  "--retries", "0", "-o", "j.pt"])
    assert r.exit_code == 0, r.output
    assert "MISSED" in r.stdout and "scan drop" in r.stdout  # the table, MISSED in its title
    assert "MISSED" in r.stderr and (in_tmp / "j.pt").exists()


def test_joint_rounds_rechoose_from_the_model_the_last_round_left(tmp_path):
    """rounds=2: the second allocation is scanned on the partly pruned model, and AGP starts where each layer is."""
    from dnncompress.stages import Context, execute
    from dnncompress.stages.joint import JointParams
    from dnncompress.stages.training import TrainParams

    ctx = Context(data_name="synthetic", run_dir=str(tmp_path))
    base, _ = execute("train", TrainParams(arch="lenet300", epochs=1), None, tmp_path / "base.pt", ctx)
    grid = dict(sparsities=[0.0, 0.8, 0.95], bits=[2, 4], prune_epochs=2, qat_epochs=1, retries=1)
    logs = []
    out, res = execute("joint", JointParams(target_ratio=40, rounds=2, **grid), base, tmp_path / "j.pt", Context(run_dir=str(tmp_path), log=logs.append))
    assert len(res["rounds"]) == 2 and res["rounds"][-1] == res["layers"]
    assert any("round 1/2" in m for m in logs)
    assert res["target_met"] or res["status"].startswith("MISSED")
    masks = out["masks"]
    for row in res["layers"]:  # what the last round chose is what the masks hold
        assert abs(float(1 - masks[row["layer"]].float().mean()) - row["sparsity"]) < 0.01
    with pytest.raises(UserError, match="prune epoch a round"):
        JointParams(rounds=3, prune_epochs=2)


def test_agp_starts_each_layer_where_it_is():
    import torch.nn as nn

    from dnncompress.prune import AGPHook

    torch.manual_seed(0)
    layers = {"a": nn.Linear(10, 10), "b": nn.Linear(10, 10)}
    hook = AGPHook(layers, {"a": 0.9, "b": 0.5}, initial={"a": 0.5, "b": 0.5}, end=0.5, every=1)
    hook.on_step(0, 100)
    from dnncompress.surgery import compression_of

    assert abs(float(1 - compression_of(layers["a"]).mask.float().mean()) - 0.5) < 0.011


def test_joint_searches_structured_and_unstructured_together(tmp_path):
    """With neurons candidates, each cut is scanned and allocated like the unpruned model; the best prediction that fits
    is what gets pruned and quantized, so the output carries both the smaller shapes and the masks."""
    from dnncompress.stages import Context, execute
    from dnncompress.stages.joint import JointParams
    from dnncompress.stages.training import TrainParams

    ctx = Context(data_name="synthetic", run_dir=str(tmp_path))
    base, _ = execute("train", TrainParams(arch="lenet300", epochs=1), None, tmp_path / "base.pt", ctx)
    grid = dict(sparsities=[0.0, 0.8, 0.95], bits=[2, 4], prune_epochs=1, qat_epochs=1, retries=1, neurons=[0.5, 0.9])
    out, res = execute("joint", JointParams(target_ratio=40, **grid), base, tmp_path / "j.pt", Context(run_dir=str(tmp_path)))
    trials = res["structured"]
    assert [t["neurons_removed"] for t in trials] == [0.0, 0.5, 0.9] and sum(t["chosen"] for t in trials) == 1
    chosen = next(t for t in trials if t["chosen"])
    assert chosen["predicted_accuracy"] == max(t["predicted_accuracy"] for t in trials if t["fits"])
    if chosen["neurons_removed"]:
        assert out["structure"] and out["masks"]
    assert res["target_met"] or res["status"].startswith("MISSED")
    with pytest.raises(UserError, match="fractions"):
        JointParams(neurons=[1.5])
