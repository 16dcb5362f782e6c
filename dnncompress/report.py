"""Where every byte goes: a per-layer size table for a checkpoint or a .dnc, from actual files.

The compression ratio compares two real files: the fp32 safetensors of the model's
state_dict and the .dnc (a checkpoint is packed to a temporary file first).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .pack.container import read_packed, restore, write_packed
from .pack.layers import Blobs, fragment_bytes

ITEMSIZE = {k: np.dtype(v).itemsize for k, v in Blobs.DTYPES.items()}


def fp32_file_bytes(state: dict) -> int:
    from safetensors.torch import save_file

    dense = {k: v.float().contiguous() if v.is_floating_point() else v.contiguous() for k, v in state.items()}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fp32.safetensors"
        save_file(dense, str(path))
        return path.stat().st_size


def _module_of(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def report_packed(dnc_path: str | os.PathLike, fp32_bytes: int | None = None) -> dict:
    """Per-layer bytes of a .dnc (codes / index / codebook / fp leftovers), totals and the real ratio."""
    spec, blobs = read_packed(dnc_path)
    rows: dict[str, dict] = {}

    def row(name):
        return rows.setdefault(name, {"layer": name or "(root)", "params": 0, "nonzeros": 0, "scheme": "fp32", "bits": 32,
                                      "codes": 0, "index": 0, "codebook": 0, "fp": 0})

    for layer in spec["layers"]:
        r = row(layer["n"])
        numel = int(np.prod(layer["s"]))
        kept = int(layer.get("nk", numel))
        r["params"] += numel
        if layer["k"] == "q":
            r["scheme"] = layer["q"]["scheme"] + (" (Huffman)" if "h" in layer["c"] else "")
            r["bits"] = layer["q"]["bits"]
            r["codes"] += fragment_bytes(layer["c"], ITEMSIZE)
            r["codebook"] += (layer["lv"][1] + layer["th"][1]) * 4
        else:
            r["scheme"] = "pruned fp"
            r["fp"] += layer["v"][1][1] * ITEMSIZE[layer["v"][0]]
        r["nonzeros"] += kept
        if "x" in layer:
            r["index"] += fragment_bytes(layer["x"], ITEMSIZE)
            r["layout"] = layer["x"]["l"] + (f" {layer['x']['g']}-bit" if layer["x"]["l"] == "gaps" else "")
    for key, shape, kind, ref in spec["leftovers"]:
        r = row(_module_of(key))
        n = int(np.prod(shape))
        r["params"] += n
        r["nonzeros"] += n
        r["fp"] += ref[1] * ITEMSIZE[kind]
    out_rows = list(rows.values())
    payload = sum(r["codes"] + r["index"] + r["codebook"] + r["fp"] for r in out_rows)
    file_bytes = Path(dnc_path).stat().st_size
    container = file_bytes - payload  # safetensors header, JSON spec, word padding
    for r in out_rows:
        r["bytes"] = r["codes"] + r["index"] + r["codebook"] + r["fp"]
        r["share"] = r["bytes"] / file_bytes
        r["bits_per_weight"] = 8 * r["bytes"] / max(r["params"], 1)
    if fp32_bytes is None:
        state, _, _ = restore(spec, blobs, dnc_path)
        fp32_bytes = fp32_file_bytes(state)
    total_params = sum(r["params"] for r in out_rows)
    return {"file": str(dnc_path), "arch": spec.get("arch"), "entropy": spec.get("entropy"), "layers": out_rows,
            "container_bytes": container, "packed_bytes": file_bytes, "fp32_bytes": fp32_bytes,
            "ratio": fp32_bytes / file_bytes, "percent_of_fp32": 100.0 * file_bytes / fp32_bytes,
            "params": total_params, "nonzeros": sum(r["nonzeros"] for r in out_rows),
            "bits_per_weight": 8 * file_bytes / max(total_params, 1), "metrics": spec.get("metrics", {})}


def report_checkpoint(ckpt: dict, entropy: str = "none") -> dict:
    """Pack to a temporary .dnc and report it: a checkpoint's size is what it would pack to."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.dnc"
        write_packed(ckpt, path, entropy)
        out = report_packed(path, fp32_file_bytes(ckpt["state_dict"]))
    out["file"] = "(checkpoint, packed in memory)"
    return out


def plot_report(rep: dict, path: str | os.PathLike) -> None:
    """Per-layer bytes before (fp32) and after (packed), and bits per weight; headless matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rep["layers"] if r["params"]]
    names = [r["layer"] for r in rows]
    before = [4 * r["params"] for r in rows]
    after = [r["bytes"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 0.5 * len(rows) + 6), 4))
    x = np.arange(len(rows))
    ax1.bar(x - 0.2, before, 0.4, label="fp32")
    ax1.bar(x + 0.2, after, 0.4, label="packed")
    ax1.set_yscale("log")
    ax1.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    ax1.set_ylabel("bytes")
    ax1.legend()
    ax1.set_title(f"{rep.get('arch')}: {rep['fp32_bytes']:,} → {rep['packed_bytes']:,} bytes ({rep['ratio']:.1f}×)")
    ax2.bar(x, [r["bits_per_weight"] for r in rows])
    ax2.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    ax2.set_ylabel("bits per weight (all bytes of the layer)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

