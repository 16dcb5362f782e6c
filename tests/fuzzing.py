"""Seeded mutations of .dnc files, checkpoints and configs, and the judge of what a reader did with
them. Shared by the suite (a few hundred cases) and `benchmarks/trust_bench.py` (thousands).

Outcomes:
- `error`: a one-line UserError (what must happen to anything damaged or hostile);
- `same`: loaded, and equal to the original (the mutation touched nothing that decides a weight);
- `forged`: a re-signed file loaded with other weights that still fit the architecture exactly
  (the attacker wrote a different valid model: no reader can tell, and none should pretend to);
- `wrong`: loaded something it should not have (a damaged file accepted with other weights, or a
  forged one that does not fit its architecture or breaks a later step);
- `crash`: any exception other than UserError, or a multi-line message.
"""
from __future__ import annotations

import copy
import io
import json
import random
import struct
import time

import torch

from dnncompress.errors import UserError

# ---------------------------------------------------------------- raw bytes


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(b[: rng.randrange(len(b))])  # truncation
    if kind == 1:
        for _ in range(rng.randint(1, 3)):  # bit flips anywhere
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == 2:
        b[:8] = struct.pack("<Q", rng.choice([0, 1, len(b), 2**63, rng.randrange(2**40)]))  # header length lies
        return bytes(b)
    if kind == 3:
        i = rng.randrange(len(b))
        n = rng.randint(1, 64)
        b[i : i + n] = bytes(rng.randrange(256) for _ in range(n))  # random overwrite
        return bytes(b)
    if kind == 4:
        i = rng.randrange(len(b))
        return bytes(b[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) + b[i:])  # insertion
    return bytes(b) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 100)))  # trailing garbage


# ---------------------------------------------------------------- structured values

NASTY = [0, -1, 1, 2**31 - 1, 2**31, 2**63, -(2**40), 10**12, 0.5, -0.0, 1e308, float("inf"), float("nan"), "", "x",
         "subprocess:run", "os:system", "torchvision:resnet18", "lenet300", None, True, [], {}, [1, 2], {"a": 1}, [[[[[]]]]],
         "../../etc/passwd", "\u0000", "bitmap", "gaps", "q", "m", "fourval", "nope"]


def _paths(obj, max_depth: int = 12):
    """Every (path, value) inside nested dicts and lists, down to `max_depth`."""
    stack = [((), obj)]
    while stack:
        prefix, node = stack.pop()
        yield prefix, node
        if len(prefix) >= max_depth:
            continue
        if isinstance(node, dict):
            stack.extend((prefix + (k,), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((prefix + (i,), v) for i, v in enumerate(node))


def _set(obj, path, value):
    node = obj
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


def _nudge(value, rng):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return rng.choice([value + 1, value - 1, -value, value * 2, value + 2**32, 0])
    if isinstance(value, float):
        return rng.choice([value * 2, -value, float("nan"), value + 1e-3])
    if isinstance(value, str):
        return rng.choice([value + "x", value[:-1], value.upper(), ""])
    return rng.choice(NASTY)


def mutate_structure(obj, rng: random.Random):
    """A deep copy of a JSON-like value with one to three random edits: nudged numbers, replaced
    values, deleted or added keys, deep nesting."""
    out = copy.deepcopy(obj)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p, _ in _paths(out) if p]
        if not paths:
            return rng.choice(NASTY)
        path = rng.choice(paths)
        node = out
        for k in path[:-1]:
            node = node[k]
        value = node[path[-1]]
        action = rng.randrange(5)
        if action == 0:
            _set(out, path, _nudge(value, rng))
        elif action == 1:
            _set(out, path, rng.choice(NASTY))
        elif action == 2 and isinstance(node, dict):
            del node[path[-1]]
        elif action == 3 and isinstance(node, dict):
            node[rng.choice(["extra", "n", "s", "k", "x", "arch", "layers"])] = rng.choice(NASTY)
        else:
            deep = value
            for _ in range(rng.choice([3, 50, 900])):
                deep = [deep]
            _set(out, path, deep)
    return out


# ---------------------------------------------------------------- .dnc


def _dnc_parts(data: bytes):
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + hlen])
    return header, data[8 + hlen :]


def _signed(header: dict, body: bytes) -> bytes:
    """Re-sign a header (v2 digest over the canonical header and the data) as an attacker can."""
    from dnncompress.pack.container import _header_digest

    meta = header["__metadata__"]  # `header` is the caller's fresh parse: edited in place
    meta.pop("sha256", None)
    try:
        meta["sha256"] = _header_digest(header, [body])
    except RecursionError:  # too deep to serialize canonically: the reader refuses it unsigned anyway
        meta["sha256"] = "0" * 43
        header = {"__metadata__": meta, "deep": "[" * 100}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _spec_of(header: dict, body: bytes) -> tuple[bytes, object]:
    """(the blob bytes, the compact spec) of a version-4 file."""
    from dnncompress.pack.container import inflate_spec

    n = int(header["__metadata__"]["spec"])
    return body[: len(body) - n], json.loads(inflate_spec(body[len(body) - n :]))


def _with_spec(header: dict, blobs: bytes, spec_text: str) -> bytes:
    """The body with a new compact spec (deflated as the writer does), the header's lengths updated."""
    from dnncompress.pack.container import BLOB, deflate_text

    raw = deflate_text(spec_text)
    body = blobs + raw
    header["__metadata__"]["spec"] = str(len(raw))
    if isinstance(header.get(BLOB), dict):
        header[BLOB]["shape"], header[BLOB]["data_offsets"] = [len(body)], [0, len(body)]
    return body


def forge_dnc(data: bytes, rng: random.Random) -> bytes:
    """A structural edit of the spec or of the tensor descriptors, with the digest recomputed."""
    header, body = _dnc_parts(data)
    target = rng.random()
    if target < 0.6:  # the spec: layers, leftovers, arch, arch_kwargs, ... (compact: references are counts)
        blobs, spec = _spec_of(header, body)
        spec = mutate_structure(spec, rng)
        try:
            text = json.dumps(spec) if rng.random() < 0.97 else "[" * 2000
        except RecursionError:
            text = "[" * 5000 + "]" * 5000
        body = _with_spec(header, blobs, text)
    elif target < 0.7:  # the spec's length: it points into the blobs or past the file
        header["__metadata__"]["spec"] = rng.choice(["0", "1", "-3", str(len(body)), str(len(body) + 1), "x", "1e3"])
    elif target < 0.85:  # descriptors: dtype, shape, offsets
        names = [n for n in header if n != "__metadata__"]
        name = rng.choice(names)
        field = rng.choice(["dtype", "shape", "data_offsets"])
        if field == "dtype":
            header[name]["dtype"] = rng.choice(["U32", "F32", "U8", "F16", "I64", "BF16", "X"])
        else:
            edited = mutate_structure({"v": header[name][field]}, rng)
            header[name][field] = edited.get("v", []) if isinstance(edited, dict) else edited
    else:  # the data: values change, the digest says they are genuine
        b = bytearray(body)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] = rng.randrange(256)
        body = bytes(b)
    return _signed(header, body)


# ---------------------------------------------------------------- checkpoints


def mutate_checkpoint(ckpt: dict, raw: bytes, rng: random.Random) -> tuple[bytes, bool]:
    """(bytes, damaged): half byte-level damage of the saved file (which must never load as other weights),
    half a hostile but well-formed dict saved again (which may load only if it fits its architecture)."""
    if rng.random() < 0.5:
        return mutate_bytes(raw, rng), True
    out = {k: (dict(v) if isinstance(v, dict) else copy.deepcopy(v)) for k, v in ckpt.items()}
    kind = rng.randrange(8)
    if kind == 0:
        out["arch"] = rng.choice(["subprocess:run", "os:system", "builtins:exec", "lenet6", "torchvision:nope", 5, None, ""])
        out["arch_kwargs"] = rng.choice([{"args": ["touch", "/tmp/pwned"]}, {}, {"num_classes": 10**9}])
    elif kind == 1:
        out["arch_kwargs"] = mutate_structure(out.get("arch_kwargs") or {"x": 1}, rng)
    elif kind == 2:  # a tensor changes shape, dtype or disappears; or a new one appears
        key = rng.choice(list(out["state_dict"]))
        t = out["state_dict"][key]
        choice = rng.randrange(5)
        if choice == 0:
            out["state_dict"][key] = t.reshape(-1)
        elif choice == 1:
            out["state_dict"][key] = t.long()
        elif choice == 2:
            del out["state_dict"][key]
        elif choice == 3:
            out["state_dict"]["extra.weight"] = torch.zeros(3)
        else:
            out["state_dict"][key] = torch.zeros(0)
    elif kind == 3 and out.get("masks"):
        name = rng.choice(list(out["masks"]))
        out["masks"][name] = rng.choice([out["masks"][name].float(), out["masks"][name].reshape(-1), torch.ones(2, dtype=torch.bool)])
        if rng.random() < 0.3:
            out["masks"]["no.such.layer"] = torch.ones(1, dtype=torch.bool)
    elif kind == 4 and out.get("quant"):
        name = rng.choice(list(out["quant"]))
        q = dict(out["quant"][name])
        field = rng.choice(["scheme", "bits", "levels", "thresholds", "options", "per_channel"])
        q[field] = rng.choice([torch.zeros(7, 3), torch.full((1, 4), float("nan")), "fivevalue", 99, -1, {"mode": "x"}, "yes", None])
        out["quant"][name] = q
    elif kind == 5:
        for key in rng.sample(["dataset", "metrics", "history", "masks", "quant"], 2):
            out[key] = rng.choice(NASTY)
    elif kind == 6:
        out["version"] = rng.choice([0, 2, "1", None])
    else:
        out["dataset"] = mutate_structure(out.get("dataset") or {"name": "mnist"}, rng)
    buf = io.BytesIO()
    try:
        torch.save(out, buf)
    except RecursionError:  # nested too deep for pickle to write: damage the bytes instead
        return mutate_bytes(raw, rng), True
    return buf.getvalue(), False


# ---------------------------------------------------------------- configs

CONFIG_TOKENS = [".nan", ".inf", "-1", "1e12", "1000000000000", "''", "[]", "{}", "null", "true", "lenet6", "'os:system'",
                 "mnits", "&a [1]", "*a", "\t", "[[[[[[", "}", "adamw", "-0.5", "2.0", "99", "auto", "codebook", "a: b: c"]


def mutate_config(text: str, rng: random.Random) -> bytes:
    lines = text.splitlines()
    kind = rng.randrange(7)
    if kind == 0 and lines:  # a value replaced by a nasty token
        i = rng.randrange(len(lines))
        if ":" in lines[i]:
            key, _, _ = lines[i].rpartition(":")
            lines[i] = f"{key}: {rng.choice(CONFIG_TOKENS)}"
    elif kind == 1 and lines:  # a line duplicated (duplicate keys) or deleted
        i = rng.randrange(len(lines))
        if rng.random() < 0.5:
            lines.insert(i, lines[i])
        else:
            del lines[i]
    elif kind == 2:  # characters deleted or inserted anywhere
        s = "\n".join(lines)
        i = rng.randrange(max(len(s), 1))
        s = s[:i] + rng.choice(["", "{", ":", "- ", "  ", "#", "*", "&", "!!python/object:os.system"]) + s[i + rng.randint(0, 3):]
        lines = s.splitlines()
    elif kind == 3:  # an alias bomb prepended
        bomb = ["x0: &x0 [q, q, q, q, q, q, q, q]"] + [f"x{i}: &x{i} [{', '.join(['*x' + str(i - 1)] * 8)}]" for i in range(1, 8)]
        lines = bomb + lines
    elif kind == 4:  # deep nesting
        lines.append("deep: " + "[" * rng.choice([50, 500, 5000]) + "]" * rng.choice([0, 50, 500, 5000]))
    elif kind == 5:  # not UTF-8
        return ("\n".join(lines)).encode() + bytes([0xFF, 0xFE, rng.randrange(256)])
    else:  # a key renamed
        if lines:
            i = rng.randrange(len(lines))
            lines[i] = lines[i].replace(":", "x:", 1)
    return ("\n".join(lines) + "\n").encode()


# ---------------------------------------------------------------- the judge


def judge(load, equal_to_original=None, fits=None, hang_s: float = 5.0) -> tuple[str, float, str]:
    """(outcome, seconds, detail) of calling `load()` on one mutated input."""
    t0 = time.perf_counter()
    try:
        value = load()
    except UserError as e:
        msg = str(e)
        outcome = "error" if msg and "\n" not in msg else "crash"
        return _timed(outcome, t0, hang_s, msg[:160])
    except Exception as e:  # what the fuzz is looking for
        return _timed("crash", t0, hang_s, f"{type(e).__name__}: {str(e)[:140]}")
    if equal_to_original is not None and equal_to_original(value):
        return _timed("same", t0, hang_s, "")
    if fits is not None:
        problem = fits(value)
        if problem:
            return _timed("wrong", t0, hang_s, problem)
        return _timed("forged", t0, hang_s, "")
    return _timed("wrong", t0, hang_s, "loaded with other weights")


def _timed(outcome, t0, hang_s, detail):
    seconds = time.perf_counter() - t0
    return ("hang" if seconds > hang_s else outcome), seconds, detail


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def fits_model(model_factory, x: torch.Tensor):
    """A check that a loaded checkpoint builds, runs a finite forward pass and packs: None when it does."""

    def check(ckpt) -> str | None:
        from dnncompress.pack.container import build_packed
        from dnncompress.surgery import model_from_checkpoint

        try:
            model = model_from_checkpoint(ckpt).eval()
            with torch.no_grad():
                out = model(x)
            build_packed(ckpt)
        except UserError:
            return None  # a later step refusing it cleanly is fine
        except Exception as e:  # accepted, then broke: the loader should have refused it
            return f"accepted, then {type(e).__name__}: {str(e)[:100]}"
        if out.shape[0] != x.shape[0]:
            return f"accepted, then an output of shape {tuple(out.shape)}"
        return None

    return check


class Tally:
    """Outcome counts, the slowest case, and what went wrong, for one fuzzed input kind."""

    BAD = ("wrong", "crash", "hang")

    def __init__(self, label: str = ""):
        from collections import Counter

        self.label, self.counts, self.slowest, self.problems = label, Counter(), 0.0, []

    def add(self, case: int, result: tuple[str, float, str], what: str = "") -> str:
        outcome, seconds, detail = result
        self.counts[outcome] += 1
        self.slowest = max(self.slowest, seconds)
        if outcome in self.BAD:
            self.problems.append(f"{self.label} {what} case {case}: {outcome} {detail}".strip())
        return outcome
