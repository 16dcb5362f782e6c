"""What a file is, from its first bytes, so that a file handed to the wrong command gets an error that
names its real kind and the command that takes it (not a decoder's complaint about a header length)."""
from __future__ import annotations

import struct
from pathlib import Path

# torch's pre-1.6 pickle format starts with this pickled magic number
LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"

KINDS = {
    "checkpoint": ("a PyTorch checkpoint", "eval, prune, quantize, finetune, pack, export or report"),
    "packed": ("a packed .dnc file", "eval, report, unpack or export"),
    "config": ("a YAML config", "run or validate"),
    "onnx": ("an ONNX model", "onnxruntime (dnncompress writes it with export)"),
}


def sniff(path: str | Path) -> str:
    """'checkpoint', 'packed', 'config', 'onnx' or 'unknown' (also for an unreadable or empty file)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(4096)
    except OSError:
        return "unknown"
    if not head:
        return "unknown"
    if head.startswith(b"PK\x03\x04") or head.startswith(LEGACY_MAGIC):
        return "checkpoint"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= (1 << 27) and head[8:9] == b"{":
            return "packed"  # a safetensors header: .dnc or another safetensors file; the reader tells them apart
    if p.suffix.lower() == ".onnx" or head[:1] == b"\x08" and b"onnx" in head[:64].lower():
        return "onnx"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut at the 4 kB boundary
            return "unknown"
        text = head[: e.start].decode("utf-8")
    if "\x00" not in text and (":" in text or text.lstrip().startswith(("#", "-"))):
        return "config"
    return "unknown"


def wrong_kind(path: str | Path, want: str) -> str | None:
    """A one-line message when `path` is clearly another kind of file than `want`, else None."""
    got = sniff(path)
    if got in ("unknown", want) or want not in KINDS:
        return None
    what, commands = KINDS[got]
    return f"{path} is {what}, not {KINDS[want][0]}; pass it to dnncompress {commands}"
