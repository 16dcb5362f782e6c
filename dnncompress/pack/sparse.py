"""Where the kept weights of a pruned layer are: a bitmap, or relative index gaps with filler
entries as in Deep Compression — per layer, whichever is smaller.

Gaps: for each kept position p (ascending), gap = p − previous − 1 (previous starts at −1),
written in g bits. A gap that does not fit is split with filler entries of value 2^g − 1,
each meaning "skip 2^g − 1 positions, no weight here" (Deep Compression stores a zero
weight instead; ours carries no code, so fillers cost only index bits).
"""
from __future__ import annotations

import numpy as np


def gap_entries(positions: np.ndarray, g: int) -> np.ndarray:
    """Gap stream (with fillers) for ascending kept positions, each entry < 2^g."""
    gaps = np.diff(positions.astype(np.int64), prepend=-1) - 1
    top = (1 << g) - 1
    fillers = gaps // top  # number of filler entries before each real entry
    rest = gaps - fillers * top
    total = int(fillers.sum()) + gaps.size
    out = np.full(total, top, dtype=np.uint8 if g <= 8 else np.uint16)
    ends = np.cumsum(fillers + 1) - 1  # where each real entry lands
    out[ends] = rest
    return out


def positions_from_gaps(entries: np.ndarray, g: int, numel: int) -> np.ndarray:
    top = (1 << g) - 1
    e = entries.astype(np.int16)  # entries < 2^8: small temporaries; cumsum below accumulates in int64 (numpy's rule)
    is_real = e != top
    steps = np.where(is_real, e + 1, top)
    pos = np.cumsum(steps, dtype=np.int64) - 1
    out = pos[is_real]
    if out.size and (out[-1] >= numel or out[0] < 0):
        raise ValueError("index gaps point outside the tensor")
    return out


def best_layout(mask: np.ndarray) -> tuple[str, int, np.ndarray, int]:
    """(kind, g, entries_or_bitmap_codes, size_bits) of the smallest layout for a flat bool mask."""
    numel = mask.size
    positions = np.flatnonzero(mask)
    best = ("bitmap", 1, None, numel)
    for g in range(1, 9):
        top = (1 << g) - 1
        gaps = np.diff(positions, prepend=-1) - 1
        count = positions.size + int((gaps // top).sum())
        if count * g < best[3]:
            best = ("gaps", g, None, count * g)
    kind, g, _, size = best
    entries = mask.astype(np.uint8) if kind == "bitmap" else gap_entries(positions, g)
    return kind, g, entries, size


def decode_positions(meta: dict, entries: np.ndarray, numel: int) -> np.ndarray:
    if meta["layout"] == "bitmap":
        if entries.size != numel:
            raise ValueError("bitmap length does not match the tensor")
        return np.flatnonzero(entries)
    return positions_from_gaps(entries, meta["index_bits"], numel)
