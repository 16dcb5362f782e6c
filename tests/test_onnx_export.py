"""ONNX export: the compressed model, dense or with its codes kept, runs in onnxruntime as it does in PyTorch."""
import json

import pytest
import torch

import dnncompress
from dnncompress.cli import main
from dnncompress.models import build_model
from dnncompress.pack import checkpoint_from_packed, save_packed
from dnncompress.prune.structured import structured_prune
from dnncompress.surgery import update_checkpoint

onnx = pytest.importorskip("onnx", reason="onnx not installed: pip install 'dnncompress[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install 'dnncompress[onnx]'")
pytest.importorskip("onnxscript", reason="onnxscript not installed: pip install 'dnncompress[onnx]'")

from dnncompress.onnx_export import _pack, export_onnx  # noqa: E402


def ort_run(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(s.run(None, {s.get_inputs()[0].name: x.numpy()})[0])


def compressed(arch, shape, scheme, options, structured=None):
    torch.manual_seed(0)
    model = build_model(arch).eval()
    if structured:
        structured_prune(model, torch.randn(2, *shape), **structured)
    dnncompress.prune_model(model, 0.6)
    dnncompress.quantize(model, scheme=scheme, **options)
    return model, update_checkpoint({"arch": arch, "arch_kwargs": {}, "dataset": {"input_shape": list(shape)}}, model)


@pytest.mark.parametrize("arch, shape, scheme, options, structured", [
    ("lenet5", (1, 28, 28), "fourval", {}, {"unit": "channel", "amount": 0.5}),
    ("resnet20", (3, 32, 32), "codebook", {"bits": 3, "per_channel": True}, {"flops": 0.5}),
])
def test_quantized_pruned_and_structurally_pruned_models_match_onnxruntime(tmp_path, arch, shape, scheme, options, structured):
    model, ckpt = compressed(arch, shape, scheme, options, structured)
    save_packed(ckpt, tmp_path / "m.dnc")
    from_file = checkpoint_from_packed(tmp_path / "m.dnc")
    x = torch.randn(5, *shape)  # another batch size than the export's example: the batch axis is free
    with torch.no_grad():
        want = model(x)
    dense = export_onnx(from_file, tmp_path / "d.onnx")
    small = export_onnx(from_file, tmp_path / "q.onnx", keep_quantized=True)
    for info, path in ((dense, "d.onnx"), (small, "q.onnx")):
        assert info["max_abs_diff"] <= 1e-4
        assert (ort_run(tmp_path / path, x) - want).abs().max() <= 1e-4
    assert {row["stored"] for row in small["layers"]} == {"codes"} and len(small["layers"]) == len(ckpt["quant"])
    assert small["bytes"] < dense["bytes"] / 3  # codes at 2–4 bits, not fp32
    import math

    exported = sum(math.prod(i.dims) for i in onnx.load(str(tmp_path / "d.onnx")).graph.initializer)
    full = sum(p.numel() for p in build_model(arch).parameters())
    assert exported < 0.8 * full  # the smaller shapes of structured pruning are what is exported


def test_every_gatherable_scheme_keeps_its_codes_and_rotation_falls_back_to_fp32(tmp_path):
    for scheme, options in (("ternary", {}), ("asym-quaternary", {"per_channel": True}), ("pq", {"bits": 6}), ("codebook", {"bits": 5})):
        torch.manual_seed(1)
        model = build_model("lenet300").eval()
        dnncompress.prune_model(model, 0.5)
        dnncompress.quantize(model, scheme=scheme, **options)
        ckpt = update_checkpoint({"arch": "lenet300", "arch_kwargs": {}, "dataset": {}}, model)
        info = export_onnx(ckpt, tmp_path / f"{scheme}.onnx", keep_quantized=True)
        assert info["max_abs_diff"] <= 1e-5 and {r["stored"] for r in info["layers"]} == {"codes"}, scheme
    torch.manual_seed(1)
    model = build_model("lenet300").eval()
    dnncompress.quantize(model, scheme="fourval", rotate=True)
    info = export_onnx(update_checkpoint({"arch": "lenet300", "arch_kwargs": {}, "dataset": {}}, model), tmp_path / "r.onnx", keep_quantized=True)
    assert info["max_abs_diff"] <= 1e-5 and {r["stored"] for r in info["layers"]} == {"fp32"}
    assert all("rotated" in r["reason"] for r in info["layers"])


def test_bit_packing_puts_code_j_at_bits_j_times_width():
    import numpy as np

    codes = np.array([1, 2, 3, 0, 3], dtype=np.uint8)
    assert _pack(codes, 2).tolist() == [1 | 2 << 2 | 3 << 4, 3]
    assert _pack(np.array([1, 0, 1, 1, 0, 0, 0, 0, 1]), 1).tolist() == [0b1101, 1]


def test_export_is_deterministic(tmp_path):
    _, ckpt = compressed("lenet300", (1, 28, 28), "ternary", {}, None)
    export_onnx(ckpt, tmp_path / "a.onnx", keep_quantized=True)
    export_onnx(ckpt, tmp_path / "b.onnx", keep_quantized=True)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert b"/work" not in (tmp_path / "a.onnx").read_bytes() and b"stack_trace" not in (tmp_path / "a.onnx").read_bytes()


def test_cli_export_reports_sizes_and_refuses_bad_input(in_tmp, tiny_ckpt):
    from click.testing import CliRunner

    runner = CliRunner()
    assert runner.invoke(main, ["quantize", str(tiny_ckpt), "--scheme", "fourval", "-o", "q.pt"]).exit_code == 0
    assert runner.invoke(main, ["pack", "q.pt", "-o", "q.dnc"]).exit_code == 0
    r = runner.invoke(main, ["export", "q.dnc", "-o", "q.onnx", "--keep-quantized"])
    assert r.exit_code == 0, r.output
    assert "q.onnx" in r.output and "bytes" in r.output and "onnxruntime matches" in r.output
    r = runner.invoke(main, ["export", "q.pt", "-o", "d.onnx", "--json"])
    info = json.loads(r.stdout)
    assert info["bytes"] == (in_tmp / "d.onnx").stat().st_size and info["max_abs_diff"] <= 1e-4
    for args, words in ((["q.pt", "-o", "x.onnx", "--input-shape", "a,b"], "--input-shape"),
                        (["q.pt", "-o", "x.onnx", "--input-shape", "3,32,32"], "--input-shape"),
                        (["q.pt", "-o", "x.onnx", "--opset", "13"], "opset"),
                        (["q.pt", "-o", "x.txt"], ".onnx")):
        r = runner.invoke(main, ["export", *args])
        assert r.exit_code == 2 and words in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not (in_tmp / "x.onnx").exists() and not (in_tmp / "x.txt").exists()


def test_load_packed_to_a_device_and_a_missing_device_is_a_user_error(tmp_path):
    from dnncompress.errors import UserError
    from dnncompress.pack import load_packed

    _, ckpt = compressed("lenet300", (1, 28, 28), "ternary", {}, None)
    save_packed(ckpt, tmp_path / "m.dnc")
    model = load_packed(tmp_path / "m.dnc", device="cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    for bad in ("tpu", "banana", *(() if torch.cuda.is_available() else ("cuda",))):
        with pytest.raises(UserError, match="--device"):
            load_packed(tmp_path / "m.dnc", device=bad)


def test_a_user_built_transformer_like_module_exports(tmp_path):
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
            self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 32)
            self.norm = nn.LayerNorm(32)

        def forward(self, tokens):
            h = self.norm(tokens + self.attn(tokens, tokens, tokens, need_weights=False)[0])
            return h + self.down(torch.relu(self.up(h)))

    torch.manual_seed(0)
    model = Block().eval()
    dnncompress.quantize(model, scheme="codebook", bits=4, include=["up", "down"])
    ckpt = update_checkpoint({"arch": None, "arch_kwargs": {}, "dataset": {}}, model)
    torch.manual_seed(1)
    info = export_onnx(ckpt, tmp_path / "t.onnx", keep_quantized=True, model=Block(), input_shape=(6, 32))
    assert info["max_abs_diff"] <= 1e-5 and {r["layer"] for r in info["layers"] if r["stored"] == "codes"} == {"up", "down"}
    x = torch.randn(3, 6, 32)
    with torch.no_grad():
        assert (ort_run(tmp_path / "t.onnx", x) - model(x)).abs().max() <= 1e-5
