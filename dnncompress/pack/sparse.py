"""Where the kept weights of a pruned layer are: a bitmap, or relative index gaps with filler
entries as in Deep Compression — per layer, whichever is smaller.

Gaps: for each kept position p (ascending), gap = p − previous − 1 (previous starts at −1),
written in g bits. A gap that does not fit is split with filler entries of value 2^g − 1,
each meaning "skip 2^g − 1 positions, no weight here" (Deep Compression stores a zero
weight instead; ours carries no code, so fillers cost only index bits).

Blocks: when the mask is all-or-nothing over aligned runs of b positions (block pruning, e.g. to
match product-quantization sub-vectors), the layout above is written over the b-times shorter
block mask instead, whenever that is smaller.
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


BLOCKS = (64, 32, 27, 25, 16, 9, 8, 5, 4, 3, 2)


def _element_layout(mask: np.ndarray) -> tuple[str, int, int]:
    """(kind, g, size_bits) of the smallest element-level layout."""
    positions = np.flatnonzero(mask)
    best = ("bitmap", 1, mask.size)
    gaps = np.diff(positions, prepend=-1) - 1
    for g in range(1, 9):
        count = positions.size + int((gaps // ((1 << g) - 1)).sum())
        if count * g < best[2]:
            best = ("gaps", g, count * g)
    return best


def best_layout(mask: np.ndarray) -> tuple[str, int, np.ndarray, int, int]:
    """(kind, g, entries, size_bits, block) of the smallest layout for a flat bool mask."""
    kind, g, size = _element_layout(mask)
    block, target = 1, mask
    for b in BLOCKS:
        if mask.size % b or mask.size < 2 * b:
            continue
        runs = mask.reshape(-1, b)
        kept = runs.any(1)
        if not np.array_equal(runs.all(1), kept):
            continue
        bk, bg, bsize = _element_layout(kept)
        if bsize < size:
            kind, g, size, block, target = bk, bg, bsize, b, kept
    entries = target.astype(np.uint8) if kind == "bitmap" else gap_entries(np.flatnonzero(target), g)
    return kind, g, entries, size, block


def decode_positions(meta: dict, entries: np.ndarray, numel: int) -> np.ndarray:
    block = int(meta.get("block", 1))
    if block < 1 or numel % block:
        raise ValueError("sparse block length does not divide the tensor")
    n = numel // block
    if meta["layout"] == "bitmap":
        if entries.size != n:
            raise ValueError("bitmap length does not match the tensor")
        positions = np.flatnonzero(entries)
    else:
        positions = positions_from_gaps(entries, meta["index_bits"], n)
    if block == 1:
        return positions
    return (positions[:, None] * block + np.arange(block)).reshape(-1)
