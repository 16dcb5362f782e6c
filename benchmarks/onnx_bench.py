"""ONNX export sizes and fidelity (issue 13): the .dnc beside the dense ONNX file and the --keep-quantized one,
with onnxruntime's max |difference| from PyTorch and its CPU latency against PyTorch's.

LeNet-5 trained on the embedded MNIST (quantized, pruned, structurally pruned; the accuracy is PyTorch's
on the test split and onnxruntime's on the same images), ResNet-20 untrained (fidelity and size only).

    python benchmarks/onnx_bench.py
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import table, timeit, write_section

import dnncompress
from dnncompress.data import load_data
from dnncompress.models import build_model
from dnncompress.onnx_export import export_onnx
from dnncompress.pack import checkpoint_from_packed, save_packed
from dnncompress.prune.structured import structured_prune
from dnncompress.train import TrainSettings, evaluate, seed_everything, train

CMD = "python benchmarks/onnx_bench.py"


def onnx_accuracy(path, dataset) -> float:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    right = total = 0
    for x, y in torch.utils.data.DataLoader(dataset, batch_size=256):
        got = s.run(None, {name: x.numpy()})[0].argmax(1)
        right += int((torch.from_numpy(got) == y).sum())
        total += len(y)
    return 100.0 * right / total


def latency_ms(path, model, shape, batch) -> tuple[float, float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = torch.randn(batch, *shape)
    feed = {s.get_inputs()[0].name: x.numpy()}
    with torch.no_grad():
        t_torch = timeit(lambda: model(x), repeat=7, number=5)
    t_ort = timeit(lambda: s.run(None, feed), repeat=7, number=5)
    return 1000 * t_ort, 1000 * t_torch


def row(name, model, arch, shape, d, data=None):
    dnc = Path(d) / f"{name}.dnc"
    save_packed(model, dnc, entropy="huffman", arch=arch)
    ckpt = checkpoint_from_packed(dnc)
    dense, small = Path(d) / "dense.onnx", Path(d) / "small.onnx"
    rd = export_onnx(ckpt, dense, input_shape=shape)
    rs = export_onnx(ckpt, small, keep_quantized=True, input_shape=shape)
    kept = sum(1 for r in rs["layers"] if r["stored"] == "codes")
    restored = dnncompress.load_packed(dnc)
    acc = ""
    if data is not None:
        acc = f"{evaluate(restored, data.test)['accuracy']:.2f} / {onnx_accuracy(small, data.test):.2f}"
    ort1, pt1 = latency_ms(small, restored, shape, 1)
    ort64, pt64 = latency_ms(small, restored, shape, 64)
    return [name, f"{dnc.stat().st_size:,}", f"{rd['bytes']:,}", f"{rs['bytes']:,}", f"{kept}/{len(rs['layers'])}",
            f"{max(rd['max_abs_diff'], rs['max_abs_diff']):.1e}", acc, f"{ort1:.2f} / {pt1:.2f}", f"{ort64:.1f} / {pt64:.1f}"]


def main():
    data = load_data("mnist", seed=0)
    seed_everything(0)
    base = build_model("lenet5", data.arch_kwargs())
    train(base, data.train, TrainSettings(epochs=3, seed=0))
    qat = TrainSettings(epochs=1, lr=5e-4, schedule="cosine", seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        m = copy.deepcopy(base)
        rows.append(row("LeNet-5 fp32", m.eval(), "lenet5", (1, 28, 28), d, data))
        for name, prune, opts in (("LeNet-5 fourval", None, {"scheme": "fourval"}),
                                  ("LeNet-5 pruned 90 % + fourval", 0.9, {"scheme": "fourval"}),
                                  ("LeNet-5 codebook 4-bit", None, {"scheme": "codebook", "bits": 4}),
                                  ("LeNet-5 pq d=4, 8-bit", None, {"scheme": "pq", "bits": 8})):
            m = copy.deepcopy(base)
            if prune:
                dnncompress.prune_model(m, sparsity=prune, scope="global")
            dnncompress.quantize(m, **opts)
            train(m, data.train, qat)
            rows.append(row(name, m.eval(), "lenet5", (1, 28, 28), d, data))
        m = copy.deepcopy(base).eval()
        structured_prune(m, data.train[:8][0], unit="channel", amount=0.5)
        dnncompress.quantize(m, scheme="fourval")
        train(m, data.train, qat)
        rows.append(row("LeNet-5 50 % channels removed + fourval", m.eval(), "lenet5", (1, 28, 28), d, data))
        torch.manual_seed(0)
        r20 = build_model("resnet20").eval()
        dnncompress.quantize(r20, scheme="fourval", exclude=["conv1", "fc"])
        rows.append(row("ResNet-20 fourval (untrained)", r20, "resnet20", (3, 32, 32), d))
    body = ("Each model is packed to a .dnc, decoded, and exported twice: dense (`dnncompress export`) and "
            "`--keep-quantized` (integer codes bit-packed in uint8 initializers, the scheme's table, and the "
            "Shift/And/Gather nodes that rebuild each weight). **max diff**: the larger of the two exports' max "
            "|onnxruntime − PyTorch| on a fixed input. **accuracy**: PyTorch on the decoded .dnc / onnxruntime on "
            "the --keep-quantized file, on the same 1,000 test images. **latency**: onnxruntime (--keep-quantized "
            "file, which rebuilds its weights on every run) / PyTorch, ms per batch, median of 7×5 runs.\n\n")
    body += table(["model", ".dnc bytes", "ONNX dense bytes", "ONNX --keep-quantized bytes", "layers kept as codes", "max diff",
                   "test acc % (torch / ort)", "latency b=1 ms (ort / torch)", "latency b=64 ms (ort / torch)"], rows)
    write_section("export_1_onnx", "ONNX export: sizes, fidelity and latency", body, CMD)
    print(body)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
