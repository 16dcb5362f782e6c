"""Quantization-aware fine-tuning: STE training, codebook modes, masks, any nn.Module, CLI."""
import json

import pytest
import torch
from click.testing import CliRunner

import dnncompress
from dnncompress.checkpoint import load_checkpoint, save_checkpoint
from dnncompress.cli import main
from dnncompress.data import load_data
from dnncompress.surgery import attach, compression_of, model_from_checkpoint
from dnncompress.train import TrainSettings, train

from .optional import needs_torchvision


def _codebook_levels_after_training(mode):
    torch.manual_seed(0)
    data = load_data("synthetic")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    dnncompress.quantize(model, scheme="codebook", bits=3, mode=mode, zero=True)
    q = compression_of(model[1]).quantizer
    before = q.levels.detach().clone()
    train(model, data.train, TrainSettings(epochs=1, lr=1e-2, batch_size=64))
    return before, q.levels.detach().clone(), model


def test_static_codebook_never_moves_dynamic_does_and_keeps_its_zero():
    before, after, _ = _codebook_levels_after_training("static")
    assert torch.equal(before, after)
    before, after, model = _codebook_levels_after_training("dynamic")
    assert not torch.equal(before, after)
    assert (after == 0).sum() == 1 and (before == 0).sum() == 1
    assert torch.unique(model[1].weight).numel() <= 8


def test_dynamic_refit_every_n_steps_moves_values_to_kmeans():
    from dnncompress.quant.kmeans import kmeans_1d, sse

    torch.manual_seed(0)
    layer = torch.nn.Linear(100, 50)
    dnncompress.quantize(layer, scheme="codebook", bits=3, mode="dynamic", refit_every=1)
    q = compression_of(layer).quantizer
    w = layer.parametrizations.weight.original.detach()
    with torch.no_grad():
        q.levels.data += 0.02  # move the values off the k-means optimum
    shifted = sse(w, q.levels.detach()[0])
    layer.train()
    _ = layer.weight  # a forward pass records the weights
    q.on_step(1, 10)
    refit = sse(w, q.levels.detach()[0])
    assert refit < 0.9 * shifted
    assert refit <= 1.02 * sse(w, kmeans_1d(w, 8))  # Lloyd from a warm start: near the k-means optimum


@needs_torchvision
def test_any_module_torchvision_quantize_finetune():
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    summary = dnncompress.quantize(model, scheme="fourval", exclude=["conv1", "fc"])
    names = {row["layer"] for row in summary}
    assert "layer1.0.conv1" in names and "conv1" not in names and "fc" not in names
    assert all(row["distinct_values"] <= 4 for row in summary)
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert model.layer1[0].conv1.parametrizations.weight.original.grad is not None


def test_overrides_by_pattern():
    model = torch.nn.Sequential(torch.nn.Linear(20, 20), torch.nn.Linear(20, 5))
    summary = dnncompress.quantize(model, scheme="codebook", bits=3, overrides={"0": {"bits": 8}, "1": {"scheme": "fourval", "bits": 2}})
    by = {r["layer"]: r for r in summary}
    assert by["0"]["bits"] == 8 and by["1"]["scheme"] == "fourval"


def test_masks_stay_zero_through_quantize_and_qat(in_tmp, tiny_ckpt):
    ckpt = load_checkpoint(tiny_ckpt)
    w = ckpt["state_dict"]["1.weight"]
    mask = w.abs() > w.abs().median()
    model = model_from_checkpoint(ckpt)
    attach(model[1], mask=mask)
    from dnncompress.surgery import update_checkpoint

    save_checkpoint(update_checkpoint(ckpt, model), in_tmp / "masked.pt")
    r = CliRunner().invoke(main, ["quantize", "masked.pt", "--scheme", "fourval", "-o", "q.pt", "--json"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["finetune", "q.pt", "--epochs", "1", "-o", "qat.pt", "--l2", "1e-5"])
    assert r.exit_code == 0, r.output
    out = load_checkpoint(in_tmp / "qat.pt")
    assert torch.equal(out["masks"]["1"], mask)
    model = model_from_checkpoint(out).eval()
    assert torch.all(model[1].weight[~mask] == 0)
    assert torch.unique(model[1].weight[mask]).numel() <= 4
    r = CliRunner().invoke(main, ["eval", "qat.pt", "--json"])
    layers = json.loads(r.stdout)["layers"]
    assert {row["layer"] for row in layers} == {"1", "3", "5"} and all(row["scheme"] == "fourval" for row in layers)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--scheme", "fourvla"], "did you mean 'fourval'"),
        (["--scheme", "codebook", "--bits", "12"], "2–8 bits"),
        (["--scheme", "fourval", "--zero"], "no zero option"),
        (["--scheme", "ternary", "--per-channel", "--bits", "4"], "takes 2 bits"),
        (["--scheme", "fourval", "--override", "nonsense"], "PATTERN:key=value"),
    ],
)
def test_quantize_bad_input(in_tmp, tiny_ckpt, args, needle):
    r = CliRunner().invoke(main, ["quantize", str(tiny_ckpt), *args, "-o", "out.pt"])
    assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (in_tmp / "out.pt").exists()


def test_dynamic_codebook_mean_gradient_ignores_pruned_weights():
    """grad: mean divides each value's summed gradient by its kept weights only: with d(loss)/dw = 1 at every
    kept weight, every used value's gradient is exactly 1, however many pruned weights sit next to it."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(40, 20)
    dnncompress.prune_model(layer, sparsity=0.6)
    dnncompress.quantize(layer, scheme="codebook", bits=2, mode="dynamic", grad="mean", zero=False)
    q = compression_of(layer).quantizer
    layer.train()
    layer.weight.sum().backward()
    mask = compression_of(layer).mask.bool()
    used = torch.unique(q._last_codes[mask]).long()  # codes are bytes: a uint8 index would be a mask
    assert torch.allclose(q.levels.grad[0, used], torch.ones(len(used)))


def test_evaluate_fake_quantizes_each_layer_once_and_gives_the_same_result(monkeypatch):
    """evaluate caches the parametrized weights (torch's parametrize.cached): the weights cannot change
    there, so every batch sees the same quantized values, computed once per layer instead of per batch."""
    from torch.utils.data import TensorDataset

    from dnncompress.models import build_model
    from dnncompress.surgery import CompressedWeight
    from dnncompress.train import evaluate

    torch.manual_seed(0)
    model = build_model("lenet5")
    dnncompress.quantize(model, scheme="codebook", bits=4)
    data = TensorDataset(torch.randn(60, 1, 28, 28), torch.randint(0, 10, (60,)))
    calls = []
    original = CompressedWeight.forward

    def counted(self, w):
        calls.append(1)
        return original(self, w)

    monkeypatch.setattr(CompressedWeight, "forward", counted)
    result = evaluate(model, data, batch_size=10)  # 6 batches, 4 quantized layers
    assert len(calls) == 4
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x) for x in data.tensors[0].split(10)])
    assert result["accuracy"] == 100.0 * int((logits.argmax(1) == data.tensors[1]).sum()) / 60
