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
    return with_ratio(packed_info(spec, len(head) + sum(piece.nbytes for piece in pieces)), ckpt)


def with_ratio(info: dict, ckpt: dict) -> dict:
    """The pack result with the fp32 safetensors size it is compared to and the ratio (as `report` counts:
    against the architecture before structured pruning shrank it)."""
    from ..report import fp32_file_bytes, unpruned_fp32_bytes

    if ckpt.get("structure") and ckpt.get("arch"):
        fp32 = unpruned_fp32_bytes(ckpt["arch"], ckpt.get("arch_kwargs"), "the checkpoint")
    else:
        fp32 = fp32_file_bytes(ckpt["state_dict"])
    return {**info, "fp32_bytes": fp32, "ratio": round(fp32 / info["bytes"], 2) if info["bytes"] else None}


@register_stage("pack", PackParams, suffix="packed", ext=".dnc")
def pack_stage(ckpt, p: PackParams, ctx: Context) -> StageOutput:
    """Pack a checkpoint into a .dnc file (safetensors container)."""
    return StageOutput(ckpt, {}, writer=lambda path: with_ratio(write_packed(ckpt, path, p.entropy, p.fp16), ckpt))
