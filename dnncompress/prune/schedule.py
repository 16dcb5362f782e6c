"""Automated gradual pruning (Zhu & Gupta): s_t = s_f + (s_i − s_f)(1 − (t − t0)/(nΔt))³."""
from __future__ import annotations

from ..errors import UserError
from .magnitude import apply_masks, check_sparsity, magnitude_masks


def agp_sparsity(t: int, s_i: float, s_f: float, t0: int, n: int, dt: int) -> float:
    """Target sparsity at step t: s_i before t0, s_f after t0 + n·dt, cubic in between."""
    if t <= t0:
        return s_i
    span = n * dt
    if span <= 0 or t >= t0 + span:
        return s_f
    return s_f + (s_i - s_f) * (1 - (t - t0) / span) ** 3


class AGPHook:
    """Training hook: every `dt` steps from t0, re-mask by magnitude to the AGP target of each layer."""

    def __init__(self, layers: dict, final: dict[str, float], initial: float | dict[str, float] = 0.0, start: float = 0.0,
                 end: float = 0.75, every: int = 10, scope: str = "layer"):
        for s in final.values():
            check_sparsity(s, "final sparsity")
        initial = {name: initial for name in final} if not isinstance(initial, dict) else initial  # per layer: where it starts
        for s in initial.values():
            check_sparsity(s, "initial sparsity")
        if not 0 <= start < end <= 1:
            raise UserError("AGP start/end are fractions of training with 0 ≤ start < end ≤ 1")
        if every < 1:
            raise UserError("AGP 'every' must be ≥ 1 step")
        self.layers, self.final, self.initial = layers, final, initial
        self.start, self.end, self.every, self.scope = start, end, every, scope
        self.history: list[tuple[int, float]] = []

    def on_step(self, step: int, total: int) -> None:
        t0 = int(self.start * total)
        n = max(1, (int(self.end * total) - t0) // self.every)
        if step % self.every and step != total - 1:
            return
        frac = {name: agp_sparsity(step, self.initial.get(name, 0.0), s_f, t0, n, self.every) for name, s_f in self.final.items()}
        apply_masks(self.layers, magnitude_masks(self.layers, frac, self.scope))
        self.history.append((step, sum(frac.values()) / len(frac)))

    def run_state(self) -> dict:
        """What a resumed run needs besides the masks (those live in the model's state)."""
        return {"history": list(self.history)}

    def load_run_state(self, state: dict) -> None:
        self.history = [tuple(h) for h in state["history"]]

    def on_end(self) -> None:
        apply_masks(self.layers, magnitude_masks(self.layers, self.final, self.scope))
