"""Encode one layer's weights into blob pieces and decode them back, bit-exact.

A layer is one of: `q` quantized (the scheme's Storage: a code stream plus its float tables,
positions optionally sparse), `m` pruned only (fp values of the kept weights + index), or plain
leftovers (written by the container). pack/ never looks inside a scheme: it bit-packs (or
Huffman-codes) the codes, stores the tables, and hands both back to the scheme to decode.
Pieces go into shared blobs (one safetensors tensor per kind) and the layer's spec records
[offset, count] into each, so a small model does not pay a safetensors header per tensor.
"""
from __future__ import annotations

import functools
import inspect
import math

import numpy as np
import torch

from ..errors import UserError
from ..quant import Storage, quantizer_from_state, quantizer_from_storage
from . import bitpack, huffman, sparse

COALESCE = 1 << 16  # bytes: a blob part at least this large is written and hashed as its own piece


class Blobs:
    """Append-only typed arrays; `add` returns [offset, count] in elements."""

    DTYPES = {"codes": np.uint32, "index": np.uint32, "fp32": np.float32, "fp16": np.float16, "bf16": np.uint16,
              "fp64": np.float64, "i64": np.int64, "u8": np.uint8, "hlen": np.uint8, "hoff": np.uint32, "hdata": np.uint8,
              "afreq": np.uint32, "adata": np.uint32}

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

    def kinds(self) -> list[str]:
        return [k for k, v in self.parts.items() if v]

    def pieces(self, order: list[str]) -> list[np.ndarray]:
        """The kinds' bytes back to back in `order`, little-endian, as few uint8 arrays as keeps large parts uncopied:
        a part of at least COALESCE bytes is its own piece, runs of smaller ones are joined (a piece per bias would
        cost a write and a hash call each); joining every kind first copied every byte once more (VGG-16: 3.7 MB)."""
        out: list[np.ndarray] = []
        small: list[np.ndarray] = []
        for kind in order:
            for part in self.parts[kind]:
                raw = part.astype(part.dtype.newbyteorder("<"), copy=False).reshape(-1).view(np.uint8)
                if raw.nbytes >= COALESCE:
                    if small:
                        out.append(np.concatenate(small))
                        small = []
                    out.append(raw)
                elif raw.nbytes:
                    small.append(raw)
        if small:
            out.append(np.concatenate(small))
        return out

    def get(self, kind: str, ref) -> np.ndarray:
        off, count = int(ref[0]), int(ref[1])
        arr = self.arrays.get(kind)
        if arr is None or off < 0 or count < 0 or off + count > arr.size:
            raise ValueError(f"reference {ref} is outside the '{kind}' blob")
        return arr[off : off + count]


ITEMSIZE = {k: np.dtype(v).itemsize for k, v in Blobs.DTYPES.items()}
NATURAL = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64, "i64": torch.int64, "u8": torch.uint8}
FLOAT_KINDS = {dtype: kind for kind, dtype in NATURAL.items() if dtype.is_floating_point}  # a float tensor's own blob


def tensor_to_blob(blobs: Blobs, t: torch.Tensor, fp16: bool = False) -> tuple[str, list[int]]:
    """(kind, ref) of a tensor stored losslessly in its own kind (fp32 → fp16 only when asked)."""
    t = t.detach().cpu().contiguous()
    if t.is_floating_point():
        kind = "fp16" if fp16 and t.dtype in (torch.float32, torch.float64) else FLOAT_KINDS.get(t.dtype, "fp32")
        if kind == "bf16":
            return kind, blobs.add(kind, t.view(torch.int16).numpy().view(np.uint16))
        return kind, blobs.add(kind, t.to(torch.float32 if t.dtype not in FLOAT_KINDS else t.dtype).numpy())
    if t.dtype in (torch.bool, torch.uint8):
        return "u8", blobs.add("u8", t.to(torch.uint8).numpy())
    return "i64", blobs.add("i64", t.long().numpy())


def blob_to_tensor(blobs: Blobs, kind: str, ref) -> torch.Tensor:
    """The 1-D tensor a (kind, ref) pair holds, in its kind's natural dtype (a copy, writable)."""
    raw = blobs.get(kind, ref)
    if kind == "bf16":
        return torch.from_numpy(raw.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(raw.copy())


def _constriction():
    try:
        import constriction
    except ImportError:
        raise UserError("ANS coding needs the 'constriction' package: pip install 'dnncompress[ans]'") from None
    return constriction


def _ans_model(counts: np.ndarray):
    """The categorical model both sides build from the stored integer counts (float64 division: the same bits)."""
    counts = counts.astype(np.float64)
    return _constriction().stream.model.Categorical(counts / counts.sum(), perfect=False)


def ans_encode(symbols: np.ndarray, alphabet: int) -> tuple[np.ndarray, np.ndarray]:
    """(symbol counts [uint32, one per symbol of the alphabet], rANS words [uint32]) of an order-0 coding."""
    counts = np.bincount(symbols, minlength=alphabet).astype(np.uint32)
    coder = _constriction().stream.stack.AnsCoder()
    coder.encode_reverse(symbols.astype(np.int32), _ans_model(counts))
    return counts, coder.get_compressed().astype(np.uint32)


def ans_decode(counts: np.ndarray, words: np.ndarray, n: int) -> np.ndarray:
    if counts.sum() != n:
        raise ValueError("ANS symbol counts do not add up to the stream length")
    if n == 0:
        return np.zeros(0, dtype=np.uint8)
    coder = _constriction().stream.stack.AnsCoder(np.array(words, dtype=np.uint32))
    out = coder.decode(_ans_model(counts), n)
    return out.astype(np.uint8)


def _entropy_or_plain(blobs: Blobs, symbols: np.ndarray, bits: int, entropy: str) -> dict:
    """Pack symbols plainly, Huffman-coded, or (entropy 'ans') rANS-coded, whichever is smallest; the spec fragment."""
    candidates = {"w": bitpack.words_needed(symbols.size, bits) * 4}
    if entropy in ("huffman", "ans") and symbols.size:
        huff = huffman.encode(symbols, 1 << bits)
        candidates["h"] = huff[0].size + huff[1].size * 4 + huff[2].size
    if entropy == "ans" and symbols.size:
        ans = ans_encode(symbols, 1 << bits)
        candidates["a"] = (ans[0].size + ans[1].size) * 4
    best = min(candidates, key=lambda k: (candidates[k], k != "w"))  # ties go to plain packing
    if best == "h":
        return {"h": [blobs.add("hlen", huff[0]), blobs.add("hoff", huff[1]), blobs.add("hdata", huff[2])]}
    if best == "a":
        return {"a": [blobs.add("afreq", ans[0]), blobs.add("adata", ans[1])]}
    return {"w": blobs.add("codes", bitpack.pack(symbols, bits))}


def _symbols_back(blobs: Blobs, frag: dict, bits: int, n: int) -> np.ndarray:
    if "h" in frag:
        lref, oref, dref = frag["h"]
        lengths = blobs.get("hlen", lref)
        if lengths.size != 1 << bits:
            raise ValueError("Huffman table size does not match the bit width")
        return huffman.decode(lengths, blobs.get("hoff", oref), blobs.get("hdata", dref), n)
    if "a" in frag:
        fref, dref = frag["a"]
        counts = blobs.get("afreq", fref)
        if counts.size != 1 << bits:
            raise ValueError("ANS table size does not match the bit width")
        return ans_decode(counts, blobs.get("adata", dref), n)
    return bitpack.unpack(_plain_words(blobs, frag, bits, n), bits, n)


def _plain_words(blobs: Blobs, frag: dict, bits: int, n: int) -> np.ndarray:
    """The uint32 words of a plainly bit-packed stream of n codes, their count checked."""
    words = blobs.get("codes", frag["w"])
    if words.size != bitpack.words_needed(n, bits):
        raise ValueError("code word count does not match the layer size")
    return words


def fragment_bytes(frag: dict) -> int:
    if "h" in frag:
        return sum(ref[1] * ITEMSIZE[k] for ref, k in zip(frag["h"], ("hlen", "hoff", "hdata")))
    if "a" in frag:
        return sum(ref[1] * ITEMSIZE[k] for ref, k in zip(frag["a"], ("afreq", "adata")))
    return frag["w"][1] * 4


def storage_bytes(storage: Storage) -> int:
    """Bytes a scheme's storage costs in a .dnc (plain bit-packed codes + its tables), before any
    sparse index or entropy coding: what the joint search prices a layer at."""
    return bitpack.words_needed(storage.units, storage.code_bits) * 4 + sum(t.numel() * t.element_size() for t in storage.tables.values())


def index_bytes(mask: torch.Tensor) -> int:
    """Bytes of the smaller sparse layout of a mask (0 when nothing is pruned)."""
    flat = mask.reshape(-1).cpu().numpy().astype(bool)
    if flat.all():
        return 0
    _, g, entries, _, _ = sparse.best_layout(flat)
    return bitpack.words_needed(entries.size, g) * 4


def encode_layer(blobs: Blobs, name: str, weight: torch.Tensor, mask: torch.Tensor | None, quant: dict | None,
                 entropy: str = "none", fp16: bool = False) -> dict:
    """Spec entry for one compressed layer; its bytes go into `blobs`."""
    spec: dict = {"n": name, "s": list(weight.shape)}
    if weight.dtype != torch.float32:
        spec["d"] = str(weight.dtype).removeprefix("torch.")
    flat_mask = mask.reshape(-1).numpy().astype(bool) if mask is not None else None
    if flat_mask is not None:
        layout, g, entries, _, block = sparse.best_layout(flat_mask)
        spec["x"] = {"l": layout, "g": g, "e": int(entries.size), **_entropy_or_plain(blobs, entries, g, entropy)}
        if block > 1:
            spec["x"]["b"] = block
        spec["nk"] = int(flat_mask.sum())
    if quant is not None:
        q, w32 = quantizer_from_state(quant), weight.float()
        packed = getattr(q, "storage_packed", None) if mask is None and entropy == "none" else None  # a plugin may predate it
        st = (packed(w32) if packed else None) or q.storage(w32, mask)
        if not 1 <= st.code_bits <= 8:
            raise ValueError(f"scheme '{quant['scheme']}' stores {st.code_bits}-bit codes; .dnc packs 1–8")
        tables = {}
        for key in sorted(st.tables):
            kind, ref = tensor_to_blob(blobs, st.tables[key])
            tables[key] = [kind, ref, list(st.tables[key].shape)]
        if st.codes is None:  # bit-packed by the scheme already
            if st.words.size != bitpack.words_needed(st.units, st.code_bits):
                raise ValueError(f"scheme '{quant['scheme']}' packed {st.units} codes into {st.words.size} words")
            stream = {"w": blobs.add("codes", st.words)}
        else:
            stream = _entropy_or_plain(blobs, st.codes.reshape(-1).to(torch.uint8).numpy(), st.code_bits, entropy)
        spec.update({"k": "q", "q": st.meta, "t": tables, "cb": st.code_bits, "nc": st.units, "c": stream})
    else:
        spec["k"] = "m"
        values = weight.float().reshape(-1).numpy()[flat_mask]
        spec["v"] = [("fp16" if fp16 else "fp32"), blobs.add("fp16" if fp16 else "fp32", values)]
    return spec


MAX_ELEMENTS = 1 << 31


@functools.cache
def _takes_out(cls) -> bool:
    return "out" in inspect.signature(cls.decode_storage).parameters


def decode_layer(blobs: Blobs, spec: dict, out: torch.Tensor | None = None, quantizer=None,
                 states: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, dict | None]:
    """(dequantized fp32 weight, mask or None, quant state or None) for one layer spec; validates sizes first.
    With `out` (a contiguous float32 tensor of the layer's shape: a model's own parameter) the weight is
    decoded into it and it is what comes back: no second copy of the model. `quantizer`: layer_quantizer's
    result for this spec, when the caller built it already. `states=False`: no quant state is exported (None),
    for a caller that keeps only the weights."""
    weight, mask, q = _decode_layer(blobs, spec, out, quantizer)
    q = q.export_state() if q is not None and states else None
    if out is not None and weight.data_ptr() != out.data_ptr():
        out.copy_(weight.reshape(out.shape))
        weight = out
    return weight, mask, q


def _shape(spec: dict) -> tuple[list[int], int]:
    shape = [int(d) for d in spec["s"]]
    if any(d < 0 for d in shape):
        raise ValueError("negative dimension")
    numel = math.prod(shape)
    if numel > MAX_ELEMENTS:
        raise ValueError(f"claims {numel:,} elements")
    return shape, numel


def layer_quantizer(blobs: Blobs, spec: dict):
    """The quantizer a quantized layer spec describes, built from its tables (ValueError if they do not fit)."""
    shape, _ = _shape(spec)
    tables = {}
    for key, entry in spec["t"].items():
        kind, ref, tshape = entry
        if kind not in ("fp32", "fp16"):
            raise ValueError("bad table kind")
        t = blob_to_tensor(blobs, kind, ref)
        if t.numel() != math.prod(int(d) for d in tshape):
            raise ValueError(f"table '{key}' size does not match its shape")
        tables[key] = t.reshape([int(d) for d in tshape])
    return quantizer_from_storage(spec["q"], tables, tuple(shape))


def _decode_layer(blobs: Blobs, spec: dict, out: torch.Tensor | None, q=None):
    shape, numel = _shape(spec)
    mask = positions = None
    if "x" in spec:
        x = spec["x"]
        g, n_entries, block = int(x["g"]), int(x["e"]), int(x.get("b", 1))
        if not 1 <= g <= 8 or n_entries < 0 or n_entries > 2 * MAX_ELEMENTS or not 1 <= block <= 4096:
            raise ValueError("bad index header")
        if x["l"] == "bitmap" and n_entries * block != numel:
            raise ValueError("bitmap length does not match the shape")
        entries = _symbols_back(blobs, x, g, n_entries)
        positions = sparse.decode_positions({"layout": x["l"], "index_bits": g, "block": block}, entries, numel)
        if positions.size != int(spec.get("nk", -1)):
            raise ValueError("kept count does not match the index")
        flat = np.zeros(numel, dtype=bool)
        flat[positions] = True
        mask = torch.from_numpy(flat.reshape(shape))
    if spec["k"] == "q":
        q = q if q is not None else layer_quantizer(blobs, spec)
        bits, units = int(spec["cb"]), int(spec["nc"])
        if not 1 <= bits <= 8 or not 0 <= units <= numel:
            raise ValueError("bad code stream header")
        if mask is None and "w" in spec["c"] and units == numel:  # plain bit-packed codes: the scheme may decode them as they are
            words = _plain_words(blobs, spec["c"], bits, units)
            decode_packed = getattr(q, "decode_packed", None)  # a plugin scheme may predate it
            dense = decode_packed(np.ascontiguousarray(words, dtype="<u4").view(np.uint8), bits, tuple(shape), out) if decode_packed else None
            if dense is not None:
                return dense, None, q
        codes = torch.from_numpy(_symbols_back(blobs, spec["c"], bits, units).astype(np.uint8, copy=False))
        extra = {"out": out} if out is not None and _takes_out(type(q)) else {}  # a plugin scheme may predate `out`
        return q.decode_storage(codes, tuple(shape), mask, **extra), mask, q
    if spec["k"] != "m":
        raise ValueError(f"unknown layer kind {spec['k']!r}")
    kind, ref = spec["v"]
    if kind not in ("fp32", "fp16"):
        raise ValueError("bad value blob")
    values = blob_to_tensor(blobs, kind, ref).float()
    if values.numel() != (positions.size if positions is not None else numel):
        raise ValueError("value count does not match the index")
    if mask is None:
        return values.reshape(shape), None, None
    dense = torch.zeros(numel, dtype=torch.float32)
    dense[torch.from_numpy(positions)] = values
    return dense.reshape(shape), mask, None
