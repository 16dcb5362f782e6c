"""Structured pruning: remove whole Conv filters or Linear neurons, and everything that depends on them.

The dependency graph (the next layer's inputs, BatchNorm, residual adds, flatten, concatenation) comes
from torch-pruning (`torch_pruning.DependencyGraph`, via its `BasePruner`): it traces the model once and
groups every tensor slice that must go with a unit, for any nn.Module, which is the part worth not
writing again. What it changed is recorded as a *structure* ({module: {size attribute: value}}), so a
checkpoint or .dnc rebuilds the smaller model from the architecture (`models.structure.apply_structure`)
with no pickle.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable

import torch
import torch.nn as nn

from ..errors import UserError
from ..models.structure import remember_structure, sizes_of, structure_of


def _output_layers(model: nn.Module, example_inputs, types) -> list[nn.Module]:
    """The last Conv/Linear a forward pass runs: its units are the model's outputs and stay."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in model.modules() if isinstance(m, types)]
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return order[-1:]


def flops_of(model: nn.Module, example_inputs) -> int:
    import torch_pruning as tp

    ops, _ = tp.utils.count_ops_and_params(model, example_inputs)
    return int(ops)


def structured_prune(model: nn.Module, example_inputs: torch.Tensor, unit: str = "channel", amount: float | None = None,
                     flops: float | None = None, importance: str = "l1", scope: str = "layer", include=("*",), exclude=(),
                     loss_fn: Callable[[nn.Module], torch.Tensor] | None = None, steps: int = 45) -> dict:
    """Remove `amount` of the units (filters for `channel`, output neurons for `neuron`) of every matching
    layer, or as many as it takes to remove the fraction `flops` of the model's FLOPs (in small steps).
    Importance: `l1`/`l2` norms of each unit's whole dependency group, or `taylor` (|gradient × weight|,
    from `loss_fn(model)`, which must return a loss on a few batches). The output layer is never pruned.
    Returns {"structure", "flops_before", "flops_after", "params_before", "params_after", "removed"}."""
    import torch_pruning as tp

    if unit not in ("channel", "neuron"):
        raise UserError(f"--structured must be 'channel' or 'neuron', got '{unit}'")
    if (amount is None) == (flops is None):
        raise UserError("structured pruning needs exactly one target: a fraction of units, or a FLOPs fraction to remove")
    target = amount if amount is not None else flops
    if not isinstance(target, (int, float)) or not 0.0 < float(target) < 1.0:
        raise UserError(f"the structured pruning target must be a fraction in (0, 1), got {target!r}")
    if importance not in ("l1", "l2", "taylor"):
        raise UserError(f"importance must be l1, l2 or taylor, got '{importance}'")
    if importance == "taylor" and loss_fn is None:
        raise UserError("taylor importance needs data: it scores units by gradient × weight on a few training batches")
    if scope not in ("layer", "global"):
        raise UserError(f"scope must be 'layer' or 'global', got '{scope}'")
    from ..surgery import compression_of

    if any(compression_of(m) is not None for m in model.modules()):
        raise UserError("structured pruning goes first: run it on a model without masks or quantizers, then prune or quantize the result")
    root = nn.modules.conv._ConvNd if unit == "channel" else nn.Linear
    exclude = [*exclude, *getattr(model, "structured_keep", ())]  # what the architecture says must stay whole
    outputs = _output_layers(model, example_inputs, (nn.modules.conv._ConvNd, nn.Linear))
    ignored = [m for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
               and (m in outputs or not any(fnmatch.fnmatchcase(n, p) for p in include) or any(fnmatch.fnmatchcase(n, p) for p in exclude))]
    if not any(isinstance(m, root) and m not in ignored for m in model.modules()):
        raise UserError(f"no {'Conv' if unit == 'channel' else 'Linear'} layer to prune ({'the only one is the output layer' if outputs else 'check include/exclude'})")
    scorer = {"l1": lambda: tp.importance.GroupMagnitudeImportance(p=1), "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
              "taylor": tp.importance.GroupTaylorImportance}[importance]()
    before = sizes_of(model)
    flops_before, params_before = flops_of(model, example_inputs), sum(p.numel() for p in model.parameters())
    n_steps = 1 if amount is not None else steps
    pruner = tp.pruner.BasePruner(model, example_inputs, importance=scorer, global_pruning=scope == "global",
                                  pruning_ratio=float(amount) if amount is not None else 0.9, iterative_steps=n_steps,
                                  ignored_layers=ignored, root_module_types=[root])
    was_training = model.training
    flops_now = flops_before
    for _ in range(n_steps):
        if importance == "taylor":
            model.zero_grad()
            loss_fn(model).backward()
        pruner.step()
        flops_now = flops_of(model, example_inputs)
        if flops is not None and flops_now <= (1 - flops) * flops_before:
            break
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    try:
        with torch.no_grad():
            model.eval()(example_inputs)
    except RuntimeError as e:  # an op the dependency graph could not follow (e.g. padding channels by position)
        raise UserError(f"structured pruning left the model unable to run ({str(e).splitlines()[0][:120]}); "
                        f"--exclude the layers around that operation") from None
    finally:
        model.train(was_training)
    remember_structure(model, before)
    changed = structure_of(model, before)  # this call's changes (the structure is against the architecture)
    return {"structure": model._dnncompress_structure, "flops_before": flops_before, "flops_after": flops_now,
            "params_before": params_before, "params_after": sum(p.numel() for p in model.parameters()),
            "removed": {n: {a: before[n][a] for a in s} for n, s in changed.items()}}
