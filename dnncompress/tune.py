"""Output distillation after post-training quantization: every code stays, what costs no bytes is tuned.

GPTQ (calibrate.py) makes each layer's own output error small, but at 2 bits those errors add up
through a deep network and shift what the norms downstream see. With the codes fixed, a few
parameters are trained so that the quantized model's outputs match the unquantized model's on the
calibration inputs (no labels: the model before quantization is the teacher):
- one factor per output row of each quantized Linear/Conv whose level table is per row, group-wise
  or whole-layer (one factor then), folded into the table afterwards (`scale_rows`): no bytes;
- the biases of the quantized layers and the affine weights of the model's normalization layers
  (any module whose class name has "Norm" in it): the file keeps them as floats anyway.
Loss: the squared difference of every floating output tensor over its variance on the calibration
set. Adam with a cosine-decayed step over mini-batches of 32 in a seeded order; one mini-batch in 8
is held out, and the parameters of the epoch with the lowest held-out loss are kept (those from
before tuning if no epoch beats them). The quantized weights are computed once (parametrize.cached),
so a step costs a forward and a backward through frozen weights.

Why not a closed-form factor per layer: the least-squares factor of each row (exact for the layer's
own output error) took all-mpnet-base-v2's held-out embedding cosine from 0.853 down to 0.814 at 2 bits
(it shrinks every row and the shrinkage compounds); trained end to end, the same factors help.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .calibrate import batch_length, batch_rows, join, padding_mask, run
from .errors import UserError
from .quant import ScalarQuantizer
from .surgery import compression_of, shadow_weight

BATCH = 32
HOLDOUT_EVERY = 8


def _trimmed(batch):
    """A tokenizer's batch cut after its last real token (right padding costs compute and teaches nothing)."""
    mask = padding_mask(batch)
    if mask is None or not bool(mask.any()):
        return batch
    last = int(mask.any(0).nonzero().max()) + 1
    return {k: v[:, :last] if isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[:2] == mask.shape else v
            for k, v in batch.items()}


def minibatches(batches: list, size: int = BATCH) -> list:
    """The calibration inputs as mini-batches of `size` (joined and re-split when their shapes allow)."""
    joined = join(list(batches))
    if joined is None:
        return [_trimmed(b) for b in batches]
    n = batch_length(joined)
    return [_trimmed(batch_rows(joined, i, min(i + size, n))) for i in range(0, n, size)]


def _floats(out) -> list[torch.Tensor]:
    """Every floating tensor in a model's output (a tensor, a tuple/list, a dict or a transformers ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _floats(item)]
    return []


@torch.no_grad()
def reference_outputs(model: nn.Module, chunks: list) -> list[list[torch.Tensor]]:
    """The model's outputs on each mini-batch, taken before it is quantized (the teacher)."""
    was = model.training
    model.eval()
    try:
        outs = [[t.detach().float().clone() for t in _floats(run(model, c))] for c in chunks]
    finally:
        model.train(was)
    if not outs or not outs[0]:
        raise UserError("tuning after quantization needs a model whose output is a float tensor (or holds some)")
    return outs


def _scaled_layers(model: nn.Module) -> dict[nn.Module, nn.Parameter]:
    """A factor per output row (one for a whole-layer table) for every quantized Linear/Conv with a scalar scheme."""
    out = {}
    for m in model.modules():
        comp = compression_of(m)
        q = comp.quantizer if comp is not None else None
        if not isinstance(q, ScalarQuantizer) or not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        rows, tables = shadow_weight(m).shape[0], q.levels.shape[0]
        if tables == 1 or tables % rows == 0:
            out[m] = nn.Parameter(torch.ones(rows if tables > 1 else 1, device=q.levels.device))
    return out


def _scale_hook(module, inputs, output, s):
    """Output row r times s[r], the bias left as it is: what scaling the weight's row r does."""
    shape = [1] * output.dim()
    shape[-1 if isinstance(module, nn.Linear) else 1] = -1
    s = s.view(shape)
    if module.bias is None:
        return output * s
    b = module.bias.view(shape)
    return (output - b) * s + b


def _trainables(model: nn.Module, scales: dict) -> list[nn.Parameter]:
    quantized = [m for m in model.modules() if compression_of(m) is not None and compression_of(m).quantizer is not None]
    params = [m.bias for m in quantized if isinstance(getattr(m, "bias", None), nn.Parameter)]
    params += [p for m in model.modules() if "Norm" in type(m).__name__ for p in m.parameters(recurse=False)]
    params += list(scales.values())
    seen, unique = set(), []
    for p in params:  # a norm could hold a quantized layer's bias only in odd models; count each once
        if id(p) not in seen:
            seen.add(id(p))
            unique.append(p)
    return unique


def _loss(outputs: list[torch.Tensor], targets: list[torch.Tensor], variances: list[float]) -> torch.Tensor:
    if len(outputs) != len(targets):
        raise UserError("the model's output changed form during tuning; tune needs a model with a fixed output")
    return sum(((o.float() - t) ** 2).mean() / v for o, t, v in zip(outputs, targets, variances))


def tune(model: nn.Module, chunks: list, targets: list, epochs: int, lr: float = 1e-3, seed: int = 0,
         progress: Callable[[dict], None] | None = None) -> dict:
    """Train the factors, biases and norms (module docstring) for `epochs` over `chunks` against `targets`
    (reference_outputs of the same chunks), fold the factors into the level tables; a summary."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise UserError(f"tune epochs must be a whole number ≥ 0, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise UserError(f"tune learning rate must be a positive number, got {lr!r}")
    if epochs == 0:
        return {}
    n = len(chunks)
    held = [i for i in range(n) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1] or ([n - 1] if n > 1 else [])
    train = [i for i in range(n) if i not in held] or list(range(n))
    check = held or train
    variances = []
    for k in range(len(targets[0])):
        flat = torch.cat([t[k].reshape(-1) for t in targets])
        variances.append(max(float(flat.var()) if flat.numel() > 1 else 0.0, 1e-12))
    scales = _scaled_layers(model)
    params = _trainables(model, scales)
    flags = {p: p.requires_grad for p in model.parameters()}
    was = model.training
    hooks = [m.register_forward_hook(lambda mod, i, o, s=s: _scale_hook(mod, i, o, s)) for m, s in scales.items()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        model.eval()  # dropout off, batch-norm statistics as they are
        opt = torch.optim.Adam(params, lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * len(train)))
        gen = torch.Generator().manual_seed(seed)

        def held_out() -> float:
            with torch.no_grad():
                return sum(float(_loss(_floats(run(model, chunks[i])), targets[i], variances)) for i in check) / len(check)

        with parametrize.cached():
            start = best = held_out()
            best_state, kept = [p.detach().clone() for p in params], 0
            for epoch in range(1, epochs + 1):
                for j in torch.randperm(len(train), generator=gen).tolist():
                    i = train[j]
                    loss = _loss(_floats(run(model, chunks[i])), targets[i], variances)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                now = held_out()
                if now < best:
                    best, kept, best_state = now, epoch, [p.detach().clone() for p in params]
                if progress:
                    progress({"kind": "tune", "done": epoch, "total": epochs, "info": f"held-out loss {now:.4g}"})
        with torch.no_grad():
            for p, v in zip(params, best_state):
                p.copy_(v)
    finally:
        for h in hooks:
            h.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was)
    _fold(scales)
    return {"epochs": epochs, "kept_epoch": kept, "heldout_loss_before": start, "heldout_loss_after": best,
            "heldout_batches": len(held), "parameters": sum(p.numel() for p in params)}


@torch.no_grad()
def _fold(scales: dict) -> None:
    """Each row's factor into its level table (the codes keep their meaning) and into the shadow weight row,
    so the quantized weight is the tuned one with no hook."""
    for module, s in scales.items():
        q = compression_of(module).quantizer
        tables = q.levels.shape[0]
        s = s.detach().clamp_min(1e-6)  # a table must keep its order; a factor trained to ≤ 0 has never been seen
        q.scale_rows(s.repeat_interleave(tables // s.numel()) if tables > 1 else s)
        w = shadow_weight(module)
        w.mul_(s.view(-1, *([1] * (w.dim() - 1))).to(w.dtype))
