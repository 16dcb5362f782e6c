"""Magnitude pruning masks, per layer or global, with exact counts (ties cannot over- or under-prune)."""
from __future__ import annotations

import fnmatch
import math

import torch
import torch.nn as nn

from ..errors import UserError


def check_sparsity(s: float, what: str = "sparsity") -> float:
    if not isinstance(s, (int, float)) or isinstance(s, bool) or not 0.0 <= float(s) < 1.0:
        raise UserError(f"{what} must be in [0, 1), got {s!r}")
    return float(s)


def keep_top(magnitude: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Mask keeping all but the n_prune smallest entries (stable order breaks ties)."""
    flat = magnitude.reshape(-1)
    mask = torch.ones_like(flat, dtype=torch.bool)
    if n_prune > 0:
        order = torch.argsort(flat, stable=True)
        mask[order[:n_prune]] = False
    return mask.reshape(magnitude.shape)


def layer_sparsities(names, sparsity: float, overrides: dict | None) -> dict[str, float]:
    """Per-layer targets: `sparsity`, replaced by the last matching fnmatch override."""
    out = {}
    for name in names:
        s = sparsity
        for pattern, value in (overrides or {}).items():
            if fnmatch.fnmatchcase(name, pattern):
                s = check_sparsity(value, f"sparsity override for '{pattern}'")
        out[name] = s
    return out


def effective_magnitude(module: nn.Module) -> torch.Tensor:
    """|weight · mask| of the shadow weight: pruned entries count as zero, so they never regrow."""
    from ..surgery import compression_of, shadow_weight

    w = shadow_weight(module).detach().abs()
    comp = compression_of(module)
    if comp is not None and comp.mask is not None:
        w = w * comp.mask
    return w


def check_block(b) -> int:
    if not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= 4096:
        raise UserError(f"block length must be an integer 1..4096, got {b!r}")
    return b


def layer_blocks(names, block) -> dict[str, int]:
    """Per-layer block length: one int for all, or {fnmatch pattern: length} (1 where none matches)."""
    out = {}
    for name in names:
        b = block if not isinstance(block, dict) else 1
        for pattern, value in (block.items() if isinstance(block, dict) else ()):
            if fnmatch.fnmatchcase(name, pattern):
                b = value
        out[name] = check_block(b)
    return out


def _block_scores(mag: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMS magnitude, real size) of each run of b contiguous weights within a row (the last run of a
    row may be short): the same runs product quantization cuts into sub-vectors."""
    rows = mag.shape[0]
    flat = mag.reshape(rows, -1)
    extra = -flat.shape[1] % b
    pad = torch.zeros(rows, extra, dtype=flat.dtype)
    sq = torch.cat([flat.double() ** 2, pad.double()], 1).reshape(rows, -1, b).sum(2)
    size = torch.cat([torch.ones_like(flat, dtype=torch.long), pad.long()], 1).reshape(rows, -1, b).sum(2)
    return (sq / size).sqrt().reshape(-1), size.reshape(-1)


def _expand(keep_runs: torch.Tensor, b: int, shape) -> torch.Tensor:
    rows = shape[0]
    n = math.prod(shape) // rows
    return keep_runs.reshape(rows, -1).repeat_interleave(b, 1)[:, :n].reshape(shape)


def _prune_runs(scores: torch.Tensor, sizes: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Keep-mask over runs: the lowest-scoring runs go until their weights reach n_prune (never more)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    order = torch.argsort(scores, stable=True)
    k = int(torch.searchsorted(torch.cumsum(sizes[order], 0), torch.tensor(n_prune), right=True))
    keep[order[:k]] = False
    return keep


def overridden(names, overrides: dict | None) -> set[str]:
    """The layers some override pattern names: they keep their own sparsity under a global scope."""
    return {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in (overrides or {}))}


def magnitude_masks(layers: dict[str, nn.Module], targets: dict[str, float], scope: str = "layer", block=1,
                    pinned=()) -> dict[str, torch.Tensor]:
    """New masks reaching each layer's target sparsity (layer scope) or the mean target over all (global);
    `pinned` layers (those an override names) reach their own target under either scope.
    With `block` > 1 whole runs of that many contiguous weights of a row are kept or pruned together."""
    if scope not in ("layer", "global"):
        raise UserError(f"scope must be 'layer' or 'global', got '{scope}'")
    pinned = set(pinned) & set(layers)
    if scope == "global" and pinned:
        own = magnitude_masks({n: layers[n] for n in pinned}, targets, "layer", block)
        rest = {n: m for n, m in layers.items() if n not in pinned}
        shared = magnitude_masks(rest, targets, "global", block) if rest else {}
        return {n: (own[n] if n in own else shared[n]) for n in layers}
    mags = {name: effective_magnitude(m) for name, m in layers.items()}
    blocks = layer_blocks(mags, block)
    if any(b > 1 for b in blocks.values()):
        return _block_masks(mags, targets, scope, blocks)
    if scope == "layer":
        return {name: keep_top(mag, int(round(targets[name] * mag.numel()))) for name, mag in mags.items()}
    total = sum(m.numel() for m in mags.values())
    n_prune = int(round(sum(targets[n] * mags[n].numel() for n in mags)))
    flat = torch.cat([m.reshape(-1) for m in mags.values()])
    global_mask = keep_top(flat, n_prune)
    out, start = {}, 0
    for name, mag in mags.items():
        out[name] = global_mask[start : start + mag.numel()].reshape(mag.shape)
        start += mag.numel()
    assert start == total
    return out


def _block_masks(mags, targets, scope, blocks) -> dict[str, torch.Tensor]:
    runs = {name: _block_scores(mag, blocks[name]) for name, mag in mags.items()}
    if scope == "layer":
        keep = {n: _prune_runs(*runs[n], int(round(targets[n] * mags[n].numel()))) for n in mags}
    else:
        n_prune = int(round(sum(targets[n] * mags[n].numel() for n in mags)))
        flat = _prune_runs(torch.cat([r[0] for r in runs.values()]), torch.cat([r[1] for r in runs.values()]), n_prune)
        keep, start = {}, 0
        for name, (scores, _) in runs.items():
            keep[name] = flat[start : start + scores.numel()]
            start += scores.numel()
    return {n: _expand(keep[n], blocks[n], mags[n].shape) for n in mags}


@torch.no_grad()
def apply_masks(layers: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
    """Attach masks and zero the pruned shadow weights (so optimizer state cannot revive them)."""
    from ..surgery import attach, shadow_weight

    for name, mask in masks.items():
        module = layers[name]
        w = shadow_weight(module)
        w.mul_(mask.to(w.device, w.dtype))
        attach(module, mask=mask.to(w.device))


def prune(model: nn.Module, sparsity: float = 0.9, scope: str = "global", include=("*",), exclude=(), overrides: dict | None = None,
          block=1) -> list[dict]:
    """Magnitude-prune every Conv/Linear (any 2-D+ weight) of any nn.Module; returns per-layer counts.
    `block` (an int, or {pattern: int}) prunes runs of that many contiguous weights of a row together.
    Global by default: one threshold over all layers spares the small, sensitive ones."""
    from ..surgery import check_layer_patterns, compressible_layers, sweep_before_forward

    check_sparsity(sparsity)
    check_layer_patterns(model, include, exclude, overrides, block)
    layers = compressible_layers(model, include, exclude)
    if not layers:
        raise UserError("no layer matched: prune needs modules with a 2-D+ weight (check include/exclude)")
    targets = layer_sparsities(layers, sparsity, overrides)
    masks = magnitude_masks(layers, targets, scope, block, pinned=overridden(layers, overrides))
    apply_masks(layers, masks)
    sweep_before_forward(model)
    return mask_summary(masks)


def overall_sparsity(masks: dict[str, torch.Tensor]) -> float:
    """Fraction of masked-out weights over all masked layers."""
    total = sum(m.numel() for m in masks.values())
    return 1 - sum(int(m.sum()) for m in masks.values()) / max(total, 1)


def mask_summary(masks: dict[str, torch.Tensor]) -> list[dict]:
    return [{"layer": n, "params": m.numel(), "kept": int(m.sum()), "sparsity": 1 - float(m.float().mean())} for n, m in masks.items()]
