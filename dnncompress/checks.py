"""Range checks shared by every stage's parameters, so the CLI, `validate` and `run` refuse the same
values with the same words (NaN and infinity included: `x <= 0` is False for NaN)."""
from __future__ import annotations

import math

from .errors import UserError

MAX_EPOCHS = 10_000
MAX_BATCH = 1 << 20
MAX_SEED = 1 << 63


def finite(value, name: str, low: float = -math.inf, high: float = math.inf, low_open: bool = False, hint: str = "") -> float:
    """`value` as a float if it is finite and in [low, high] ((low, high] with low_open)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        rng = ("> " if low_open else "≥ ") + f"{low:g}" if math.isinf(high) else f"in [{low:g}, {high:g}]"
        raise UserError(f"{name} must be a finite number {hint or rng}, got {value!r}")
    return float(value)


def whole(value, name: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise UserError(f"{name} must be a whole number in [{low:,}, {high:,}], got {value!r}")
    return value


def training_numbers(p) -> None:
    """epochs, lr, batch_size, weight_decay, seed of a train/finetune-like parameter object."""
    whole(p.epochs, "epochs", 0, MAX_EPOCHS)
    finite(p.lr, "lr", 0.0, low_open=True)
    whole(p.batch_size, "batch_size", 1, MAX_BATCH)
    finite(getattr(p, "weight_decay", 0.0), "weight_decay", 0.0)
    whole(p.seed, "seed", 0, MAX_SEED - 1)
