"""The run directory's memory: which file the last stage wrote, so `dnncompress report` with
no argument works on the newest output (DESIGN: the checkpoint argument is optional)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import UserError
from .fileio import atomic_write_bytes

STATE_FILE = ".dnncompress-state.json"


def state_dir(run_dir: str | os.PathLike | None = None) -> Path:
    return Path(run_dir or os.getcwd())


def _state_path(run_dir: str | os.PathLike | None) -> Path:
    return state_dir(run_dir) / STATE_FILE


def record_output(path: str | os.PathLike, stage: str, run_dir=None) -> None:
    """Remember `path` as the newest output of this run directory (absolute, so any cwd below works)."""
    state_path = _state_path(run_dir)
    try:
        state = json.loads(state_path.read_text())
        if not isinstance(state, dict):
            state = {}
    except (OSError, ValueError):
        state = {}
    outputs = [o for o in state.get("outputs", []) if isinstance(o, dict)][-49:]
    outputs.append({"path": str(Path(path).resolve()), "stage": stage})
    state["outputs"] = outputs
    atomic_write_bytes(state_path, json.dumps(state, indent=1).encode())


def latest_output(run_dir=None, want_suffix: tuple[str, ...] = (".pt", ".dnc")) -> Path:
    """The newest recorded output that still exists, or a one-line error asking for a checkpoint."""
    state_path = _state_path(run_dir)
    try:
        outputs = json.loads(state_path.read_text()).get("outputs", [])
    except (OSError, ValueError, AttributeError):
        outputs = []
    for entry in reversed(outputs):
        p = Path(str(entry.get("path", ""))) if isinstance(entry, dict) else None
        if p and p.suffix in want_suffix and p.is_file():
            return p
    raise UserError("no checkpoint given and no earlier output recorded in this directory; pass a checkpoint path")
