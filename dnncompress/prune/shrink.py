"""Shrink a model to a byte target with whole filters and neurons (issue 12).

At a few kilobytes the sparse index of unstructured pruning is most of a file (55 % of LeNet-5 at 273×);
removing whole units needs no index, and the dense codes of a zero-heavy scheme (ternary) entropy-code
below 2 bits a weight. Which cut to make is a search: each candidate (a fraction of the filters, then a
fraction of the neurons) is cut from a copy, fine-tuned briefly, quantized with the scheme the file will
use and packed in memory (its real size), and measured on the validation split. The most accurate
candidate that fits the byte budget wins; the caller trains it further.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn

from .structured import _output_layers, structured_prune

UNIT_TYPES = {"channel": nn.modules.conv._ConvNd, "neuron": nn.Linear}


def prunable_units(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, bool]:
    """Which unit kinds the model has outside its output layer ({"channel": has a Conv, "neuron": has a hidden Linear})."""
    outputs = _output_layers(model, example_inputs, tuple(UNIT_TYPES.values()))
    return {unit: any(isinstance(m, kind) and m not in outputs for m in model.modules()) for unit, kind in UNIT_TYPES.items()}


def cut(model: nn.Module, example_inputs: torch.Tensor, channels: float, neurons: float, importance: str = "l1") -> nn.Module:
    """A copy of `model` with the fraction `channels` of every Conv's filters and `neurons` of every hidden
    Linear's outputs removed (0 leaves that kind alone)."""
    trial = copy.deepcopy(model)
    for unit, amount in (("channel", channels), ("neuron", neurons)):
        if amount > 0:
            structured_prune(trial, example_inputs, unit=unit, amount=amount, importance=importance)
    return trial


def search(model: nn.Module, example_inputs: torch.Tensor, grid: list[tuple[float, float]], budget_bytes: float,
           recover: Callable[[nn.Module], None], accuracy: Callable[[nn.Module], float],
           packed_bytes: Callable[[nn.Module], int], importance: str = "l1",
           progress: Callable[[dict], None] | None = None) -> tuple[nn.Module, list[dict], bool]:
    """(chosen model, every trial, whether it fits): the best validation accuracy among the candidates whose
    packed size is within `budget_bytes` (ties: the smaller file); when none fits, the smallest file.
    A candidate larger than one already over budget with a smaller cut is still measured: sizes are exact."""
    trials, best, best_key, best_at = [], None, None, 0
    for i, (channels, neurons) in enumerate(grid):
        trial = cut(model, example_inputs, channels, neurons, importance)
        recover(trial)
        size = int(packed_bytes(trial))
        acc = float(accuracy(trial))
        fits = size <= budget_bytes
        trials.append({"channels_removed": channels, "neurons_removed": neurons, "params": sum(p.numel() for p in trial.parameters()),
                       "packed_bytes": size, "val_accuracy": acc, "fits": fits,
                       "sizes": dict(getattr(trial, "_dnncompress_structure", {}))})
        key = (fits, acc if fits else -size, -size)
        if best_key is None or key > best_key:
            best, best_key, best_at = trial, key, i
        if progress:
            progress({"kind": "shrink", "done": i + 1, "total": len(grid), "info": f"filters −{channels:.0%} neurons −{neurons:.0%}: "
                      f"{size:,} B, val {acc:.2f} %"})
    for i, t in enumerate(trials):
        t["chosen"] = i == best_at
    return best, trials, bool(best_key[0])
