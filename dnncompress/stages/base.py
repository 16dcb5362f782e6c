"""The stage contract: checkpoint dict in → StageOutput out. Adding a stage is one small file
that calls `register_stage`; the CLI command and `dnncompress run` both go through `execute`."""
from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import save_checkpoint
from ..data import VAL_SPLIT, DataBundle, load_data
from ..errors import UserError
from ..fileio import atomic_path, check_writable_dir
from ..models import default_input_shape
from ..registry import Registry
from ..runstate import record_output, state_dir


@dataclass
class StageOutput:
    checkpoint: dict
    result: dict = field(default_factory=dict)
    writer: Callable[[Path], dict] | None = None  # writes a non-checkpoint artifact (e.g. .dnc); returns extra result


@dataclass(frozen=True)
class Stage:
    name: str
    params: type
    run: Callable[[dict | None, Any, Context], StageOutput]
    suffix: str
    ext: str = ".pt"
    needs_input: bool = True
    summary: str = ""


STAGES: Registry[Stage] = Registry("stage")


def register_stage(name: str, params: type, suffix: str | None = None, ext: str = ".pt", needs_input: bool = True, summary: str = ""):
    def add(fn):
        STAGES.register(name)(Stage(name, params, fn, suffix or name, ext, needs_input, summary or (fn.__doc__ or "").strip().split("\n")[0]))
        return fn

    return add


@dataclass
class Context:
    """What a stage may need besides its params: data, device, seed, progress and log callbacks."""

    data_name: str | None = None
    data_dir: str | None = None
    val_split: float | None = None  # None: what the checkpoint was trained with (else data.VAL_SPLIT)
    data_options: dict = field(default_factory=dict)  # the dataset's own options (imagefolder sizes, a factory's kwargs)
    device: str = "auto"
    seed: int = 0
    progress: Callable[[dict], None] | None = None
    log: Callable[[str], None] = lambda msg: None
    run_dir: str | None = None
    resume: bool = False  # continue a killed stage from its snapshots
    snapshot_every: int = 200  # optimizer steps between snapshots (and one at each epoch end); 0 = none
    snapshot_dir: Path | None = None  # set by `execute` for the stage being run
    stage: tuple | None = None  # set by `execute`: (name, params, input checkpoint) of the stage being run
    _cache: dict = field(default_factory=dict)

    @property
    def stage_key(self) -> str:
        """What makes a snapshot or memoized phase valid for the running stage; hashed only when asked for
        (stages that never snapshot never pay for hashing their input's weights)."""
        if "stage_key" not in self._cache:
            self._cache["stage_key"] = stage_key(*self.stage) if self.stage else ""
        return self._cache["stage_key"]

    def snapshots(self, phase: str):
        """Snapshot settings for one training phase of the running stage, or None when off."""
        from ..train import Snapshots

        if self.snapshot_dir is None or not self.snapshot_every:
            return None
        return Snapshots(self.snapshot_dir / f"{phase}.snap", self.snapshot_every, self.resume, self.log, f"{self.stage_key}:{phase}")

    def memo(self, phase: str, compute: Callable[[], Any]) -> Any:
        """`compute()`, saved beside the snapshots so a resumed stage skips a finished phase."""
        import torch

        from ..fileio import atomic_torch_save

        if self.snapshot_dir is None or not self.snapshot_every:
            return compute()
        path = self.snapshot_dir / f"{phase}.memo"
        if self.resume and path.is_file():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                if isinstance(saved, dict) and saved.get("key") == self.stage_key:
                    self.log(f"resume: phase '{phase}' already done; using its saved result")
                    return saved["value"]
            except Exception:  # damaged: compute it again
                pass
        value = compute()
        atomic_torch_save({"key": self.stage_key, "value": value}, path)
        return value

    def data_for(self, ckpt: dict | None, arch: str | None = None) -> DataBundle:
        """The context's dataset if set, else the one the checkpoint was trained on (cached)."""
        ds = (ckpt or {}).get("dataset", {}) or {}
        name = self.data_name or ds.get("name")
        if not name:
            raise UserError("no dataset known for this checkpoint; pass --data NAME")
        if not self.data_name and isinstance(name, str) and ":" in name:  # never run code a file names
            raise UserError(f"this checkpoint's data comes from the factory '{name}': name it with --data {name} to run it")
        options = self.data_options if self.data_name else (ds.get("options") or {})
        data_dir = self.data_dir if self.data_name or self.data_dir else ds.get("data_dir")
        arch = arch or (ckpt or {}).get("arch")
        shape = tuple(ds.get("input_shape") or default_input_shape(arch or ""))
        val_split = self.val_split if self.val_split is not None else ds.get("val_split", VAL_SPLIT)
        key = (name, data_dir, shape, val_split, tuple(sorted(options.items())))
        if key not in self._cache:
            self._cache[key] = load_data(name, data_dir, input_shape=shape, seed=self.seed, val_split=val_split, options=options)
        return self._cache[key]

    def validation(self, ckpt: dict | None, what: str):
        """The held-out split a search chooses on; the test split only reports."""
        bundle = self.data_for(ckpt)
        if bundle.val is None or not len(bundle.val):
            raise UserError(f"{what} chooses on a validation split, and this run has none: pass --val-split 0.1 (or data.val_split)")
        return bundle.val


def params_dict(params: Any) -> dict:
    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else dict(params or {})


def execute(name: str, params: Any, ckpt: dict | None, out_path: Path, ctx: Context, main_process: bool = True) -> tuple[dict, dict]:
    """Run one stage, append it to the history, write its output atomically, record it in the run state."""
    stage = STAGES.get(name)
    if stage.needs_input and ckpt is None:
        raise UserError(f"stage '{name}' needs an input checkpoint")
    if main_process:  # fail before the work, not after it, when the output or its record cannot be written
        check_writable_dir(Path(out_path).parent)
        check_writable_dir(state_dir(ctx.run_dir), "every output is recorded in .dnncompress-state.json there: run from a writable directory")
    ctx.snapshot_dir = snapshot_dir_for(out_path)
    ctx.stage = (name, params, ckpt)
    ctx._cache.pop("stage_key", None)
    if not ctx.resume and main_process:
        shutil.rmtree(ctx.snapshot_dir, ignore_errors=True)  # a fresh run: an earlier run's snapshots are not ours
    t0 = time.perf_counter()
    report = ctx.progress
    if report is not None:  # every event says which stage sent it: each stage gets its own bar
        ctx.progress = lambda event: report({**event, "stage": name})
    try:
        out = stage.run(ckpt, params, ctx)
    finally:
        ctx.progress = report
    seconds = time.perf_counter() - t0
    result = dict(out.result)
    if main_process:
        if out.writer is not None:
            with atomic_path(out_path) as tmp:
                result.update(out.writer(tmp))
        # the product holds no timings: the same input and seed give the same bytes
        entry = {"stage": name, "config": params_dict(params), "result": without_timings(result)}
        out.checkpoint.setdefault("history", []).append(entry)
        if out.writer is None:
            save_checkpoint(out.checkpoint, out_path)
        try:
            record_output(out_path, name, ctx.run_dir)
        except UserError:
            Path(out_path).unlink(missing_ok=True)  # no output without its state record
            raise
        shutil.rmtree(ctx.snapshot_dir, ignore_errors=True)  # the output is complete: nothing left to resume
    ctx.snapshot_dir, ctx.stage = None, None
    ctx._cache.pop("stage_key", None)
    result["seconds"] = round(seconds, 3)
    return out.checkpoint, result


def snapshot_dir_for(out_path: Path) -> Path:
    """Where a stage keeps its snapshots: a hidden folder beside its output."""
    out_path = Path(out_path)
    return out_path.parent / f".{out_path.name}.resume"


def stage_key(name: str, params: Any, ckpt: dict | None) -> str:
    """The stage, its parameters and its input weights: saved phase results are only reused for these."""
    import hashlib
    import json

    from ..train import hash_tensors

    h = hashlib.sha256(json.dumps({"stage": name, "params": params_dict(params)}, sort_keys=True, default=str).encode())
    hash_tensors(h, (ckpt or {}).get("state_dict") or {})
    for group in ("masks", "quant"):
        h.update(repr(sorted(((ckpt or {}).get(group) or {}).keys())).encode())
    return h.hexdigest()


TIMING_KEYS = ("seconds",)


def without_timings(obj):
    """`obj` with wall-clock entries removed at every depth."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj
