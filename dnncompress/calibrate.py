"""Calibrated post-training quantization: minimize each layer's *output* error on captured inputs,
with the scheme's own level set (GPTQ/OBQ-style second-order error compensation, DESIGN §10).

For a layer with inputs X (n×d_in; convolutions unfolded im2col-style), H = 2XᵀX + λI. With U the
upper Cholesky factor of H⁻¹, the columns are quantized in order: q_j = the scheme's nearest level
for column j (per-channel rows use their own levels), e = (w_j − q_j)/U_jj, and the columns not yet
quantized absorb the error: W[:, j+1:] −= e·U[j, j+1:] (lazily, in blocks of 128). Levels and scales
come from the scheme's own fit on the original weights; pruned weights stay exactly zero.

Layers are done one at a time, in model order, each calibrated on the inputs it sees with the
layers before it already quantized; only one layer's H is alive at a time.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UserError
from .quant import ScalarQuantizer
from .surgery import compression_of, shadow_weight

BLOCK = 128


def _inputs_matrix(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of the matrix its weight multiplies (convolutions unfolded im2col-style)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, dilation, padding, stride = ((1, v[0]) for v in (module.kernel_size, module.dilation, module.padding, module.stride))
    else:
        kernel, dilation, padding, stride = module.kernel_size, module.dilation, module.padding, module.stride
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def calibratable(module: nn.Module) -> bool:
    """A scalar-quantized Linear, or an ungrouped Conv1d/Conv2d with numeric padding ('same' strings are not unfolded)."""
    comp = compression_of(module)
    if comp is None or not isinstance(comp.quantizer, ScalarQuantizer):
        return False
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1 and isinstance(module.padding, tuple)


@torch.no_grad()
def _hessian(model: nn.Module, module: nn.Module, batches: Iterable[torch.Tensor]) -> torch.Tensor | None:
    """2·XᵀX/n of the layer's inputs, or None when they cannot be read as the matrix its weight multiplies:
    its forward never ran (attention's out_proj), or a subclass pads or reshapes inside forward (a "same"
    padding conv), which the unfolded input would not match (checked against the output's size)."""
    h, count, ok = None, 0, True

    def hook(mod, inputs, output):
        nonlocal h, count, ok
        rows = _inputs_matrix(module, inputs[0].detach().float())
        outputs = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        if rows.shape[0] != output.numel() // outputs:  # one row per output position, or the input was not what the weight saw
            ok = False
            return
        h = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64, device=rows.device) if h is None else h
        h += rows.double().t() @ rows.double()
        count += rows.shape[0]

    handle = module.register_forward_hook(hook)
    try:
        for x in batches:
            model(x)
    finally:
        handle.remove()
    if h is None or not ok:
        return None
    return 2 * h / max(count, 1)


def _quantize_column(q: ScalarQuantizer, col: torch.Tensor, j: int, n: int) -> torch.Tensor:
    """The scheme's nearest level for every row of column j of n (per-channel rows use their own levels,
    group-wise tables the row's group that holds column j), by the scheme's own encode rule."""
    c = col.reshape(-1, 1).float()
    rows = q.levels.shape[0]
    if rows in (1, c.shape[0]):
        return q.decode(q.encode(c), c.shape).reshape(col.shape).to(col.dtype)
    per_row = rows // c.shape[0]  # groups per row
    pick = torch.arange(c.shape[0], device=c.device) * per_row + j // (n // per_row)
    levels, thresholds = q.levels, q.thresholds
    try:  # the scheme's encode/decode on the column's own rows of the table
        q.levels, q.thresholds = levels.detach()[pick], thresholds[pick]
        return q.decode(q.encode(c), c.shape).reshape(col.shape).to(col.dtype)
    finally:
        q.levels, q.thresholds = levels, thresholds


@torch.no_grad()
def gptq(weight: torch.Tensor, h: torch.Tensor, q: ScalarQuantizer, mask: torch.Tensor | None, damp: float = 0.01) -> torch.Tensor:
    """Quantized weight (rows = output channels) minimizing ‖(W − Q)X‖² column by column (see the module docstring)."""
    w = weight.reshape(weight.shape[0], -1).double().clone()
    m = mask.reshape(w.shape).to(w.dtype) if mask is not None else None
    h = h.double().clone()
    dead = torch.diag(h) == 0  # inputs that are always zero: their columns cost nothing
    h[dead, dead] = 1
    h += damp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    try:
        u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError:
        raise UserError("calibration inputs are degenerate (H is not positive definite even with damping); give more samples") from None
    out = torch.zeros_like(w)
    n = w.shape[1]
    for start in range(0, n, BLOCK):
        end = min(start + BLOCK, n)
        block = w[:, start:end].clone()
        errors = torch.zeros_like(block)
        for j in range(end - start):
            col = block[:, j]
            qcol = _quantize_column(q, col.float(), start + j, n).double()
            if m is not None:
                qcol = qcol * m[:, start + j]
            out[:, start + j] = qcol
            err = (col - qcol) / u[start + j, start + j]
            block[:, j:] -= err.unsqueeze(1) * u[start + j, start + j : end].unsqueeze(0)
            errors[:, j] = err
        w[:, end:] -= errors @ u[start:end, end:]
    return out.reshape(weight.shape).to(weight.dtype)


def calibrate(model: nn.Module, batches: list[torch.Tensor], damp: float = 0.01) -> list[dict]:
    """Replace every calibratable quantized layer's shadow weight by its GPTQ solution, in model order.
    Layers this cannot handle (grouped convs, pq, a module whose forward is never called) keep their
    data-free fit. Returns per-layer errors."""
    if not batches:
        raise UserError("calibration needs at least one batch of inputs")
    was = model.training
    model.eval()
    rows, candidates = [], 0
    try:
        for name, module in model.named_modules():
            if not calibratable(module):
                continue
            comp = compression_of(module)
            candidates += 1
            h = _hessian(model, module, batches)
            if h is None:
                continue  # keeps its data-free fit
            w = shadow_weight(module)
            ref = w.detach() * comp.mask if comp.mask is not None else w.detach().clone()
            data_free = comp.quantizer(ref, comp.mask).detach()
            new = gptq(ref, h, comp.quantizer, comp.mask, damp)
            w.data.copy_(new)
            rows.append({"layer": name, "output_error_data_free": _output_error(ref, data_free, h),
                         "output_error_calibrated": _output_error(ref, new, h)})
    finally:
        model.train(was)
    if candidates and not rows:
        raise UserError("calibration data never reached a quantized layer's forward; check the data matches the model's input")
    return rows


@torch.no_grad()
def _output_error(w: torch.Tensor, wq: torch.Tensor, h: torch.Tensor) -> float:
    """Relative output error tr((W−Q) H (W−Q)ᵀ) / tr(W H Wᵀ) of a layer on its calibration inputs."""
    ref = w.reshape(w.shape[0], -1).double()
    diff = ref - wq.reshape(wq.shape[0], -1).double()
    num = torch.einsum("ij,jk,ik->", diff, h, diff)
    return float(num / torch.einsum("ij,jk,ik->", ref, h, ref).clamp_min(1e-30))
