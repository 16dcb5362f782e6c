"""The .dnc file: a standard safetensors container (no pickle) with JSON metadata.

metadata: format, version, spec (JSON: model spec, layers, leftovers), sha256. The
digest covers every byte that decides a weight: the canonical JSON of the whole header
(tensor names, dtypes, shapes, offsets, metadata; only the sha256 value left out) and then the
data section. Tensors: one 1-D array per blob kind (see layers.Blobs), each of its kind's
fixed dtype. The file is written by our own canonical writer (sorted keys, fixed layout), so
the same checkpoint always gives the same bytes, and it stays a standard safetensors file.
Reading parses the header by hand with bounds checks before trusting any size, verifies the
digest, then decodes; every failure is a one-line UserError.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np
import torch

from ..errors import UserError
from ..fileio import require_file
from ..surgery import tensor_identity, weight_key
from .layers import NATURAL, Blobs, blob_to_tensor, decode_layer, encode_layer, tensor_to_blob

FORMAT = "dnncompress-packed"
VERSION = 3
READS = ("3",)
DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.bool,
                                                     torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)}
MAX_HEADER = 64 << 20
ST_DTYPES = {"U8": np.uint8, "U16": np.uint16, "U32": np.uint32, "F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64}
ST_NAMES = {np.dtype(v): k for k, v in ST_DTYPES.items()}


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _header_digest(header: dict, data_pieces) -> str:
    """SHA-256 of the canonical header (without the sha256 value itself), then the data pieces in order."""
    meta = {k: v for k, v in header["__metadata__"].items() if k != "sha256"}
    h = hashlib.sha256(canonical_json({**header, "__metadata__": meta}).encode())
    for piece in data_pieces:
        h.update(piece)
    return h.hexdigest()


def build_packed(ckpt: dict, entropy: str = "none", fp16: bool = False) -> tuple[dict[str, np.ndarray], dict[str, str], dict]:
    """(tensors, metadata, spec) for a checkpoint; layer by layer, no whole-model copies."""
    if entropy not in ("none", "huffman"):
        raise UserError(f"entropy coder must be 'none' or 'huffman', got '{entropy}'")
    blobs = Blobs()
    state = ckpt["state_dict"]
    masks, quant = ckpt.get("masks", {}) or {}, ckpt.get("quant", {}) or {}
    layers, handled = [], set()
    encoded: dict = {}  # tensor identity → (layer name, its mask, its quant state)
    for name in sorted(set(masks) | set(quant)):
        key = weight_key(name)
        if key not in state:
            raise UserError(f"checkpoint has compression for '{name}' but no weight '{key}'")
        handled.add(key)
        twin = encoded.get(tensor_identity(state[key]))
        if twin is not None and _same(twin[1], masks.get(name)) and _same(twin[2], quant.get(name)):
            layers.append({"n": name, "s": list(state[key].shape), "k": "t", "tie": twin[0]})  # a tied, identically compressed layer
            continue
        layers.append(encode_layer(blobs, name, state[key], masks.get(name), quant.get(name), entropy, fp16))
        encoded.setdefault(tensor_identity(state[key]), (name, masks.get(name), quant.get(name)))
    leftovers, first_of = [], {}
    for key in [*sorted(handled), *state]:  # tied (shared) tensors: one name stores it (a layer if any), the others point to it
        first_of.setdefault(tensor_identity(state[key]), key)
    for key, t in state.items():
        if key in handled:
            continue
        shared = first_of[tensor_identity(t)]
        if shared != key:
            leftovers.append([key, list(t.shape), "tie", shared])
            continue
        kind, ref = tensor_to_blob(blobs, t, fp16)
        entry = [key, list(t.shape), kind, ref]
        if NATURAL[kind] != t.dtype:
            entry.append(str(t.dtype).removeprefix("torch."))
        leftovers.append(entry)
    spec = {"arch": ckpt.get("arch"), "arch_kwargs": ckpt.get("arch_kwargs", {}), "dataset": ckpt.get("dataset", {}),
            "metrics": {k: v for k, v in (ckpt.get("metrics") or {}).items() if isinstance(v, (int, float, str))},
            "entropy": entropy, "fp16": fp16, "layers": layers, "leftovers": leftovers}
    arrays = blobs.finish()
    metadata = {"format": FORMAT, "version": str(VERSION), "spec": canonical_json(spec)}
    return arrays, metadata, spec


def _same(a, b) -> bool:
    """Equal masks or quantizer states (tensors compared by value)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def serialize(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> tuple[bytes, list[np.ndarray]]:
    """(8-byte length + header, data pieces) of a canonical safetensors file: tensors in name order,
    back to back; the header JSON has sorted keys and is space-padded to 8 bytes, as the format asks."""
    header: dict = {}
    offset, pieces = 0, []
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name], dtype=arrays[name].dtype.newbyteorder("<"))
        n = arr.nbytes
        header[name] = {"dtype": ST_NAMES[arr.dtype.newbyteorder("=")], "shape": [int(arr.size)], "data_offsets": [offset, offset + n]}
        pieces.append(arr.reshape(-1).view(np.uint8))
        offset += n
    header["__metadata__"] = dict(metadata)
    header["__metadata__"]["sha256"] = _header_digest(header, pieces)
    text = canonical_json(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, pieces


def write_packed(ckpt: dict, path: str | os.PathLike, entropy: str = "none", fp16: bool = False) -> dict:
    arrays, metadata, spec = build_packed(ckpt, entropy, fp16)
    head, pieces = serialize(arrays, metadata)
    with open(path, "wb") as f:
        f.write(head)
        for piece in pieces:
            f.write(piece)
    return packed_info(spec, os.path.getsize(path))


def packed_info(spec: dict, nbytes: int) -> dict:
    """What packing reports (and the pack stage records in the history) for a file of `nbytes` with this spec."""
    return {"bytes": nbytes, "layers": len(spec["layers"]), "entropy": spec["entropy"]}


def invalid_file(path, what: str) -> UserError:
    return UserError(f"{path} is not a valid .dnc file: {what}; re-create it with 'dnncompress pack'")


def _json_loads(text, p, what: str):
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise invalid_file(p, f"{what} is not valid JSON") from None


def read_packed(path: str | os.PathLike) -> tuple[dict, Blobs]:
    """Parse and verify a .dnc; returns (spec, blobs). Never allocates more than the file holds."""
    p = require_file(path, "packed file")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise invalid_file(p, "truncated (no header)")
        (hlen,) = struct.unpack("<Q", head)
        if hlen > min(size - 8, MAX_HEADER):
            raise invalid_file(p, f"header length {hlen} exceeds the file")
        header = _json_loads(f.read(hlen), p, "header")
        data = f.read()
    if not isinstance(header, dict):
        raise invalid_file(p, "header is not a mapping")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise invalid_file(p, "not a dnncompress packed file (format tag missing)")
    version = meta.get("version")
    if version in ("1", "2"):
        raise UserError(f"{p} is .dnc version {version} (an older dnncompress); this one reads version {VERSION}: "
                        f"re-create it from its checkpoint with 'dnncompress pack CKPT -o {p.name}'")
    if version not in READS:
        raise UserError(f"{p} is .dnc version {str(version)[:20]}, this dnncompress reads versions {', '.join(READS)}; upgrade dnncompress")
    if not all(isinstance(v, str) for v in meta.values()):
        raise invalid_file(p, "metadata values must be strings")
    arrays, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = ST_DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            start, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise invalid_file(p, f"tensor '{name}' has a bad descriptor") from None
        want = Blobs.DTYPES.get(name)
        if want is None or np.dtype(want) != np.dtype(dtype):
            raise invalid_file(p, f"tensor '{name}' is {info['dtype']}, not the dtype of any blob of that name")
        count = shape[0] if len(shape) == 1 else -1
        if count < 0 or not 0 <= start <= end <= len(data) or end - start != count * np.dtype(dtype).itemsize:
            raise invalid_file(p, f"tensor '{name}' does not fit the file (truncated?)")
        spans.append((start, end))
        arrays[name] = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=start)
    spans.sort()
    if any(a[1] != b[0] for a, b in zip(spans, spans[1:])) or (spans[0][0] if spans else 0) != 0 or (spans[-1][1] if spans else 0) != len(data):
        raise invalid_file(p, "tensor data overlaps, leaves gaps or has trailing bytes")
    spec_json = meta.get("spec", "")
    digest = _header_digest(header, [data])
    if digest != meta.get("sha256"):
        raise invalid_file(p, "SHA-256 mismatch (corrupted or modified)")
    spec = _json_loads(spec_json, p, "spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("layers"), list) or not isinstance(spec.get("leftovers"), list):
        raise invalid_file(p, "spec lacks layers")
    return spec, Blobs(arrays)


def _dtype(name, default: torch.dtype) -> torch.dtype:
    if name is None:
        return default
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {str(name)[:20]!r}")
    return DTYPES[name]


def restore(spec: dict, blobs: Blobs, path="<packed>") -> tuple[dict, dict, dict]:
    """(state_dict with dequantized weights in their recorded dtypes, masks, quant states) from a
    verified spec; tied tensors come back as one tensor under each of their names."""
    state, masks, quant = {}, {}, {}
    try:
        tied_layers = []
        for layer in spec["layers"]:
            if layer["k"] == "t":
                tied_layers.append(layer)
                continue
            weight, mask, q = decode_layer(blobs, layer)
            name = layer["n"]
            state[weight_key(name)] = weight.to(_dtype(layer.get("d"), torch.float32))
            if mask is not None:
                masks[name] = mask
            if q is not None:
                quant[name] = q
        ties = []
        for entry in spec["leftovers"]:
            key, shape, kind, ref = entry[:4]
            if kind == "tie":
                ties.append((key, shape, ref))
                continue
            if kind not in NATURAL or len(entry) > 5:
                raise ValueError(f"bad leftover kind {kind!r}")
            t = blob_to_tensor(blobs, kind, ref)
            if t.numel() != int(np.prod(shape)):
                raise ValueError(f"leftover '{key}' size does not match its shape")
            state[key] = t.reshape(shape).to(_dtype(entry[4] if len(entry) == 5 else None, NATURAL[kind]))
        def link(key, shape, target):  # a tied entry: the very tensor another key holds
            if not isinstance(target, str) or target not in state or list(state[target].shape) != list(shape):
                raise ValueError(f"'{key}' is tied to {str(target)[:60]!r}, which the file does not hold with that shape")
            state[key] = state[target]

        for layer in tied_layers:  # the same tensor, mask and quantizer state as the layer it names
            source = layer["tie"]
            link(weight_key(layer["n"]), layer["s"], weight_key(source) if isinstance(source, str) else source)
            if source in masks:
                masks[layer["n"]] = masks[source]
            if source in quant:
                quant[layer["n"]] = dict(quant[source])
        for key, shape, target in ties:
            link(key, shape, target)
    except (ValueError, KeyError, TypeError, IndexError, OverflowError, MemoryError, AttributeError, RuntimeError, RecursionError) as e:
        raise invalid_file(path, (str(e).splitlines() or [type(e).__name__])[0][:160]) from None
    except UserError as e:  # a scheme refusing its options
        raise invalid_file(path, str(e)[:160]) from None
    return state, masks, quant
