"""Mixed precision under a byte budget: each layer's bits chosen by its effect on the model's output."""
import copy

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

from dnncompress.cli import main
from dnncompress.errors import UserError
from dnncompress.quantize_model import quantize
from dnncompress.surgery import compression_of


def model_and_data():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        m[2].weight.mul_(0.05)  # this layer's error barely reaches the output: it should get the fewest bits
    return m, torch.randn(256, 32)


def stored_bytes(model) -> int:
    from dnncompress.pack.layers import storage_bytes

    total = 0
    for module in model.modules():
        comp = compression_of(module)
        if comp is not None and comp.quantizer is not None:
            w = module.parametrizations.weight.original.detach()
            total += storage_bytes(comp.quantizer.storage(w, comp.mask))
    return total


def rel_error(model, ref, x) -> float:
    with torch.no_grad():
        return float((model(x) - ref).pow(2).sum() / ref.pow(2).sum())


def test_target_bits_fits_the_budget_and_beats_uniform_bits_at_fewer_bytes():
    m, x = model_and_data()
    with torch.no_grad():
        ref = m(x)
    n = sum(layer.weight.numel() for layer in (m[0], m[2], m[4]))
    mixed, uniform = copy.deepcopy(m), copy.deepcopy(m)
    summary = quantize(mixed, "codebook", calibration=x, target_bits=3)
    quantize(uniform, "codebook", bits=3, calibration=x)
    bits = {r["layer"]: r["bits"] for r in summary}
    assert bits["2"] == min(bits.values()) and len(set(bits.values())) > 1  # the quiet layer pays for the others
    assert stored_bytes(mixed) <= 3 * n / 8  # codes and tables within the budget
    assert stored_bytes(mixed) <= stored_bytes(uniform) + 64
    assert rel_error(mixed, ref, x) < rel_error(uniform, ref, x)


def test_a_layer_whose_override_sets_bits_keeps_them_and_skipped_layers_stay_fp32():
    m, x = model_and_data()
    summary = quantize(m, "codebook", calibration=x, target_bits=4, overrides={"0": {"bits": 8}, "4": {"skip": True}})
    bits = {r["layer"]: r["bits"] for r in summary}
    assert bits["0"] == 8 and "4" not in bits and compression_of(m[4]) is None


def test_target_bits_needs_data_and_a_scheme_with_a_bit_width(in_tmp, tiny_ckpt):
    m, x = model_and_data()
    with pytest.raises(UserError, match="calibration data"):
        quantize(copy.deepcopy(m), "codebook", target_bits=4)
    with pytest.raises(UserError, match="fixed one"):
        quantize(copy.deepcopy(m), "fourval", calibration=x, target_bits=4)
    with pytest.raises(UserError, match="positive"):
        quantize(copy.deepcopy(m), "codebook", calibration=x, target_bits=float("nan"))
    r = CliRunner().invoke(main, ["quantize", str(tiny_ckpt), "--scheme", "codebook", "--target-bits", "4", "-o", "q.pt"])
    assert r.exit_code == 2 and "--calibrate" in r.output and "\n" not in r.output.strip() and not (in_tmp / "q.pt").exists()


def test_cli_target_bits_records_the_allocation_chosen_on_validation(in_tmp, tiny_ckpt):
    import json

    r = CliRunner().invoke(main, ["quantize", str(tiny_ckpt), "--scheme", "codebook", "--target-bits", "3.5", "--calibrate", "64",
                                  "-o", "q.pt", "--json"])
    assert r.exit_code == 0, r.output
    alloc = json.loads(r.stdout)["allocation"]
    assert alloc["chosen_on"].startswith("validation") and alloc["target_bits"] == 3.5
    assert set(alloc["bits"].values()) <= {2, 3, 4, 5, 6, 8}
