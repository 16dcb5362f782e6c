"""The `pack` stage: write the .dnc (the product). Its size on disk is what `report` shows."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from ..pack import write_packed
from .base import Context, StageOutput, register_stage


@dataclass
class PackParams:
    output: str | None = None
    entropy: Literal["none", "huffman"] = "none"
    fp16: bool = False  # store fp leftovers (biases, BN) as fp16: smaller, not lossless


def packed_result(path) -> dict:
    """What the pack stage reports (and records in the history) for the file at `path`."""
    from ..pack import read_packed

    spec, _ = read_packed(path)
    return {"bytes": os.path.getsize(path), "layers": len(spec["layers"]), "entropy": spec.get("entropy")}


def packs_to(ckpt: dict, p: PackParams, path) -> bool:
    """True when `path` holds exactly the bytes that packing `ckpt` with `p` gives (packing is deterministic)."""
    from ..pack.container import build_packed, serialize

    head, pieces = serialize(*build_packed(ckpt, p.entropy, p.fp16)[:2])
    try:
        with open(path, "rb") as f:
            if f.read(len(head)) != head:
                return False
            return all(f.read(piece.nbytes) == piece.tobytes() for piece in pieces) and not f.read(1)
    except OSError:
        return False


@register_stage("pack", PackParams, suffix="packed", ext=".dnc")
def pack_stage(ckpt, p: PackParams, ctx: Context) -> StageOutput:
    """Pack a checkpoint into a .dnc file (safetensors container)."""
    def write(path):
        write_packed(ckpt, path, p.entropy, p.fp16)
        return packed_result(path)

    return StageOutput(ckpt, {}, writer=write)
