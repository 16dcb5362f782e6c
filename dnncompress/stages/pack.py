"""The `pack` stage: write the .dnc (the product). Its size on disk is what `report` shows."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..pack import write_packed
from .base import Context, StageOutput, register_stage


@dataclass
class PackParams:
    output: str | None = None
    entropy: Literal["none", "huffman", "ans"] = "none"  # ans: per stream the smallest of plain, Huffman and rANS (constriction)
    fp16: bool = False  # store fp leftovers (biases, BN) as fp16: smaller, not lossless


def packed_already(ckpt: dict, p: PackParams, path) -> dict | None:
    """The pack result when `path` holds exactly the bytes that packing `ckpt` with `p` gives (packing is
    deterministic), else None."""
    from ..pack.container import build_packed, packed_info, serialize

    arrays, metadata, spec = build_packed(ckpt, p.entropy, p.fp16)
    head, pieces = serialize(arrays, metadata)
    try:
        with open(path, "rb") as f:
            if f.read(len(head)) != head or not all(f.read(piece.nbytes) == piece.tobytes() for piece in pieces) or f.read(1):
                return None
    except OSError:
        return None
    return packed_info(spec, len(head) + sum(piece.nbytes for piece in pieces))


@register_stage("pack", PackParams, suffix="packed", ext=".dnc")
def pack_stage(ckpt, p: PackParams, ctx: Context) -> StageOutput:
    """Pack a checkpoint into a .dnc file (safetensors container)."""
    return StageOutput(ckpt, {}, writer=lambda path: write_packed(ckpt, path, p.entropy, p.fp16))
