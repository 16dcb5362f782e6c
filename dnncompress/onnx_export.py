"""ONNX export of a compressed checkpoint or .dnc: the smaller shapes after structured pruning, and
either dequantized fp32 weights or (`keep_quantized`) each quantized weight as packed integer codes
plus a small table, unpacked and gathered inside the graph with standard ONNX operators
(BitShift, BitwiseAnd, GatherElements / Gather), so that the .onnx file is small too.

Why a gather and not DequantizeLinear: our levels are not a uniform grid (four-value, ternary,
asymmetric, trained codebooks, product-quantization centroids), so int8/int4 + scale cannot
express them; a table lookup expresses every scheme exactly. Codes are stored at 1, 2, 4 or 8 bits
per code (the smallest that holds the scheme's bits), so a 2-bit layer costs 2 bits a weight.

The exporter is torch's own (`torch.onnx.export`, the dynamo path); onnx, onnxscript and onnxruntime
come from the `onnx` extra. Every exported file is checked with onnxruntime against PyTorch.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .errors import UserError

OPSET = 18  # BitwiseAnd needs 18; onnxruntime runs it everywhere


def _need_onnx():
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise UserError("ONNX export needs onnx and onnxscript: pip install 'dnncompress[onnx]'") from None
    return onnx


def dense_model(ckpt: dict, model: nn.Module | None = None) -> nn.Module:
    """The checkpoint's model as inference sees it: plain modules (no parametrizations) holding the masked,
    dequantized weights. `model`: a module the user built, filled instead of a zoo architecture."""
    from .surgery import effective_state_dict, model_from_checkpoint

    net = model_from_checkpoint(ckpt, model=model)
    state = effective_state_dict(net)
    _strip(net)
    net.load_state_dict(state)
    return net.eval()


def _strip(model: nn.Module) -> None:
    from torch.nn.utils import parametrize

    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


def _lookups(ckpt: dict) -> dict[str, tuple]:
    """Per quantized layer: (Lookup or None, mask or None, reason when None)."""
    from .quant import quantizer_from_state
    from .surgery import weight_key

    out = {}
    for name, state in sorted((ckpt.get("quant") or {}).items()):
        q = quantizer_from_state(state).eval()
        w = ckpt["state_dict"][weight_key(name)].detach().float()
        mask = (ckpt.get("masks") or {}).get(name)
        lookup = q.lookup(w, mask)
        out[name] = (lookup, mask, None if lookup is not None else f"{q.describe()} is not a table gather (rotated frame)")
    return out


def _code_width(levels: int) -> int:
    bits = max(1, math.ceil(math.log2(max(levels, 2))))
    for width in (1, 2, 4, 8):
        if bits <= width:
            return width
    raise ValueError(f"{levels} levels do not fit in 8-bit codes")


def _pack(codes: np.ndarray, width: int) -> np.ndarray:
    """Little-endian within a byte: code j sits at bits (j mod k)·width, k = 8/width codes a byte."""
    k = 8 // width
    flat = codes.reshape(-1).astype(np.uint8)
    padded = np.zeros(-(-flat.size // k) * k, dtype=np.uint8)
    padded[: flat.size] = flat
    shifts = (np.arange(k, dtype=np.uint8) * width)[None, :]
    return np.bitwise_or.reduce(padded.reshape(-1, k) << shifts, axis=1).astype(np.uint8)


def _reference(lookup, mask, shape) -> torch.Tensor:
    """What the graph computes, in torch: the check that the gather is exact before it is written."""
    table, codes = lookup.table, lookup.codes
    t, u = codes.shape
    gathered = table[torch.arange(t)[:, None], codes.long()]  # T×U×d
    rows = shape[0] if len(shape) else 1
    n = math.prod(shape) // max(rows, 1)
    w = gathered.reshape(rows, -1)[:, :n].reshape(shape)
    return w * mask if mask is not None else w


class _Graph:
    """Builds the unpack-and-gather nodes for one weight; names are prefixed by the weight's name."""

    def __init__(self, onnx, prefix: str):
        self.onnx, self.prefix, self.nodes, self.inits = onnx, prefix, [], []
        self.count = 0

    def name(self, what: str) -> str:
        self.count += 1
        return f"{self.prefix}/{what}_{self.count}"

    def const(self, what: str, array: np.ndarray) -> str:
        name = self.name(what)
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], what: str, output: str | None = None, **attrs) -> str:
        out = output or self.name(what)
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs))
        return out

    def unpack(self, codes: np.ndarray, width: int, what: str) -> str:
        """uint8 bytes → int64 codes in a flat vector of codes.size entries."""
        packed = self.const(what, _pack(codes, width))
        if width == 8:
            return self.op("Cast", [packed], "codes", to=self.onnx.TensorProto.INT64)
        k = 8 // width
        col = self.op("Unsqueeze", [packed, self.const("axis", np.array([1], dtype=np.int64))], "col")
        shifted = self.op("BitShift", [col, self.const("shifts", (np.arange(k, dtype=np.uint8) * width)[None, :])], "shifted", direction="RIGHT")
        low = self.op("BitwiseAnd", [shifted, self.const("low", np.array((1 << width) - 1, dtype=np.uint8))], "low")
        flat = self.op("Reshape", [low, self.const("flat", np.array([-1], dtype=np.int64))], "flat")
        cut = self.op("Slice", [flat, self.const("start", np.array([0], dtype=np.int64)),
                                self.const("end", np.array([codes.size], dtype=np.int64))], "cut")
        return self.op("Cast", [cut], "codes", to=self.onnx.TensorProto.INT64)


def _gather_nodes(onnx, weight_name: str, lookup, mask, shape) -> tuple[list, list, int]:
    """(nodes, initializers, bytes of codes and tables) that compute `weight_name` from codes and a table."""
    g = _Graph(onnx, weight_name)
    table = lookup.table.float().numpy()
    codes = lookup.codes.long().numpy()
    t, levels, d = table.shape
    pruned = mask is not None and not bool(mask.all())
    width = _code_width(levels)
    use_free_code = pruned and d == 1 and levels < (1 << width) and t * codes.shape[1] == math.prod(shape)
    if use_free_code:  # a spare code value means "zero": no bitmap needed
        table = np.concatenate([table, np.zeros((t, 1, 1), np.float32)], axis=1)
        codes = np.where(mask.reshape(codes.shape).numpy().astype(bool), codes, levels)
    flat = g.unpack(codes, width, "codes")
    idx = g.op("Reshape", [flat, g.const("shape", np.array(codes.shape, dtype=np.int64))], "idx")
    if d == 1:
        values = g.op("GatherElements", [g.const("table", table[:, :, 0]), idx], "values", axis=1)
    else:
        picked = g.op("Gather", [g.const("table", table[0]), idx], "picked", axis=0)  # 1×U×d
        values = g.op("Reshape", [picked, g.const("units", np.array([t, -1], dtype=np.int64))], "values")
    rows = shape[0] if len(shape) else 1
    n = math.prod(shape) // max(rows, 1)
    weight = values
    if codes.size * d != math.prod(shape):  # units padded each row: cut the padding off
        by_row = g.op("Reshape", [values, g.const("rows", np.array([rows, -1], dtype=np.int64))], "by_row")
        weight = g.op("Slice", [by_row, g.const("start", np.array([0], dtype=np.int64)), g.const("end", np.array([n], dtype=np.int64)),
                                g.const("axes", np.array([1], dtype=np.int64))], "cut_rows")
    if pruned and not use_free_code:
        bits = g.unpack(mask.reshape(-1).numpy().astype(np.uint8), 1, "mask")
        keep = g.op("Cast", [bits], "keep", to=onnx.TensorProto.FLOAT)
        shaped = g.op("Reshape", [weight, g.const("shape", np.array(shape, dtype=np.int64))], "shaped")
        keep = g.op("Reshape", [keep, g.const("shape", np.array(shape, dtype=np.int64))], "keep_shaped")
        g.op("Mul", [shaped, keep], "weight", output=weight_name)
    else:
        g.op("Reshape", [weight, g.const("shape", np.array(shape, dtype=np.int64))], "weight", output=weight_name)
    stored = sum(i.ByteSize() for i in g.inits)
    return g.nodes, g.inits, stored


def _keep_quantized(onnx, proto, ckpt: dict) -> list[dict]:
    """Replace each quantized weight's fp32 initializer by codes + table + the nodes that rebuild it."""
    from .surgery import weight_key

    inits = {i.name: i for i in proto.graph.initializer}
    layers, new_nodes = [], []
    for name, (lookup, mask, reason) in _lookups(ckpt).items():
        key = weight_key(name)
        row = {"layer": name, "stored": "fp32", "reason": reason}
        init = inits.get(key)
        if init is None:
            row["reason"] = "the exporter renamed or folded this weight"
        elif lookup is not None:
            dense = onnx.numpy_helper.to_array(init)
            shape = tuple(dense.shape)
            ref = _reference(lookup, mask, shape).numpy()
            if not np.array_equal(ref, dense):
                row["reason"] = "the gather does not reproduce the exported weight"
            else:
                nodes, extra, stored = _gather_nodes(onnx, key, lookup, mask, shape)
                proto.graph.initializer.remove(init)
                proto.graph.initializer.extend(extra)
                new_nodes.extend(nodes)
                row.update(stored="codes", reason=None, bytes=stored, fp32_bytes=int(dense.size) * 4)
        layers.append(row)
    if new_nodes:  # the weights are computed before any node uses them: topological order holds
        existing = list(proto.graph.node)
        del proto.graph.node[:]
        proto.graph.node.extend(new_nodes + existing)
    return layers


def _strip_metadata(proto) -> None:
    """Drop the exporter's per-node stack traces and FX text: they hold this machine's paths (the same
    model would give different bytes elsewhere) and, unoptimized, weigh more than 2-bit weights."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in (*proto.graph.value_info, *proto.graph.input, *proto.graph.output, *proto.graph.initializer):
        del value.metadata_props[:]
        value.doc_string = ""
    del proto.graph.value_info[:]  # shape hints only; onnxruntime infers them
    del proto.metadata_props[:]
    proto.graph.doc_string = proto.doc_string = ""


def _example_input(ckpt: dict, input_shape) -> torch.Tensor:
    from .models import default_input_shape

    shape = tuple(input_shape or (ckpt.get("dataset") or {}).get("input_shape") or default_input_shape(ckpt.get("arch") or ""))
    return torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))


def verify(path: str | os.PathLike, model: nn.Module, x: torch.Tensor) -> float | None:
    """Max |onnxruntime − PyTorch| on `x`; None when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    return float(np.abs(got - want).max())


def export_onnx(ckpt: dict, path: str | os.PathLike, keep_quantized: bool = False, model: nn.Module | None = None,
                input_shape=None, opset: int = OPSET) -> dict:
    """Write `ckpt` (a checkpoint dict, e.g. from load_checkpoint or checkpoint_from_packed) to `path` as ONNX
    (atomic). `model`: a module you built, for architectures outside the zoo. Returns what was written."""
    onnx = _need_onnx()
    from .fileio import atomic_path

    if opset < OPSET:
        raise UserError(f"--opset {opset}: the exported graph needs opset {OPSET} or newer")
    net = dense_model(ckpt, model)
    x = _example_input(ckpt, input_shape)
    try:
        with torch.no_grad():
            net(x)
    except Exception as e:
        raise UserError(f"the model does not run on an input of shape {tuple(x.shape[1:])} ({type(e).__name__}); "
                        "name the right one with --input-shape C,H,W") from None
    layers = []
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's own advice, not the user's business
            program = torch.onnx.export(net, (x,), input_names=["input"], output_names=["output"], opset_version=opset,
                                        dynamo=True, verbose=False, optimize=not keep_quantized, external_data=False,
                                        dynamic_shapes=_batch_axis(net))
        proto = program.model_proto
        _strip_metadata(proto)
        if keep_quantized:
            layers = _keep_quantized(onnx, proto, ckpt)
        if proto.ByteSize() >= 2**31 - 1:
            raise UserError("the ONNX file would pass protobuf's 2 GB limit; export without it is not supported yet")
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        diff = verify(tmp, net, x)
    return {"output": str(path), "bytes": Path(path).stat().st_size, "opset": opset, "max_abs_diff": diff,
            "input_shape": list(x.shape[1:]), "layers": layers}


def _batch_axis(module: nn.Module) -> dict | None:
    """Axis 0 of the first forward argument is the batch: any batch size runs the exported graph."""
    import inspect

    params = [p for p in inspect.signature(module.forward).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return {params[0].name: {0: torch.export.Dim("batch")}} if params else None
