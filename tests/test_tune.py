"""Tuning after calibrated PTQ (dnncompress/tune.py): with every code fixed, per-row factors (folded into
the level tables), biases and norms are trained to match the unquantized model's outputs."""
import copy
import json

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

from dnncompress.cli import main
from dnncompress.errors import UserError
from dnncompress.pack import load_packed, save_packed
from dnncompress.quantize_model import quantize
from dnncompress.surgery import compression_of, shadow_weight
from dnncompress.tune import minibatches

from .test_calibrate import _Encoder, _tokens


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 48), nn.LayerNorm(48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 10)).eval()
    x = torch.randn(1024, 32) * torch.linspace(0.3, 3, 32)
    return net, x[:768], x[768:]


def _error(a, b, x):
    with torch.no_grad():
        return float(((a(x) - b(x)) ** 2).mean())


def _codes(model):
    out = {}
    for name, m in model.named_modules():
        comp = compression_of(m)
        if comp is not None and comp.quantizer is not None:
            out[name] = comp.quantizer.storage(shadow_weight(m).detach(), comp.mask).codes
    return out


@pytest.mark.parametrize("scheme,opts", [("fourval", {"per_channel": True}), ("fourval", {"per_channel": True, "rotate": True}),
                                         ("ternary", {"group_size": 16}), ("codebook", {"bits": 3, "per_channel": True}),
                                         ("codebook", {"bits": 2}), ("asym-ternary", {"per_channel": True})], ids=str)
def test_tuning_lowers_the_held_out_output_error_and_keeps_every_code(scheme, opts, tmp_path):
    net, calib, held = _net()
    cal, tuned = copy.deepcopy(net), copy.deepcopy(net)
    quantize(cal, scheme=scheme, calibration=calib, **opts)
    summary = quantize(tuned, scheme=scheme, calibration=calib, tune_epochs=8, **opts)
    assert summary.tuning["kept_epoch"] > 0 and summary.tuning["heldout_loss_after"] < summary.tuning["heldout_loss_before"]
    assert _error(tuned, net, held) < 0.97 * _error(cal, net, held)  # on inputs neither step saw
    before, after = _codes(cal), _codes(tuned)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    save_packed(cal, tmp_path / "cal.dnc")
    save_packed(tuned, tmp_path / "tuned.dnc")
    assert (tmp_path / "tuned.dnc").stat().st_size == (tmp_path / "cal.dnc").stat().st_size  # no bytes added
    fresh = load_packed(tmp_path / "tuned.dnc", model=copy.deepcopy(net))
    with torch.no_grad():
        assert torch.equal(fresh(held), tuned(held))  # the folded factors are in the file, exactly


def test_no_epoch_better_than_the_start_keeps_the_start():
    net, calib, held = _net()
    cal, tuned = copy.deepcopy(net), copy.deepcopy(net)
    quantize(cal, scheme="fourval", per_channel=True, calibration=calib)
    summary = quantize(tuned, scheme="fourval", per_channel=True, calibration=calib, tune_epochs=2, tune_lr=50.0)
    assert summary.tuning["kept_epoch"] == 0
    with torch.no_grad():
        assert torch.allclose(tuned(held), cal(held), atol=1e-6)


def test_same_input_same_seed_same_tuned_weights():
    net, calib, _ = _net()
    a, b = copy.deepcopy(net), copy.deepcopy(net)
    quantize(a, scheme="fourval", per_channel=True, calibration=calib, tune_epochs=2)
    quantize(b, scheme="fourval", per_channel=True, calibration=calib, tune_epochs=2)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_a_tokenizer_fed_model_is_tuned_on_trimmed_mini_batches():
    torch.manual_seed(0)
    net = _Encoder().eval()
    calib, held = _tokens(256, 1, length=20), _tokens(128, 2, length=20)
    chunks = minibatches([calib])
    assert len(chunks) == 8 and all(c["input_ids"].shape[1] == int(c["attention_mask"].sum(1).max()) for c in chunks)
    cal, tuned = copy.deepcopy(net), copy.deepcopy(net)
    quantize(cal, scheme="fourval", per_channel=True, include=["up", "down"], calibration=calib)
    quantize(tuned, scheme="fourval", per_channel=True, include=["up", "down"], calibration=calib, tune_epochs=10, tune_lr=3e-3)
    cos = torch.nn.functional.cosine_similarity
    with torch.no_grad():
        ref = net(**held)
        assert float(cos(tuned(**held), ref).mean()) > float(cos(cal(**held), ref).mean())


def test_tuning_needs_calibration_and_sane_settings():
    net, calib, _ = _net()
    with pytest.raises(UserError, match="needs calibration"):
        quantize(copy.deepcopy(net), scheme="fourval", tune_epochs=2)
    with pytest.raises(UserError, match="learning rate"):
        quantize(copy.deepcopy(net), scheme="fourval", calibration=calib, tune_epochs=1, tune_lr=-1.0)


def test_cli_tune_epochs(in_tmp, tiny_ckpt):
    runner = CliRunner()
    r = runner.invoke(main, ["quantize", str(tiny_ckpt), "--scheme", "fourval", "--per-channel", "--calibrate", "64",
                             "--tune-epochs", "2", "-o", "t.pt", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(next(line for line in r.output.splitlines() if line.startswith("{")))
    assert result["tuning"]["epochs"] == 2 and result["tuning"]["split"] == f"validation ({result['calibration']['samples']} samples)"
    r = runner.invoke(main, ["quantize", str(tiny_ckpt), "--scheme", "fourval", "--tune-epochs", "2", "-o", "u.pt"])
    assert r.exit_code == 2 and "--calibrate" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (in_tmp / "u.pt").exists()


def test_a_cnn_with_batch_norm_is_tuned_channel_by_channel(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, bias=False),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    net[1].running_mean.uniform_(-0.2, 0.2)
    net[1].running_var.uniform_(0.5, 2)
    x = torch.randn(320, 3, 8, 8)
    calib, held = x[:256], x[256:]
    cal, tuned = copy.deepcopy(net), copy.deepcopy(net)
    quantize(cal, scheme="fourval", per_channel=True, calibration=calib)
    summary = quantize(tuned, scheme="fourval", per_channel=True, calibration=calib, tune_epochs=10, tune_lr=3e-3)
    assert summary.tuning["kept_epoch"] > 0
    assert _error(tuned, net, held) < _error(cal, net, held)
    assert torch.equal(tuned[1].running_mean, net[1].running_mean)  # eval mode: the statistics stay as they were
    save_packed(tuned, tmp_path / "t.dnc")
    with torch.no_grad():
        assert torch.equal(load_packed(tmp_path / "t.dnc", model=copy.deepcopy(net))(held), tuned(held))
