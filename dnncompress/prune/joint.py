"""Joint per-layer sparsity and bit-width under a size target (seed 002), as a search:

1. scan: for every layer and every (sparsity s, bits b), prune that layer alone to s and
   quantize its kept weights to a b-bit k-means codebook; record the accuracy drop and the
   exact packed bytes of that layer (codes + best sparse index + codebook);
2. choose: per layer argmin(drop + λ·bytes), with λ found by bisection so the total meets the
   byte target (Lagrangian relaxation of  min Σ drop  s.t.  Σ bytes ≤ target).
The stage then trains the choice in: gradual pruning, then quantization-aware fine-tuning.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..pack.layers import index_bytes, storage_bytes
from ..quant import make_quantizer
from ..surgery import shadow_weight, shadow_weights_replaced
from .magnitude import effective_magnitude, keep_top

SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99)
BITS = (2, 3, 4, 5, 6, 8)


def layer_bytes(quantizer, weight: torch.Tensor, mask: torch.Tensor) -> int:
    """Packed bytes of one layer, as the scheme stores it (codes + tables) plus the smaller sparse layout."""
    return storage_bytes(quantizer.storage(weight, mask)) + index_bytes(mask)


@torch.no_grad()
def scan(layers: dict[str, nn.Module], accuracy: Callable[[], float], sparsities=SPARSITIES, bits=BITS, progress=None) -> dict:
    """{layer: [(s, b, drop, bytes), ...]} plus the baseline accuracy."""
    base = accuracy()
    table, done, total = {}, 0, len(layers) * len(sparsities) * len(bits)
    for name, module in layers.items():
        original = shadow_weight(module).detach().clone()
        rows = []
        for s in sparsities:
            mask = keep_top(effective_magnitude(module), int(round(s * original.numel())))
            for b in bits:
                q = make_quantizer("codebook", bits=b).fit(original, mask).eval()
                with shadow_weights_replaced({module: q(original, mask)}):
                    rows.append((s, b, base - accuracy(), layer_bytes(q, original, mask)))
                done += 1
                if progress:
                    progress({"kind": "scan", "done": done, "total": total, "info": f"{name} s={s:.2f} b={b}"})
        table[name] = rows
    return {"baseline": base, "table": table}


def choose(table: dict[str, list], budget_bytes: float) -> tuple[dict[str, tuple], float]:
    """Per-layer (s, b, drop, bytes) minimizing the summed drop with Σ bytes ≤ budget (Lagrangian bisection)."""

    def pick(lam):
        out = {}
        for name, rows in table.items():
            out[name] = min(rows, key=lambda r: (max(r[2], 0.0) + lam * r[3], r[3]))
        return out, sum(r[3] for r in out.values())

    lo, hi = 0.0, 1.0
    choice, size = pick(hi)
    while size > budget_bytes and hi < 1e9:
        hi *= 4
        choice, size = pick(hi)
    if size > budget_bytes:
        return choice, size  # unreachable target: the smallest configuration
    for _ in range(60):
        mid = (lo + hi) / 2
        c, sz = pick(mid)
        if sz <= budget_bytes:
            hi, choice, size = mid, c, sz
        else:
            lo = mid
    return choice, size


def container_budget(layers: int) -> int:
    """The .dnc's fixed cost beyond weights, biases and index (header, digest, deflated spec): its tested budget."""
    return 300 + 40 * layers


def estimated_total(choice: dict[str, tuple], leftover_bytes: int, overhead: int = 2048) -> int:
    return int(sum(r[3] for r in choice.values()) + leftover_bytes + overhead)


def leftover_bytes(state: dict, compressed: set[str]) -> int:
    return int(sum(t.numel() * 4 for k, t in state.items() if k not in compressed and t.is_floating_point())
               + sum(t.numel() * 8 for k, t in state.items() if not t.is_floating_point()))


def as_rows(choice: dict[str, tuple], sizes: dict[str, int]) -> list[dict]:
    return [{"layer": n, "params": sizes[n], "sparsity": r[0], "bits": r[1], "scan_drop": round(r[2], 3), "est_bytes": r[3]}
            for n, r in choice.items()]


__all__ = ["BITS", "SPARSITIES", "as_rows", "choose", "container_budget", "estimated_total", "layer_bytes", "leftover_bytes", "scan"]
