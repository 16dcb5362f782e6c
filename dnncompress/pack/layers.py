"""Encode one layer's weights into blob pieces and decode them back, bit-exact.

A layer is one of: `q` quantized (codes + levels, optionally sparse), `m` pruned only
(fp values of the kept weights + index), or plain leftovers (written by the container).
Pieces go into shared blobs (one safetensors tensor per kind) and the layer's spec records
[offset, count] into each, so a small model does not pay a safetensors header per tensor.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import bitpack, huffman, sparse


class Blobs:
    """Append-only typed arrays; `add` returns [offset, count] in elements."""

    DTYPES = {"codes": np.uint32, "index": np.uint32, "levels": np.float32, "fp32": np.float32,
              "fp16": np.float16, "i64": np.int64, "hlen": np.uint8, "hoff": np.uint32, "hdata": np.uint8}

    def __init__(self, arrays: dict[str, np.ndarray] | None = None):
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in self.DTYPES}
        self.sizes = {k: 0 for k in self.DTYPES}
        self.arrays = arrays or {}

    def add(self, kind: str, values: np.ndarray) -> list[int]:
        arr = np.ascontiguousarray(values, dtype=self.DTYPES[kind]).ravel()
        off = self.sizes[kind]
        self.parts[kind].append(arr)
        self.sizes[kind] += arr.size
        return [off, int(arr.size)]

    def finish(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.parts.items() if v}

    def get(self, kind: str, ref) -> np.ndarray:
        off, count = int(ref[0]), int(ref[1])
        arr = self.arrays.get(kind)
        if arr is None or off < 0 or count < 0 or off + count > arr.size:
            raise ValueError(f"reference {ref} is outside the '{kind}' blob")
        return arr[off : off + count]


def _entropy_or_plain(blobs: Blobs, symbols: np.ndarray, bits: int, entropy: str) -> dict:
    """Pack symbols plainly, or Huffman-coded when that is smaller; returns the spec fragment."""
    plain_bytes = bitpack.words_needed(symbols.size, bits) * 4
    if entropy == "huffman" and symbols.size:
        lengths, offsets, payload = huffman.encode(symbols, 1 << bits)
        coded = lengths.size + offsets.size * 4 + payload.size
        if coded < plain_bytes:
            return {"h": [blobs.add("hlen", lengths), blobs.add("hoff", offsets), blobs.add("hdata", payload)]}
    return {"w": blobs.add("codes", bitpack.pack(symbols, bits))}


def _symbols_back(blobs: Blobs, frag: dict, bits: int, n: int) -> np.ndarray:
    if "h" in frag:
        lref, oref, dref = frag["h"]
        lengths = blobs.get("hlen", lref)
        if lengths.size != 1 << bits:
            raise ValueError("Huffman table size does not match the bit width")
        return huffman.decode(lengths, blobs.get("hoff", oref), blobs.get("hdata", dref), n)
    words = blobs.get("codes", frag["w"])
    if words.size != bitpack.words_needed(n, bits):
        raise ValueError("code word count does not match the layer size")
    return bitpack.unpack(words, bits, n)


def fragment_bytes(frag: dict, itemsize: dict) -> int:
    if "h" in frag:
        return sum(ref[1] * itemsize[k] for ref, k in zip(frag["h"], ("hlen", "hoff", "hdata")))
    return frag["w"][1] * 4


def encode_layer(blobs: Blobs, name: str, weight: torch.Tensor, mask: torch.Tensor | None, quant: dict | None,
                 entropy: str = "none", fp16: bool = False) -> dict:
    """Spec entry for one compressed layer; its bytes go into `blobs`."""
    spec: dict = {"n": name, "s": list(weight.shape)}
    flat_mask = mask.reshape(-1).numpy().astype(bool) if mask is not None else None
    if flat_mask is not None:
        layout, g, entries, _ = sparse.best_layout(flat_mask)
        spec["x"] = {"l": layout, "g": g, "e": int(entries.size), **_entropy_or_plain(blobs, entries, g, entropy)}
        spec["nk"] = int(flat_mask.sum())
    if quant is not None:
        from ..quant import quantizer_from_state

        q = quantizer_from_state(quant)
        codes = q.encode(weight.float()).reshape(-1).to(torch.uint8).numpy()
        if flat_mask is not None:
            codes = codes[flat_mask]
        spec["k"] = "q"
        spec["q"] = {"scheme": quant["scheme"], "bits": quant["bits"], "pc": quant["per_channel"],
                     "refit": quant.get("refit", "fast"), "opt": quant.get("options", {})}
        spec["lv"] = blobs.add("levels", quant["levels"].numpy())
        spec["th"] = blobs.add("levels", quant["thresholds"].numpy())
        spec["lvs"] = list(quant["levels"].shape)
        spec["c"] = _entropy_or_plain(blobs, codes, quant["bits"], entropy)
    else:
        spec["k"] = "m"
        values = weight.reshape(-1).numpy()[flat_mask]
        spec["v"] = [("fp16" if fp16 else "fp32"), blobs.add("fp16" if fp16 else "fp32", values)]
    return spec


MAX_ELEMENTS = 1 << 31


def decode_layer(blobs: Blobs, spec: dict) -> tuple[torch.Tensor, torch.Tensor | None, dict | None]:
    """(dequantized weight, mask or None, quant state or None) for one layer spec; validates sizes first."""
    shape = [int(d) for d in spec["s"]]
    if any(d < 0 for d in shape):
        raise ValueError("negative dimension")
    numel = math.prod(shape)
    if numel > MAX_ELEMENTS:
        raise ValueError(f"claims {numel:,} elements")
    mask = None
    if "x" in spec:
        x = spec["x"]
        g, n_entries = int(x["g"]), int(x["e"])
        if not 1 <= g <= 8 or n_entries < 0 or n_entries > 2 * MAX_ELEMENTS:
            raise ValueError("bad index header")
        if x["l"] == "bitmap" and n_entries != numel:
            raise ValueError("bitmap length does not match the shape")
        entries = _symbols_back(blobs, x, g, n_entries)
        positions = sparse.decode_positions({"layout": x["l"], "index_bits": g}, entries, numel)
        if positions.size != int(spec.get("nk", -1)):
            raise ValueError("kept count does not match the index")
        flat = np.zeros(numel, dtype=bool)
        flat[positions] = True
        mask = torch.from_numpy(flat.reshape(shape))
        kept = positions.size
    else:
        kept = numel
    if spec["k"] == "q":
        qs = spec["q"]
        bits = int(qs["bits"])
        if not 1 <= bits <= 8:
            raise ValueError("bad bit width")
        rows, width = (int(v) for v in spec["lvs"])
        levels = blobs.get("levels", spec["lv"])
        thresholds = blobs.get("levels", spec["th"])
        if levels.size != rows * width or thresholds.size != rows * (width - 1) or width > (1 << bits):
            raise ValueError("codebook size does not match the layer")
        if rows not in (1, shape[0] if shape else 1):
            raise ValueError("per-channel rows do not match the shape")
        codes = _symbols_back(blobs, spec["c"], bits, kept)
        if codes.size and int(codes.max()) >= width:
            raise ValueError("code out of range")
        lv = levels.reshape(rows, width)
        values = _dequantize(lv, codes, positions if mask is not None else None, numel // max(rows, 1))
        quant = {"scheme": qs["scheme"], "bits": bits, "per_channel": bool(qs["pc"]), "refit": qs.get("refit", "fast"),
                 "options": dict(qs.get("opt", {})), "levels": torch.from_numpy(lv.copy()),
                 "thresholds": torch.from_numpy(thresholds.reshape(rows, width - 1).copy())}
    elif spec["k"] == "m":
        kind, ref = spec["v"]
        if kind not in ("fp32", "fp16"):
            raise ValueError("bad value blob")
        raw = blobs.get(kind, ref)
        if raw.size != kept:
            raise ValueError("value count does not match the index")
        values = torch.from_numpy(raw.astype(np.float32))
        quant = None
    else:
        raise ValueError(f"unknown layer kind {spec['k']!r}")
    if mask is None:
        return values.reshape(shape), None, quant
    dense = torch.zeros(numel, dtype=torch.float32)
    dense[torch.from_numpy(positions)] = values
    return dense.reshape(shape), mask, quant


CHUNK = 1 << 20


def _dequantize(levels: np.ndarray, codes: np.ndarray, positions: np.ndarray | None, row_len: int) -> torch.Tensor:
    """levels[row, code] for every code, in chunks so no n-sized int64 temporaries exist at once."""
    out = np.empty(codes.size, dtype=np.float32)
    rows = levels.shape[0]
    for start in range(0, codes.size, CHUNK):
        c = codes[start : start + CHUNK].astype(np.intp)
        if rows == 1:
            out[start : start + c.size] = levels[0][c]
        else:
            pos = positions[start : start + c.size] if positions is not None else np.arange(start, start + c.size)
            out[start : start + c.size] = levels[pos // row_len, c]
    return torch.from_numpy(out)
