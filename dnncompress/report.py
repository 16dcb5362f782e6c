"""Where every byte goes: a per-layer size table for a checkpoint or a .dnc, from actual files.

The compression ratio compares two real files: the fp32 safetensors of the model's
state_dict and the .dnc (a checkpoint is packed to a temporary file first). The fp32 file's
size is computed from the shapes exactly as safetensors lays it out (a test compares it with a
written file), so a report never writes or allocates a model-sized file; a .dnc is vetted against
its architecture before anything is counted.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .pack import vet_packed
from .pack.container import invalid_file, restore, write_packed
from .pack.layers import ITEMSIZE, fragment_bytes
from .surgery import weight_key

_ST_DTYPE = {torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


def fp32_file_bytes(state: dict) -> int:
    """Size of the safetensors file of `state` with every float tensor as fp32 (meta tensors welcome):
    tensors sorted by (alignment, name) as safetensors does, JSON header padded to 8 bytes."""
    entries = []
    for key, t in state.items():
        name, item = ("F32", 4) if t.is_floating_point() else (_ST_DTYPE.get(t.dtype, "I64"), t.element_size())
        entries.append((-item, key, name, list(t.shape), item * math.prod(t.shape)))
    header, offset = {}, 0
    for _, key, name, shape, nbytes in sorted(entries):
        header[key] = {"dtype": name, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + text + (-text % 8) + offset


def unpruned_fp32_bytes(arch: str, arch_kwargs: dict | None, source) -> int:
    """The fp32 safetensors size of the architecture as built, before any structured pruning shrank it."""
    from .validate import expected_state

    return fp32_file_bytes(expected_state(arch, arch_kwargs or {}, source))


def reference_fp32_bytes(ckpt: dict) -> int:
    """The fp32 size a size target is measured against: the architecture before structured pruning, when it shrank
    the checkpoint, as `report` counts a ratio (joint and shrink)."""
    if ckpt.get("structure"):
        return unpruned_fp32_bytes(ckpt["arch"], ckpt.get("arch_kwargs"), "the checkpoint")
    return fp32_file_bytes(ckpt["state_dict"])


def _module_of(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def _count_bytes(spec: dict, row) -> None:
    """Add every layer's and leftover's bytes to its row, by kind of blob."""
    for layer in spec["layers"]:
        r = row(layer["n"])
        numel = int(np.prod(layer["s"]))
        kept = int(layer.get("nk", numel))
        r["params"] += numel
        if layer["k"] == "t":  # tied to another layer: stored once, there
            r["scheme"] = f"tied to {layer['tie']}"
            continue
        if layer["k"] == "q":  # the scheme's storage: a code stream and its tables, whatever they are called
            r["scheme"] = layer["q"]["scheme"] + (" (Huffman)" if "h" in layer["c"] else " (ANS)" if "a" in layer["c"] else "")
            r["bits"] = layer["cb"]
            r["codes"] += fragment_bytes(layer["c"])
            r["tables"] += sum(ref[1] * ITEMSIZE[kind] for kind, ref, _ in layer["t"].values())
        else:
            r["scheme"] = "pruned fp"
            r["fp"] += layer["v"][1][1] * ITEMSIZE[layer["v"][0]]
        r["nonzeros"] += kept
        if "x" in layer:
            r["index"] += fragment_bytes(layer["x"])
            r["layout"] = layer["x"]["l"] + (f" {layer['x']['g']}-bit" if layer["x"]["l"] == "gaps" else "")
    for key, shape, kind, ref, *_ in spec["leftovers"]:
        r = row(_module_of(key))
        n = int(np.prod(shape))
        r["params"] += n
        r["nonzeros"] += n
        r["fp"] += 0 if kind == "tie" else ref[1] * ITEMSIZE[kind]  # a tied tensor is stored once, under its first name


def _in_model_order(rows: list[dict], keys: list[str] | None) -> list[dict]:
    """Rows in the order their first tensor has in the model's state_dict (a report reads top to bottom like
    the network); rows the keys do not know keep their place after the known ones."""
    if not keys:
        return rows
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(_module_of(key), i)
    return sorted(rows, key=lambda r: first.get("" if r["layer"] == "(root)" else r["layer"], len(keys)))


def report_packed(dnc_path: str | os.PathLike, fp32_bytes: int | None = None, arch: str | None = None, trust: bool = False,
                  order: list[str] | None = None) -> dict:
    """Per-layer bytes of a .dnc (codes / index / scheme tables / fp leftovers), totals and the real ratio,
    counted from the vetted spec after a full (architecture-bounded) decode has checked every reference.
    Layers come in model order: `order` (state_dict keys), else the architecture's, else the file's."""
    spec, blobs, expected = vet_packed(dnc_path, arch, trust)
    restore(spec, blobs, dnc_path)  # every reference and count checked by a real decode (bounded by the architecture)
    rows: dict[str, dict] = {}

    def row(name):
        return rows.setdefault(name, {"layer": name or "(root)", "params": 0, "nonzeros": 0, "scheme": "fp32", "bits": 32,
                                      "codes": 0, "index": 0, "tables": 0, "fp": 0})

    try:
        _count_bytes(spec, row)
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as e:
        raise invalid_file(dnc_path, f"a layer entry lacks what its kind needs ({type(e).__name__})") from None
    out_rows = _in_model_order(list(rows.values()), order or (list(expected) if expected else None))
    payload = sum(r["codes"] + r["index"] + r["tables"] + r["fp"] for r in out_rows)
    file_bytes = Path(dnc_path).stat().st_size
    container = file_bytes - payload  # safetensors header, JSON spec, word padding
    if container < 0:
        raise invalid_file(dnc_path, "layers share or overcount blob bytes")
    for r in out_rows:
        r["bytes"] = r["codes"] + r["index"] + r["tables"] + r["fp"]
        r["share"] = r["bytes"] / file_bytes
        r["bits_per_weight"] = 8 * r["bytes"] / max(r["params"], 1)
    if fp32_bytes is None and spec.get("structure") and spec.get("arch"):  # against the model before structured pruning
        fp32_bytes = unpruned_fp32_bytes(spec["arch"], spec.get("arch_kwargs"), dnc_path)
    if fp32_bytes is None:
        if expected is None:  # no architecture recorded: the shapes the spec declares (all bounded by the file)
            expected = {weight_key(layer["n"]): torch.empty(layer["s"], device="meta") for layer in spec["layers"]}
            expected.update({k: torch.empty(s, device="meta", dtype=torch.int64 if kind in ("i64", "u8") else torch.float32)
                             for k, s, kind, *_ in spec["leftovers"]})
        fp32_bytes = fp32_file_bytes(expected)
    total_params = sum(r["params"] for r in out_rows)
    return {"file": str(dnc_path), "arch": spec.get("arch"), "entropy": spec.get("entropy"), "layers": out_rows,
            "container_bytes": container, "packed_bytes": file_bytes, "fp32_bytes": fp32_bytes,
            "ratio": fp32_bytes / file_bytes, "percent_of_fp32": 100.0 * file_bytes / fp32_bytes,
            "params": total_params, "nonzeros": sum(r["nonzeros"] for r in out_rows),
            "bits_per_weight": 8 * file_bytes / max(total_params, 1), "metrics": spec.get("metrics", {})}


def report_checkpoint(ckpt: dict, entropy: str = "none", fp16: bool = False) -> dict:
    """Pack to a temporary .dnc and report it: a checkpoint's size is what it would pack to."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.dnc"
        write_packed(ckpt, path, entropy, fp16)
        # after structured pruning, against the architecture before it (report_packed builds it), as for a .dnc
        out = report_packed(path, None if ckpt.get("structure") else fp32_file_bytes(ckpt["state_dict"]),
                            order=list(ckpt["state_dict"]))
    out["file"] = "(checkpoint, packed in memory)"
    return out


def plot_report(rep: dict, path: str | os.PathLike) -> None:
    """Per-layer bytes (by part), bits per weight and sparsity in model order; fp32 layers on their own scale."""
    import matplotlib.pyplot as plt

    from .charts import layer_figure
    from .fileio import save_figure

    fig = layer_figure(rep)
    save_figure(fig, path)
    plt.close(fig)
