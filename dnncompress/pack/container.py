"""The .dnc file: a standard safetensors container (no pickle) with JSON metadata.

metadata: format, version, spec (JSON: model spec, layers, leftovers), sha256 (of the spec
and every tensor's bytes, in name order). Tensors: one 1-D array per blob kind (see
layers.Blobs). Reading parses the header by hand with bounds checks before trusting any
size, verifies the digest, then decodes; every failure is a one-line UserError.
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
from ..surgery import weight_key
from .layers import Blobs, decode_layer, encode_layer

FORMAT = "dnncompress-packed"
VERSION = 1
MAX_HEADER = 64 << 20
ST_DTYPES = {"U8": np.uint8, "U32": np.uint32, "F32": np.float32, "F16": np.float16, "I64": np.int64}


def _digest(spec_json: str, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(spec_json.encode())
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).view(np.uint8).tobytes())
    return h.hexdigest()


def build_packed(ckpt: dict, entropy: str = "none", fp16: bool = False) -> tuple[dict[str, np.ndarray], dict[str, str], dict]:
    """(tensors, metadata, spec) for a checkpoint; layer by layer, no whole-model copies."""
    if entropy not in ("none", "huffman"):
        raise UserError(f"entropy coder must be 'none' or 'huffman', got '{entropy}'")
    blobs = Blobs()
    state = ckpt["state_dict"]
    masks, quant = ckpt.get("masks", {}) or {}, ckpt.get("quant", {}) or {}
    layers, handled = [], set()
    for name in sorted(set(masks) | set(quant)):
        key = weight_key(name)
        if key not in state:
            raise UserError(f"checkpoint has compression for '{name}' but no weight '{key}'")
        layers.append(encode_layer(blobs, name, state[key], masks.get(name), quant.get(name), entropy, fp16))
        handled.add(key)
    leftovers = []
    for key, t in state.items():
        if key in handled:
            continue
        if t.is_floating_point():
            kind = "fp16" if fp16 else "fp32"
            leftovers.append([key, list(t.shape), kind, blobs.add(kind, t.detach().float().numpy())])
        else:
            leftovers.append([key, list(t.shape), "i64", blobs.add("i64", t.detach().long().numpy())])
    spec = {"arch": ckpt.get("arch"), "arch_kwargs": ckpt.get("arch_kwargs", {}), "dataset": ckpt.get("dataset", {}),
            "metrics": {k: v for k, v in (ckpt.get("metrics") or {}).items() if isinstance(v, (int, float, str))},
            "entropy": entropy, "fp16": fp16, "layers": layers, "leftovers": leftovers}
    arrays = blobs.finish()
    spec_json = json.dumps(spec, separators=(",", ":"))
    metadata = {"format": FORMAT, "version": str(VERSION), "spec": spec_json, "sha256": _digest(spec_json, arrays)}
    return arrays, metadata, spec


def write_packed(ckpt: dict, path: str | os.PathLike, entropy: str = "none", fp16: bool = False) -> dict:
    from safetensors.numpy import save_file

    arrays, metadata, spec = build_packed(ckpt, entropy, fp16)
    save_file(arrays, str(path), metadata=metadata)
    return {"bytes": os.path.getsize(path), "layers": len(spec["layers"]), "entropy": entropy}


def _bad(path, what: str) -> UserError:
    return UserError(f"{path} is not a valid .dnc file: {what}; re-create it with 'dnncompress pack'")


def read_packed(path: str | os.PathLike) -> tuple[dict, Blobs]:
    """Parse and verify a .dnc; returns (spec, blobs). Never allocates more than the file holds."""
    p = require_file(path, "packed file")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _bad(p, "truncated (no header)")
        (hlen,) = struct.unpack("<Q", head)
        if hlen > min(size - 8, MAX_HEADER):
            raise _bad(p, f"header length {hlen} exceeds the file")
        try:
            header = json.loads(f.read(hlen))
        except (ValueError, UnicodeDecodeError):
            raise _bad(p, "header is not valid JSON") from None
        data = f.read()
    if not isinstance(header, dict):
        raise _bad(p, "header is not a mapping")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _bad(p, "not a dnncompress packed file (format tag missing)")
    if meta.get("version") != str(VERSION):
        raise UserError(f"{p} is .dnc version {meta.get('version')}, this dnncompress reads version {VERSION}; upgrade dnncompress")
    arrays = {}
    for name, info in header.items():
        try:
            dtype = ST_DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            start, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise _bad(p, f"tensor '{name}' has a bad descriptor") from None
        count = int(np.prod(shape)) if shape else 1
        if len(shape) != 1 or not 0 <= start <= end <= len(data) or end - start != count * np.dtype(dtype).itemsize:
            raise _bad(p, f"tensor '{name}' does not fit the file (truncated?)")
        arrays[name] = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=start)
    spec_json = meta.get("spec", "")
    if _digest(spec_json, arrays) != meta.get("sha256"):
        raise _bad(p, "SHA-256 mismatch (corrupted or modified)")
    try:
        spec = json.loads(spec_json)
    except ValueError:
        raise _bad(p, "spec is not valid JSON") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("layers"), list) or not isinstance(spec.get("leftovers"), list):
        raise _bad(p, "spec lacks layers")
    return spec, Blobs(arrays)


def restore(spec: dict, blobs: Blobs, path="<packed>") -> tuple[dict, dict, dict]:
    """(state_dict with dequantized weights, masks, quant states) from a verified spec."""
    state, masks, quant = {}, {}, {}
    try:
        for layer in spec["layers"]:
            weight, mask, q = decode_layer(blobs, layer)
            name = layer["n"]
            state[weight_key(name)] = weight
            if mask is not None:
                masks[name] = mask
            if q is not None:
                quant[name] = q
        for key, shape, kind, ref in spec["leftovers"]:
            if kind not in ("fp32", "fp16", "i64"):
                raise ValueError(f"bad leftover kind {kind!r}")
            raw = blobs.get(kind, ref)
            if raw.size != int(np.prod(shape)):
                raise ValueError(f"leftover '{key}' size does not match its shape")
            t = torch.from_numpy(raw.astype(np.float32 if kind != "i64" else np.int64)).reshape(shape)
            state[key] = t
    except (ValueError, KeyError, TypeError, IndexError, OverflowError, MemoryError) as e:
        raise _bad(path, str(e).splitlines()[0][:160] if str(e) else type(e).__name__) from None
    return state, masks, quant
