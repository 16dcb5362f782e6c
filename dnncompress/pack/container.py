"""The .dnc file: a standard safetensors container (no pickle) whose fixed cost is a few hundred bytes.

Version 4 (written): one U8 tensor `dnc` holds every blob kind back to back (widest dtype first, so each
is aligned), then the spec: compact JSON, raw-deflated with a frozen preset dictionary (spec_dict.py),
its references stripped to counts (offsets follow from the order the layers are written in). The
metadata holds format, version, the spec's compressed length and the digest: SHA-256 (base64) of the
canonical JSON of the whole header (the sha256 value left out) and then the data section, so every byte
of the file is covered. Version 3 (read): one tensor per blob kind, the spec as JSON in the metadata.
The file is written by our own canonical writer (sorted keys, fixed layout), so the same checkpoint
always gives the same bytes. Reading parses the header by hand with bounds checks before trusting any
size, verifies the digest, then decodes; every failure is a one-line UserError.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn

import numpy as np
import torch

from ..errors import UserError
from ..fileio import require_file
from ..surgery import tensor_identity, weight_key
from . import bitpack, huffman
from .layers import ITEMSIZE, NATURAL, Blobs, blob_to_tensor, decode_layer, encode_layer, layer_quantizer, tensor_to_blob
from .spec_dict import SPEC_DICT

FORMAT = "dnncompress-packed"
VERSION = 4
READS = ("3", "4")
BLOB = "dnc"  # the one tensor of a version-4 file
DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.bool,
                                                     torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)}
MAX_HEADER = 64 << 20
ST_DTYPES = {"U8": np.uint8, "U16": np.uint16, "U32": np.uint32, "F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64}
ST_NAMES = {np.dtype(v): k for k, v in ST_DTYPES.items()}


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _digest_head(header: dict) -> bytes:
    """What the digest hashes before the data: the canonical header without the sha256 value itself."""
    meta = {k: v for k, v in header["__metadata__"].items() if k != "sha256"}
    return canonical_json({**header, "__metadata__": meta}).encode()


def _header_digest(header: dict, data_pieces, b64: bool = True) -> str:
    """SHA-256 of the canonical header (without the sha256 value itself), then the data pieces in order:
    base64 (version 4) or hex (version 3)."""
    h = hashlib.sha256(_digest_head(header))
    for piece in data_pieces:
        h.update(piece)
    return base64.b64encode(h.digest()).decode().rstrip("=") if b64 else h.hexdigest()


def _int(v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 40:
        raise ValueError(f"bad count {str(v)[:20]}")
    return v


def _numel(shape) -> int:
    if not isinstance(shape, list):
        raise ValueError("bad shape")
    return math.prod(_int(d) for d in shape)


# Version 4 writes a reference as nothing at all where its count follows from the spec (a table's shape, a
# code stream's length and width, a Huffman stream's alphabet and block count), and as its count otherwise
# (a Huffman payload); offsets follow from the write order: each kind's references are back to back.
def _fragment(frag: dict, n: int, bits: int, compact: bool, take) -> None:
    """A code stream {"w": ref} (bit-packed) or {"h": [lengths, offsets, payload]} (Huffman) of n b-bit symbols."""
    if "h" in frag:
        if compact:
            refs = frag["h"]
            take("hlen", refs[0], 1 << bits), take("hoff", refs[1], -(-n // huffman.BLOCK))
            frag["h"] = take("hdata", refs[2], None)
        else:
            frag["h"] = [take("hlen", None, 1 << bits), take("hoff", None, -(-n // huffman.BLOCK)), take("hdata", frag["h"], None)]
    elif "a" in frag:  # rANS: one count per symbol of the alphabet, then the words
        if compact:
            take("afreq", frag["a"][0], 1 << bits)
            frag["a"] = take("adata", frag["a"][1], None)
        else:
            frag["a"] = [take("afreq", None, 1 << bits), take("adata", frag["a"], None)]
    elif compact:
        take("codes", frag.pop("w"), bitpack.words_needed(n, bits))
    else:
        frag["w"] = take("codes", None, bitpack.words_needed(n, bits))


def _walk(spec: dict, compact: bool, take) -> None:
    """Every reference, in the order encode_layer and the leftovers took them; `take(kind, written, implied)`
    returns what replaces it."""
    for layer in spec["layers"]:
        if layer["k"] == "t":
            continue
        if "x" in layer:
            _fragment(layer["x"], _int(layer["x"]["e"]), _int(layer["x"]["g"]), compact, take)
        if layer["k"] == "q":
            for key in sorted(layer["t"]):
                entry = layer["t"][key]
                if compact:
                    take(entry[0], entry.pop(1), _numel(entry[1]))
                else:
                    entry.insert(1, take(entry[0], None, _numel(entry[1])))
            _fragment(layer["c"], _int(layer["nc"]), _int(layer["cb"]), compact, take)
        elif compact:
            take(layer["v"][0], layer["v"].pop(1), layer["nk"] if "nk" in layer else _numel(layer["s"]))
        else:
            layer["v"].insert(1, take(layer["v"][0], None, _int(layer["nk"]) if "nk" in layer else _numel(layer["s"])))
    for entry in spec["leftovers"]:
        if entry[2] == "tie":
            continue
        if compact:
            take(entry[2], entry.pop(3), _numel(entry[1]))
        else:
            entry.insert(3, take(entry[2], None, _numel(entry[1])))


def compact_spec(spec: dict) -> dict:
    """The spec as version 4 writes it: no offsets, and only the counts nothing else implies."""
    out = json.loads(canonical_json(spec))  # a deep copy of plain values; json's C code is 5× faster than copy's
    cursor: dict[str, int] = {}

    def take(kind, ref, implied):
        offset, count = ref
        if offset != cursor.get(kind, 0) or (implied is not None and count != implied):
            raise AssertionError(f"'{kind}' references are not in write order or miscount")  # encode_layer changed
        cursor[kind] = offset + count
        return count

    _walk(out, True, take)
    return out


def expand_spec(spec: dict) -> tuple[dict, dict[str, int]]:
    """(the spec with [offset, count] references again, the element count of each blob kind)."""
    cursor: dict[str, int] = {}

    def take(kind, written, implied):
        if kind not in Blobs.DTYPES:
            raise ValueError(f"bad reference into blob {str(kind)[:20]!r}")
        count = _int(written if implied is None else implied)
        ref = [cursor.get(kind, 0), count]
        cursor[kind] = ref[0] + count
        return ref

    _walk(spec, False, take)
    return spec, cursor


def blob_order(kinds) -> list[str]:
    """Widest dtype first, then by name: each kind's bytes start aligned to its item size."""
    return sorted(kinds, key=lambda k: (-ITEMSIZE[k], k))


def deflate_text(text: str) -> bytes:
    """Raw deflate (level 9, 32 KB window) with the format's preset dictionary."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, SPEC_DICT)
    return c.compress(text.encode()) + c.flush()


def deflate_spec(spec: dict) -> bytes:
    return deflate_text(canonical_json(compact_spec(spec)))


def inflate_spec(raw: bytes, limit: int = MAX_HEADER) -> str:
    d = zlib.decompressobj(-15, zdict=SPEC_DICT)
    text = d.decompress(raw, limit)
    if d.unconsumed_tail or not d.eof:
        raise ValueError("the spec is truncated or larger than any model's")
    return text.decode()


def build_packed(ckpt: dict, entropy: str = "none", fp16: bool = False) -> tuple[list[np.ndarray], dict[str, str], dict]:
    """(the `dnc` tensor's pieces as bytes, metadata, spec) for a checkpoint; layer by layer, no whole-model copies."""
    if entropy not in ("none", "huffman", "ans"):
        raise UserError(f"entropy coder must be 'none', 'huffman' or 'ans', got '{entropy}'")
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
            # metrics as reported (6 significant digits): a loss's 17 digits are bytes no reader needs
            "metrics": {k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in (ckpt.get("metrics") or {}).items()
                        if isinstance(v, (int, float, str))},
            "entropy": entropy, "fp16": fp16, "layers": layers, "leftovers": leftovers}
    if ckpt.get("structure"):  # structured pruning's smaller sizes: the reader rebuilds the architecture shrunk
        spec["structure"] = ckpt["structure"]
    packed = deflate_spec(spec)
    pieces = blobs.pieces(blob_order(blobs.kinds()))
    pieces.append(np.frombuffer(packed, dtype=np.uint8))
    metadata = {"format": FORMAT, "version": str(VERSION), "spec": str(len(packed))}
    return pieces, metadata, spec


def _same(a, b) -> bool:
    """Equal masks or quantizer states (tensors compared by value)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def serialize(pieces: list[np.ndarray], metadata: dict[str, str]) -> tuple[bytes, list[np.ndarray]]:
    """(8-byte length + header, data pieces) of a canonical safetensors file holding one U8 tensor `dnc`
    made of the pieces back to back; the header JSON has sorted keys and is space-padded to 8 bytes."""
    header = _header(pieces, metadata)
    return _head(_signed(header, _header_digest(header, pieces))), pieces


def write_packed(ckpt: dict, path: str | os.PathLike, entropy: str = "none", fp16: bool = False) -> dict:
    """Write the file serialize() describes: the header's length does not depend on the digest (43 base64
    characters), so the data goes at its offset first and the header, digest included, last. The data is written on
    the process's worker thread while this one hashes (both let go of the GIL). Not the other way round: right after
    the encoding kernels an OpenMP worker still spins on the other core, and the hash, the longer job (2 ms for
    VGG-16's 3.7 MB), then waited for it (A/B, four runs of a VGG-16 durable pack: 0.5–1.0 ms less of 13–19 ms). Callers write to a
    temporary path (fileio.atomic_path)."""
    pieces, metadata, spec = build_packed(ckpt, entropy, fp16)
    header = _header(pieces, metadata)
    placeholder = _head(_signed(header, "A" * DIGEST_CHARS))
    with open(path, "wb") as f:
        def write_data():
            f.seek(len(placeholder))
            for piece in pieces:
                f.write(piece)
            _start_writeback(f)

        writing = _Worker.get().submit(write_data)
        try:
            digest = _header_digest(header, pieces)
        finally:
            writing_error = writing.exception()  # waits: the file is this thread's again only after the writer is done
        if writing_error is not None:
            raise writing_error
        head = _head(_signed(header, digest))
        assert len(head) == len(placeholder)
        f.seek(0)
        f.write(head)
    return packed_info(spec, os.path.getsize(path))


DIGEST_CHARS = 43  # base64 of SHA-256's 32 bytes, padding stripped


def _header(pieces: list[np.ndarray], metadata: dict[str, str]) -> dict:
    """The safetensors header of a version-4 file before signing: one U8 tensor `dnc`, the pieces back to back."""
    n = sum(piece.nbytes for piece in pieces)
    return {BLOB: {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}, "__metadata__": dict(metadata)}


def _signed(header: dict, digest: str) -> dict:
    """The header with its digest in the metadata."""
    return {**header, "__metadata__": {**header["__metadata__"], "sha256": digest}}


class _Worker:
    """One long-lived helper thread per process: it hashes while a reader parses, and writes while a packer hashes.
    Starting a thread per file made every read wait for the new thread to be scheduled: up to 3 ms of a 14 ms unpack
    on a 2-core machine whose other core an OpenMP worker was still spinning on after the last parallel kernel. A
    forked child makes its own (the parent's thread does not exist there)."""

    pid: int | None = None
    pool: ThreadPoolExecutor | None = None
    lock = threading.Lock()

    @classmethod
    def get(cls) -> ThreadPoolExecutor:
        with cls.lock:
            if cls.pool is None or cls.pid != os.getpid():
                cls.pid, cls.pool = os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="dnncompress-io")
            return cls.pool

    @classmethod
    def forget(cls) -> None:
        cls.pid, cls.pool, cls.lock = None, None, threading.Lock()  # the lock may have been held by a thread gone now


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_Worker.forget)


def _start_writeback(f) -> None:
    """Have the kernel start writing the data section to disk now (POSIX_FADV_DONTNEED on dirty pages starts
    their writeback without waiting), while the digest is finished: the caller's fsync then waits for less
    (3.7 MB here: write, hash and fsync 9.4 → 4–8 ms). A no-op where the call does not exist or fails."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    try:
        f.flush()
        advise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    except (OSError, AttributeError, ValueError):
        pass


def _head(header: dict) -> bytes:
    """8-byte length + the canonical header JSON, space-padded to 8 bytes."""
    text = canonical_json(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def packed_info(spec: dict, nbytes: int) -> dict:
    """What packing reports (and the pack stage records in the history) for a file of `nbytes` with this spec."""
    return {"bytes": nbytes, "layers": len(spec["layers"]), "entropy": spec["entropy"]}


def invalid_file(path, what: str) -> UserError:
    return UserError(f"{path} is not a valid .dnc file: {what}; re-create it with 'dnncompress pack'")


def wrong_kind_error(p) -> UserError | None:
    from ..filekind import wrong_kind

    message = wrong_kind(p, "packed")
    return UserError(message) if message else None


def _json_loads(text, p, what: str):
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise invalid_file(p, f"{what} is not valid JSON") from None


class Digest:
    """A file's SHA-256 check, computed on the process's helper thread while the reader reads on, parses, vets and
    builds quantizers (hashlib lets go of the GIL: VGG-16's 3.7 MB take 2 ms, about what that Python work takes). The
    reader feeds it the data a chunk at a time as it reads them, so that hashing starts with the first chunk, not after
    the whole read. `check()` waits for it and raises on a mismatch; readers call it before any weight is decoded,
    and before reporting any other fault of the file, so a damaged file is still called damaged."""

    def __init__(self, path, header: dict, b64: bool):
        self.path, self.want, self.b64 = path, header["__metadata__"].get("sha256"), b64
        self._hash = hashlib.sha256(_digest_head(header))
        self._worker = _Worker.get()
        self._hashing = None

    def feed(self, chunk) -> None:
        """Hash `chunk` next (the one worker thread runs the updates in the order they came)."""
        self._worker.submit(self._hash.update, chunk)

    def finish(self) -> None:
        """No more data: the digest is made after the updates queued before it."""
        self._hashing = self._worker.submit(self._final)

    def _final(self) -> str:
        raw = self._hash.digest()
        return base64.b64encode(raw).decode().rstrip("=") if self.b64 else raw.hex()

    def check(self) -> None:
        try:
            got = self._hashing.result()
        except Exception:  # a digest that cannot be computed is a mismatch, and reported as one
            got = None
        if got != self.want:
            raise invalid_file(self.path, "SHA-256 mismatch (corrupted or modified)")


READ_CHUNK = 1 << 20  # bytes read, then handed to the hash, at a time


def _check_header(p, header, n: int) -> tuple[dict, str, dict]:
    """(metadata, version, tensor descriptors) of a parsed safetensors header whose data section holds `n` bytes,
    refused before a byte of the data is read."""
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
    descriptors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            shape = [int(d) for d in info["shape"]]
            start, end = (int(v) for v in info["data_offsets"])
            descriptors[name] = (info["dtype"], shape[0] if len(shape) == 1 else -1, start, end)
        except (KeyError, TypeError, ValueError, OverflowError, IndexError):
            raise invalid_file(p, f"tensor '{name}' has a bad descriptor") from None
    spans = sorted((start, end) for _, _, start, end in descriptors.values())
    if any(a[1] != b[0] for a, b in zip(spans, spans[1:])) or (spans[0][0] if spans else 0) != 0 or (spans[-1][1] if spans else 0) != n:
        raise invalid_file(p, "tensor data overlaps, leaves gaps or has trailing bytes")
    return meta, version, descriptors


def _read_hashed(f, p, n: int, digest: Digest) -> np.ndarray:
    """The data section (`n` bytes, uint8), read a chunk at a time into one buffer, each chunk handed to the digest as
    soon as it is in: hashing runs beside the rest of the read. A file that shrinks or grows meanwhile is refused."""
    data = torch.empty(n, dtype=torch.uint8).numpy()  # not np.empty: numpy asks for huge pages from 4 MiB on, and
    view = memoryview(data)  # a fresh process then stalled on the kernel's compaction (a 16 MB read once took 32 ms, not 4)
    for start in range(0, n, READ_CHUNK):
        part = view[start : start + READ_CHUNK]
        if f.readinto(part) != len(part):
            raise invalid_file(p, "truncated while it was read")
        digest.feed(part)
    digest.finish()
    if f.read(1):
        raise invalid_file(p, "it grew while it was read")
    return data


def read_packed(path: str | os.PathLike) -> tuple[dict, Blobs]:
    """Parse and verify a .dnc; returns (spec, blobs). Never allocates more than the file holds."""
    spec, blobs, digest = read_packed_deferred(path)
    digest.check()
    return spec, blobs


def read_packed_deferred(path: str | os.PathLike) -> tuple[dict, Blobs, Digest]:
    """read_packed with the digest still being computed: (spec, blobs, digest); the caller calls digest.check()
    before decoding anything, and before raising any other fault it finds."""
    p = require_file(path, "packed file")
    with open(p, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise invalid_file(p, "truncated (no header)")
        (hlen,) = struct.unpack("<Q", head)
        if hlen > min(size - 8, MAX_HEADER):
            raise wrong_kind_error(p) or invalid_file(p, f"header length {hlen} exceeds the file")
        header = _json_loads(f.read(hlen), p, "header")
        meta, version, descriptors = _check_header(p, header, size - 8 - hlen)
        digest = Digest(p, header, b64=version != "3")
        data = _read_hashed(f, p, size - 8 - hlen, digest)
    try:
        spec, arrays = (_read_v3 if version == "3" else _read_v4)(p, meta, descriptors, data)
        if not isinstance(spec, dict) or not isinstance(spec.get("layers"), list) or not isinstance(spec.get("leftovers"), list):
            raise invalid_file(p, "spec lacks layers")
    except UserError:
        digest.check()
        raise
    return spec, Blobs(arrays), digest


def _read_v3(p, meta: dict, descriptors: dict, data: bytes) -> tuple[dict, dict]:
    """One tensor per blob kind, the spec as JSON text in the metadata."""
    arrays = {}
    for name, (st_dtype, count, start, end) in descriptors.items():
        want = Blobs.DTYPES.get(name)
        dtype = ST_DTYPES.get(st_dtype)
        if want is None or dtype is None or np.dtype(want) != np.dtype(dtype):
            raise invalid_file(p, f"tensor '{name}' is {str(st_dtype)[:10]}, not the dtype of any blob of that name")
        if count < 0 or end - start != count * np.dtype(dtype).itemsize:
            raise invalid_file(p, f"tensor '{name}' does not fit the file (truncated?)")
        arrays[name] = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=start)
    return _json_loads(meta.get("spec", ""), p, "spec"), arrays


def _read_v4(p, meta: dict, descriptors: dict, data: bytes) -> tuple[dict, dict]:
    """One U8 tensor: the blob kinds back to back, then the deflated compact spec."""
    if set(descriptors) != {BLOB} or descriptors[BLOB][0] != "U8" or descriptors[BLOB][1] != len(data):
        raise invalid_file(p, f"a version-4 file holds exactly one U8 tensor '{BLOB}' spanning its data")
    try:
        spec_len = int(meta.get("spec", ""))
    except ValueError:
        raise invalid_file(p, "the spec length is not a number") from None
    if not 0 < spec_len <= len(data):
        raise invalid_file(p, "the spec length exceeds the file")
    try:
        text = inflate_spec(data[len(data) - spec_len :])
    except (zlib.error, ValueError, UnicodeDecodeError) as e:
        raise invalid_file(p, f"the spec does not inflate ({str(e)[:80]})") from None
    spec = _json_loads(text, p, "spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("layers"), list) or not isinstance(spec.get("leftovers"), list):
        raise invalid_file(p, "spec lacks layers")
    try:
        spec, counts = expand_spec(spec)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise invalid_file(p, f"a reference is malformed ({type(e).__name__})") from None
    arrays, offset = {}, 0
    for kind in blob_order(counts):
        n = counts[kind] * ITEMSIZE[kind]
        if offset + n > len(data) - spec_len:
            raise invalid_file(p, f"blob '{kind}' does not fit the file (truncated?)")
        arrays[kind] = np.frombuffer(data, dtype=np.dtype(Blobs.DTYPES[kind]).newbyteorder("<"), count=counts[kind], offset=offset)
        offset += n
    if offset != len(data) - spec_len:
        raise invalid_file(p, "the blobs leave gaps or trailing bytes before the spec")
    return spec, arrays


def _dtype(name, default: torch.dtype) -> torch.dtype:
    if name is None:
        return default
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {str(name)[:20]!r}")
    return DTYPES[name]


def _target(into: dict | None, key: str, shape, dtype: torch.dtype) -> torch.Tensor | None:
    """The caller's own tensor to decode `key` into, where it has exactly this shape and dtype."""
    t = into.get(key) if into else None
    if t is None or t.dtype != dtype or list(t.shape) != [int(d) for d in shape] or t.device.type != "cpu" or not t.is_contiguous():
        return None
    return t


def restore(spec: dict, blobs: Blobs, path="<packed>", into: dict[str, torch.Tensor] | None = None,
            digest: Digest | None = None, states: bool = True) -> tuple[dict, dict, dict]:
    """(state_dict with dequantized weights in their recorded dtypes, masks, quant states) from a
    verified spec; tied tensors come back as one tensor under each of their names. `into`: tensors
    (a model's own parameters and buffers, by state_dict key) to decode into in place, where shape and
    dtype match; the state then holds those very tensors. `digest`: the file's pending check (the hashing thread
    overlaps this work): made before the first decode into a caller's tensor (after every layer's quantizer is
    built), else at the end, and before any fault of the file is reported, so a damaged file is called damaged.
    `states=False`: the quant states are left out (an empty dict), for a caller that keeps only the weights."""
    try:
        quantizers = {i: layer_quantizer(blobs, layer) for i, layer in enumerate(spec["layers"]) if layer["k"] == "q"}
    except READ_FAULTS as e:
        _refuse(path, e, digest)
    if digest is not None and into:  # the caller's own tensors are about to be written: only into a verified file's values
        digest.check()
        digest = None
    try:
        state, masks, quant = _decode_all(spec, blobs, into, quantizers, states)
    except READ_FAULTS as e:
        _refuse(path, e, digest)
    if digest is not None:
        digest.check()
    return state, masks, quant


def _decode_all(spec: dict, blobs: Blobs, into, quantizers: dict, states: bool = True) -> tuple[dict, dict, dict]:
    """restore's decoding, every layer's quantizer built already (`quantizers`, by layer index)."""
    state, masks, quant = {}, {}, {}
    tied_layers = []
    for i, layer in enumerate(spec["layers"]):
        if layer["k"] == "t":
            tied_layers.append(layer)
            continue
        key, dtype = weight_key(layer["n"]), _dtype(layer.get("d"), torch.float32)
        weight, mask, q = decode_layer(blobs, layer, _target(into, key, layer["s"], torch.float32) if dtype == torch.float32 else None,
                                       quantizers.get(i), states)
        name = layer["n"]
        state[key] = weight.to(dtype)
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
        raw = blobs.get(kind, ref)
        if raw.size != math.prod(shape):  # exact (np.prod would wrap at 2**63), and 60× cheaper a call
            raise ValueError(f"leftover '{key}' size does not match its shape")
        dtype = _dtype(entry[4] if len(entry) == 5 else None, NATURAL[kind])
        own = _target(into, key, shape, dtype)
        if own is not None and dtype == NATURAL[kind] and kind != "bf16":  # the blob's values straight into the caller's tensor
            np.copyto(own.detach().numpy().reshape(-1), raw)
            state[key] = own
            continue
        value = blob_to_tensor(blobs, kind, ref).reshape(shape).to(dtype)
        state[key] = own.copy_(value) if own is not None else value
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
    return state, masks, quant


READ_FAULTS = (ValueError, KeyError, TypeError, IndexError, OverflowError, MemoryError, AttributeError, RuntimeError, RecursionError, UserError)


def _refuse(path, e: BaseException, digest: Digest | None) -> NoReturn:
    """Raise the one-line error for a file whose spec or blobs break decoding (a scheme refusing its options
    included), after the digest check when one is pending: a damaged file is called damaged, not malformed."""
    if digest is not None:
        digest.check()
    raise invalid_file(path, (str(e).splitlines() or [type(e).__name__])[0][:160]) from None
