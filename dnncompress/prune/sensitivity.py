"""Automatic per-layer sparsity: scan each layer's accuracy drop alone, allocate greedily under a
budget, then measure the combined drop and back off until it is within the budget.

Assumes drops roughly add up; the final measured check is what guarantees the budget.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..errors import UserError
from .magnitude import effective_magnitude, magnitude_masks

GRID = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)


@torch.no_grad()
def _with_sparsities(layers: dict[str, nn.Module], targets: dict[str, float], fn: Callable[[], float], block=1) -> float:
    """Evaluate `fn` with layers temporarily pruned to `targets` (shadow weights restored after), by the same
    per-layer masks `magnitude_masks(..., "layer", block)` writes: what is measured is what gets written."""
    from ..surgery import shadow_weight, shadow_weights_replaced

    chosen = {n: layers[n] for n in targets}
    masks = magnitude_masks(chosen, targets, "layer", block)
    pruned = {}
    for name, mask in masks.items():
        w = shadow_weight(layers[name])
        pruned[layers[name]] = w * mask.to(w.dtype)
    with shadow_weights_replaced(pruned):
        return fn()


def scan(layers: dict[str, nn.Module], accuracy: Callable[[], float], grid=GRID, progress=None, block=1) -> tuple[float, dict[str, list]]:
    """(baseline accuracy, {layer: [(sparsity, drop in points), ...]}) pruning one layer at a time."""
    base = accuracy()
    curves, done, total = {}, 0, len(layers) * len(grid)
    for name in layers:
        curve = []
        for s in grid:
            acc = base if s == 0 else _with_sparsities(layers, {name: s}, accuracy, block)
            curve.append((s, base - acc))
            done += 1
            if progress:
                progress({"kind": "scan", "done": done, "total": total, "info": f"{name} @ {s:.2f}"})
        curves[name] = curve
    return base, curves


def allocate(curves: dict[str, list], sizes: dict[str, int], budget: float) -> list[tuple[str, float]]:
    """Greedy steps (layer, sparsity) in the order taken: most weights pruned per point of estimated drop."""
    level = {n: 0 for n in curves}
    mono = {n: [max(d for _, d in c[: i + 1]) for i in range(len(c))] for n, c in curves.items()}  # drops only grow
    spent, steps = 0.0, []
    while True:
        best = None
        for n, c in curves.items():
            i = level[n]
            if i + 1 >= len(c):
                continue
            cost = max(mono[n][i + 1] - mono[n][i], 0.0)
            if spent + cost > budget:
                continue
            gain = sizes[n] * (c[i + 1][0] - c[i][0])
            score = gain / (cost + 1e-3)
            if best is None or score > best[0]:
                best = (score, n, cost)
        if best is None:
            return steps
        _, n, cost = best
        level[n] += 1
        spent += cost
        steps.append((n, curves[n][level[n]][0]))


def auto_sparsity(layers: dict[str, nn.Module], accuracy: Callable[[], float], max_drop: float, grid=GRID, progress=None,
                  block=1) -> dict:
    """Per-layer sparsities whose measured combined drop (before fine-tuning) stays within max_drop points.
    The allocation is per layer by construction: write it with `magnitude_masks(layers, targets, "layer", block)`."""
    if max_drop < 0:
        raise UserError(f"max-drop must be ≥ 0 points, got {max_drop}")
    base, curves = scan(layers, accuracy, grid, progress, block)
    sizes = {n: effective_magnitude(m).numel() for n, m in layers.items()}
    steps = allocate(curves, sizes, max_drop)
    measured = None
    while True:
        targets = {n: 0.0 for n in layers}
        for n, s in steps:
            targets[n] = s
        measured = base - _with_sparsities(layers, targets, accuracy, block)
        if measured <= max_drop or not steps:
            break
        steps.pop()  # back off the last greedy step and measure again
    total = sum(sizes.values())
    return {"targets": targets, "baseline": base, "measured_drop": measured, "curves": curves,
            "overall_sparsity": sum(targets[n] * sizes[n] for n in sizes) / max(total, 1)}


def plot_curves(curves: dict[str, list], path, chosen: dict[str, float] | None = None) -> None:
    """The sensitivity curves as a PNG/SVG/PDF: lines for a few layers, a heat map for many (charts.py)."""
    import matplotlib.pyplot as plt

    from ..charts import sensitivity_figure
    from ..fileio import save_figure

    fig = sensitivity_figure(curves, chosen)
    save_figure(fig, path)
    plt.close(fig)
