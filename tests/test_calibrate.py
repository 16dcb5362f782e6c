"""Calibrated post-training quantization: each layer minimizes its output error on captured inputs
with the scheme's own levels, so the model's outputs stay closer to fp32 than a data-free fit."""
import copy
import json

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

from dnncompress.calibrate import gptq
from dnncompress.cli import main
from dnncompress.errors import UserError
from dnncompress.prune.magnitude import prune
from dnncompress.quant import make_quantizer
from dnncompress.quantize_model import quantize


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10))
    x = torch.randn(768, 1, 8, 8)
    x[:, :, :, :4] *= 3  # correlated, uneven inputs: where the output error differs from the weight error
    return net.eval(), x[:512], x[512:]


def _cosine(a, b, x):
    with torch.no_grad():
        return float(torch.nn.functional.cosine_similarity(a(x), b(x), dim=1).mean())


@pytest.mark.parametrize("scheme,opts", [("fourval", {}), ("ternary", {}), ("asym-quaternary", {}), ("codebook", {"bits": 2}),
                                         ("fourval", {"per_channel": True})], ids=str)
def test_calibrated_outputs_are_closer_to_fp32_on_held_out_inputs(scheme, opts):
    net, calib, held_out = _net()
    free, cal = copy.deepcopy(net), copy.deepcopy(net)
    quantize(free, scheme=scheme, **opts)
    rows = quantize(cal, scheme=scheme, calibration=calib, **opts)
    assert all(r["output_error_calibrated"] <= r["output_error_data_free"] + 1e-12 for r in rows)  # never worse, layer by layer
    assert sum(r["output_error_calibrated"] for r in rows) < 0.8 * sum(r["output_error_data_free"] for r in rows)
    assert _cosine(cal.eval(), net, held_out) > _cosine(free.eval(), net, held_out)


def test_gptq_uses_only_the_schemes_levels_and_keeps_pruned_zeros():
    torch.manual_seed(1)
    w = torch.randn(16, 40)
    mask = torch.rand_like(w) > 0.3
    x = torch.randn(500, 40)
    q = make_quantizer("fourval", per_channel=True).fit(w, mask)
    out = gptq(w * mask, 2 * x.t() @ x / 500, q, mask)
    assert torch.all(out[~mask] == 0)
    levels = q.levels
    for r in range(16):
        assert set(out[r][mask[r]].tolist()) <= set(levels[r].tolist())


def test_pruned_model_stays_pruned_after_calibration():
    net, calib, _ = _net()
    prune(net, 0.5)
    quantize(net, scheme="fourval", calibration=calib)
    from dnncompress.surgery import effective_state_dict, masks_of

    state, masks = effective_state_dict(net), masks_of(net)
    for name, m in masks.items():
        assert torch.all(state[f"{name}.weight"][~m] == 0)


def test_bad_calibration_data():
    net, _, _ = _net()
    with pytest.raises(UserError, match="calibration"):
        quantize(copy.deepcopy(net), scheme="fourval", calibration=[])
    with pytest.raises(UserError, match="calibration data must be"):
        quantize(copy.deepcopy(net), scheme="fourval", calibration=["not a tensor"])


def test_cli_calibrate_uses_the_validation_split(in_tmp, tiny_ckpt):
    runner = CliRunner()
    r = runner.invoke(main, ["quantize", str(tiny_ckpt), "--scheme", "fourval", "--calibrate", "32", "-o", "c.pt", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(next(line for line in r.output.splitlines() if line.startswith("{")))
    assert result["calibration"] == {"samples": 32, "split": "validation"}
    r = runner.invoke(main, ["quantize", str(tiny_ckpt), "--scheme", "fourval", "--calibrate", "64", "--val-split", "0", "-o", "d.pt"])
    assert r.exit_code == 2 and "validation split" in r.output and not (in_tmp / "d.pt").exists()


def test_a_conv_that_pads_inside_forward_keeps_its_data_free_fit():
    import torch.nn.functional as F

    class SamePad(nn.Conv2d):
        def forward(self, x):
            return super().forward(F.pad(x, (1, 1, 1, 1)))

    torch.manual_seed(0)
    net = nn.Sequential(SamePad(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()
    rows = {r["layer"]: r for r in quantize(net, scheme="fourval", calibration=torch.randn(64, 1, 8, 8))}
    assert "output_error_calibrated" not in rows["0"]  # its unfolded input would not match: skipped, not miscalibrated
    assert "output_error_calibrated" in rows["3"]


def test_calibration_with_group_wise_scales():
    net, calib, held_out = _net()
    free, cal = copy.deepcopy(net), copy.deepcopy(net)
    quantize(free, scheme="fourval", group_size=32)
    rows = quantize(cal, scheme="fourval", group_size=32, calibration=calib)
    assert any("output_error_calibrated" in r for r in rows)
    assert _cosine(cal.eval(), net, held_out) > _cosine(free.eval(), net, held_out)


class _Encoder(nn.Module):
    """A tokenizer-fed model: keyword inputs, (batch, tokens, dim) activations, a LayerNorm, masked mean pooling."""

    def __init__(self, vocab=40, dim=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids)
        h = self.norm(h + self.down(torch.relu(self.up(h))))
        m = attention_mask.unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1)


def _tokens(n, seed, length=12):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (n, length), generator=gen)
    lengths = torch.randint(3, length + 1, (n,), generator=gen)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def test_dict_batches_calibrate_a_tokenizer_fed_model():
    torch.manual_seed(0)
    net = _Encoder().eval()
    calib, held = _tokens(256, 1), _tokens(128, 2)
    free, cal = copy.deepcopy(net), copy.deepcopy(net)
    quantize(free, scheme="codebook", bits=2, include=["up", "down"])
    rows = quantize(cal, scheme="codebook", bits=2, include=["up", "down"], calibration=calib)
    assert [r["layer"] for r in rows] == ["up", "down"] and all("output_error_calibrated" in r for r in rows)
    with torch.no_grad():
        ref, a, b = net(**held), free(**held), cal(**held)
    cos = torch.nn.functional.cosine_similarity
    assert float(cos(b, ref).mean()) > float(cos(a, ref).mean())


def test_padding_named_by_the_attention_mask_costs_nothing():
    """Whatever sits at padded positions, the calibrated weights are the same."""
    torch.manual_seed(0)
    net = _Encoder().eval()
    calib = _tokens(128, 3)
    other = {"input_ids": calib["input_ids"] + (1 - calib["attention_mask"]) * 7, "attention_mask": calib["attention_mask"]}
    a, b = copy.deepcopy(net), copy.deepcopy(net)
    quantize(a, scheme="fourval", per_channel=True, include=["up", "down"], calibration=calib)
    quantize(b, scheme="fourval", per_channel=True, include=["up", "down"], calibration=other)
    for name in ("up", "down"):
        assert torch.equal(getattr(a, name).weight, getattr(b, name).weight)


def test_one_pass_equals_a_pass_per_layer():
    """Joinable batches take one forward pass; batches of different shapes one pass per layer; same answer."""
    from dnncompress import calibrate as C

    net, calib, _ = _net()
    one, per = copy.deepcopy(net), copy.deepcopy(net)
    for m in (one, per):
        quantize(m, scheme="codebook", bits=3)
    targets = lambda m: {mod: n for n, mod in m.named_modules() if C.calibratable(mod)}  # noqa: E731
    solve = {"damp": 0.01, "refit": True, "act_order": True}
    C._one_pass(one, targets(one), calib, "auto", solve)
    C._pass_per_layer(per, targets(per), list(calib.split(100)), "auto", solve)
    for a, b in zip(one.parameters(), per.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def test_relative_weighting_ignores_how_large_a_token_is():
    """With relative weighting every input row counts alike: scaling one token's input by 100 changes nothing."""
    from dnncompress.calibrate import _Gram

    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    x = torch.randn(2, 10, 8)
    y = x.clone()
    y[0, 3] *= 100
    grams = []
    for inp in (x, y):
        g = _Gram(layer, weighting="relative")
        g.add(inp, layer(inp))
        grams.append(g.result())
    assert torch.allclose(grams[0], grams[1])
    plain = _Gram(layer, weighting="plain")
    plain.add(y, layer(y))
    assert not torch.allclose(plain.result(), grams[1])


def test_unknown_weighting_is_refused():
    net, calib, _ = _net()
    with pytest.raises(UserError, match="weighting"):
        quantize(net, scheme="fourval", calibration=calib, calibration_options={"weighting": "loud"})


def test_depthwise_and_grouped_convs_are_calibrated_group_by_group():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Flatten(), nn.Linear(8 * 36, 5)).eval()
    x = torch.randn(300, 3, 6, 6)
    x[:, 0] *= 4
    for scheme, opts in (("fourval", {"per_channel": True}), ("codebook", {"bits": 2}), ("ternary", {"group_size": 9})):
        free, cal = copy.deepcopy(net), copy.deepcopy(net)
        quantize(free, scheme=scheme, **opts)
        rows = {r["layer"]: r for r in quantize(cal, scheme=scheme, calibration=x[:200], **opts)}
        for layer in ("2", "4"):
            assert rows[layer]["output_error_calibrated"] <= rows[layer]["output_error_data_free"]
        assert any(rows[layer]["output_error_calibrated"] < rows[layer]["output_error_data_free"] for layer in ("2", "4"))
        assert _cosine(cal, net, x[200:]) > _cosine(free, net, x[200:])
