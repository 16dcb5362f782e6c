"""Incoherence rotation: the frame is orthogonal and fixed by the row length, every scalar scheme keeps
its storage contract in it, it costs no bytes, and it helps where a few columns carry huge weights."""
import pytest
import torch
import torch.nn as nn

from dnncompress.calibrate import calibrate
from dnncompress.errors import UserError
from dnncompress.pack import load_packed, save_packed
from dnncompress.prune.magnitude import prune
from dnncompress.quant import SCHEMES, ScalarQuantizer, make_quantizer, quantizer_from_storage
from dnncompress.quant.rotation import block_size, rotate, rotate_gram, signs, unrotate
from dnncompress.quantize_model import quantize
from dnncompress.report import report_packed

SCALAR = [s for s in SCHEMES.names() if issubclass(SCHEMES.get(s), ScalarQuantizer)]


@pytest.mark.parametrize("shape", [(7, 768), (5, 3072), (4, 3, 3, 3), (6, 12)])
def test_the_frame_is_orthogonal(shape):
    torch.manual_seed(0)
    w = torch.randn(*shape, dtype=torch.float64)
    r = rotate(w)
    assert r.shape == w.shape
    assert torch.allclose(unrotate(r), w, atol=1e-12)
    assert torch.allclose(r.norm(), w.norm())
    x = torch.randn(50, w[0].numel(), dtype=torch.float64)
    rows = w.reshape(w.shape[0], -1)
    assert torch.allclose(rows @ x.T, rotate(rows) @ rotate(x).T, atol=1e-10)  # (W R)(X R)ᵀ = W Xᵀ
    assert torch.allclose(rotate_gram(x.T @ x), rotate(x).T @ rotate(x), atol=1e-9)


def test_the_frame_is_fixed_by_the_row_length():
    assert torch.equal(signs(768), signs(768)) and not torch.equal(signs(768)[:100], signs(1000)[:100])
    assert set(signs(768).tolist()) == {-1.0, 1.0}
    assert (block_size(768), block_size(3072), block_size(27), block_size(8192 * 3)) == (256, 1024, 1, 4096)


@pytest.mark.parametrize("scheme", SCALAR)
def test_every_scalar_scheme_keeps_its_contract_rotated(scheme):
    torch.manual_seed(0)
    w = torch.randn(16, 64, requires_grad=True)
    q = make_quantizer(scheme, rotate=True).fit(w.detach())
    wq = q(w)
    st = q.storage(w.detach())
    assert st.meta["rotate"] is True
    back = quantizer_from_storage(st.meta, st.tables, tuple(w.shape))
    assert torch.equal(back.decode_storage(st.codes, tuple(w.shape), None), wq.detach())  # bit for bit
    assert not torch.equal(wq.detach(), make_quantizer(scheme).fit(w.detach())(w).detach())  # the frame changed something
    g = torch.randn_like(w)
    (wq * g).sum().backward()
    assert torch.allclose(w.grad, g, atol=1e-5)  # straight through the rotation: R·Rᵀ = I


def _outlier_layer():
    """A weight whose few columns are 30× the rest (the inputs a transformer's outlier features feed)."""
    torch.manual_seed(3)
    w = torch.randn(64, 256) * 0.02
    w[:, [5, 77, 190]] *= 30
    return w


def test_rotation_helps_where_a_few_columns_are_huge():
    w = _outlier_layer()
    err = {}
    for rot in (False, True):
        q = make_quantizer("codebook", bits=3, rotate=rot).fit(w)
        err[rot] = float((q(w) - w).norm() / w.norm())
    assert err[True] < 0.8 * err[False], err


def test_a_rotated_model_packs_loads_and_costs_no_extra_bytes(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    plain.load_state_dict(model.state_dict())
    quantize(model, "fourval", per_channel=True, rotate=True)
    quantize(plain, "fourval", per_channel=True)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        want = model.eval()(x)
    save_packed(model, tmp_path / "r.dnc")
    save_packed(plain, tmp_path / "p.dnc")
    fresh = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    with torch.no_grad():
        assert torch.equal(load_packed(tmp_path / "r.dnc", model=fresh)(x), want)
    layer_bytes = {p: sum(r["codes"] + r["tables"] for r in report_packed(tmp_path / p)["layers"]) for p in ("r.dnc", "p.dnc")}
    assert layer_bytes["r.dnc"] == layer_bytes["p.dnc"]


def test_calibration_solves_in_the_rotated_frame():
    torch.manual_seed(4)
    w = _outlier_layer()
    x = torch.randn(2000, 256)
    x[:, 77] *= 8  # an outlier input feature too
    errors = {}
    for rot in (False, True):
        layer = nn.Linear(256, 64, bias=False)
        layer.weight.data = w.clone()
        quantize(layer, "codebook", bits=3, rotate=rot)
        row = calibrate(layer, [x])[0]
        assert row["output_error_calibrated"] < row["output_error_data_free"]
        with torch.no_grad():
            out = layer(x)
        errors[rot] = float((out - x @ w.T).norm() / (x @ w.T).norm())
        assert abs(errors[rot] ** 2 - row["output_error_calibrated"]) < 0.02  # the error it reports is the layer's real one
    assert errors[True] < errors[False], errors


def test_act_order_is_an_option_and_both_orders_beat_rounding():
    torch.manual_seed(5)
    x = torch.randn(1500, 96) * torch.linspace(0.1, 5, 96)
    for order in (False, True):
        layer = nn.Linear(96, 32, bias=False)
        quantize(layer, "fourval", per_channel=True, group_size=32)
        row = calibrate(layer, [x], act_order=order)[0]
        assert row["output_error_calibrated"] < row["output_error_data_free"]


def test_rotation_refuses_what_it_cannot_keep():
    w = torch.randn(8, 16)
    mask = torch.rand_like(w) > 0.5
    with pytest.raises(UserError, match="unpruned"):
        make_quantizer("fourval", rotate=True).fit(w, mask)
    with pytest.raises(UserError, match="cannot be rotated"):
        make_quantizer("pq", rotate=True)
    with pytest.raises(UserError, match="true or false"):
        make_quantizer("ternary", rotate="yes")
    model = nn.Sequential(nn.Linear(16, 8))
    prune(model, 0.5)
    with pytest.raises(UserError, match="unpruned"):
        quantize(model, "codebook", rotate=True)


def test_cli_rotate_quantizes_fine_tunes_and_packs(in_tmp, tiny_ckpt):
    from click.testing import CliRunner

    from dnncompress.checkpoint import load_checkpoint
    from dnncompress.cli import main

    run = CliRunner().invoke
    r = run(main, ["quantize", str(tiny_ckpt), "--scheme", "codebook", "--bits", "3", "--rotate", "--data", "synthetic", "-o", "r.pt"])
    assert r.exit_code == 0, r.output
    assert load_checkpoint("r.pt")["quant"]["1"]["rotate"] is True
    r = run(main, ["finetune", "r.pt", "--epochs", "1", "--data", "synthetic", "-o", "rf.pt"])
    assert r.exit_code == 0, r.output
    r = run(main, ["pack", "rf.pt", "-o", "rf.dnc"])
    assert r.exit_code == 0, r.output
    r = run(main, ["eval", "rf.dnc", "--data", "synthetic", "--json"])
    assert r.exit_code == 0, r.output
