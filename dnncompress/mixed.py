"""Mixed precision under a byte budget (post-training): each layer's bit width chosen from its effect on the
model's output, measured on data.

A uniform 4 bits spends as much on a 288-weight depthwise conv whose error wrecks the output as on a
million-weight projection that shrugs it off. The scan quantizes one layer at a time at each candidate width
(the scheme's own data-free fit, so what is measured is what calibration then starts from) and records the
relative squared error of the model's output on a few calibration samples and the layer's exact bytes (the
scheme's storage); a Lagrangian choice (seed 002's, `prune.joint.choose`) then minimizes the summed error
under the budget. The errors of different layers are taken as additive, which is what makes the choice
one pass rather than a search over combinations."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from .calibrate import batch_rows, join, run
from .errors import UserError
from .pack.layers import storage_bytes
from .prune.joint import choose
from .quant import make_quantizer
from .surgery import compression_of, shadow_weight, shadow_weights_replaced

BITS = (2, 3, 4, 5, 6, 8)
SCAN_SAMPLES = 32  # model outputs compared per candidate: enough to rank layers, cheap enough for 50 × 6 forwards


def _first_tensor(out) -> torch.Tensor:
    """The tensor a model's output leads with (a tensor, a tuple's first, a dict's or ModelOutput's first value)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)) and out:
        return _first_tensor(out[0])
    raise UserError(f"target_bits compares the model's outputs, and this model returned {type(out).__name__}")


def _head(batches: list):
    """At most SCAN_SAMPLES samples of the calibration data, as one batch."""
    batch = join(batches)
    if batch is None:  # shapes differ: the first batch alone
        batch = batches[0]
    return batch_rows(batch, 0, SCAN_SAMPLES)


@torch.no_grad()
def scan(model: nn.Module, layers: dict[str, nn.Module], options: dict[str, dict], batches: list, bits=BITS,
         progress: Callable[[dict], None] | None = None) -> dict[str, list]:
    """{layer: [(0.0, bits, relative output error, bytes), ...]} with every other layer as it is."""
    batch = _head(batches)
    was = model.training
    model.eval()

    def output():
        return _first_tensor(run(model, batch)).detach().float()

    ref = output()
    norm = ref.pow(2).sum().clamp_min(1e-30)
    table, done, total = {}, 0, len(layers) * len(bits)
    try:
        for name, module in layers.items():
            w = shadow_weight(module).detach()
            comp = compression_of(module)
            mask = comp.mask if comp is not None else None
            rows = []
            for b in bits:
                opts = dict(options[name])
                q = make_quantizer(opts.pop("scheme"), **{**opts, "bits": b}).to(w.device).fit(w, mask).eval()
                wq = q(w, mask)
                with shadow_weights_replaced({module: wq}):
                    err = float((output() - ref).pow(2).sum() / norm)
                rows.append((0.0, b, err, storage_bytes(q.storage(w, mask))))
                done += 1
                if progress:
                    progress({"kind": "scan", "done": done, "total": total, "info": f"{name} {b} bits"})
            table[name] = rows
    finally:
        model.train(was)
    return table


def allocate(table: dict[str, list], budget_bytes: float) -> tuple[dict[str, int], int]:
    """({layer: bits}, bytes) with the least summed output error whose bytes fit the budget (else the smallest)."""
    choice, size = choose(table, budget_bytes)
    return {name: int(row[1]) for name, row in choice.items()}, int(size)
