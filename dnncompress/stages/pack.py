"""The `pack` stage: write the .dnc (the product). Its size on disk is what `report` shows."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..pack import write_packed
from .base import Context, StageOutput, register_stage


@dataclass
class PackParams:
    output: str | None = None
    entropy: Literal["none", "huffman"] = "none"
    fp16: bool = False  # store fp leftovers (biases, BN) as fp16: smaller, not lossless


@register_stage("pack", PackParams, suffix="packed", ext=".dnc")
def pack_stage(ckpt, p: PackParams, ctx: Context) -> StageOutput:
    """Pack a checkpoint into a .dnc file (safetensors container)."""
    return StageOutput(ckpt, {}, writer=lambda path: write_packed(ckpt, path, p.entropy, p.fp16))
