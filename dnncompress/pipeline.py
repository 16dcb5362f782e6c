"""Runs a config's stages in order, each through the same `execute` the CLI commands use."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from .checkpoint import load_checkpoint
from .config import RunConfig, stage_outputs
from .errors import UserError
from .stages import STAGES, Context, execute
from .stages.base import params_dict, without_timings


def run_config(cfg: RunConfig, ctx: Context, on_stage: Callable[[int, str, Path, dict], None] | None = None) -> list[Path]:
    """Execute every stage; outputs go to `<output_dir>/<NN>-<stage><ext>` unless a stage names its own."""
    if not cfg.stages:
        raise UserError("the config has no stages; add e.g. '- finetune: {epochs: 1}' under stages")
    ckpt = None
    first = STAGES.get(cfg.stages[0][0])
    if first.needs_input:
        if not cfg.model.checkpoint:
            raise UserError("model.checkpoint is required unless the first stage is 'train'")
        ckpt = load_checkpoint(cfg.model.checkpoint, arch=cfg.model.arch, arch_kwargs=cfg.model.arch_kwargs)
    outputs = []
    skipping = ctx.resume
    for i, ((name, params), out_path) in enumerate(zip(cfg.stages, stage_outputs(cfg))):
        if name == "train":
            params = dataclasses.replace(params, arch=params.arch or cfg.model.arch, arch_kwargs=params.arch_kwargs or cfg.model.arch_kwargs)
        done = _completed_output(name, params, ckpt, out_path, cfg) if skipping else None
        if done is not None:
            ckpt, result = done, {"skipped": True}
        else:
            skipping = False  # once a stage runs again, every later output is stale
            ckpt, result = execute(name, params, ckpt, out_path, ctx)
        outputs.append(out_path)
        if on_stage:
            on_stage(i, name, out_path, result)
    return outputs


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _completed_output(name: str, params, ckpt: dict | None, out_path: Path, cfg: RunConfig) -> dict | None:
    """The checkpoint that follows stage `name`, if its output is already complete and valid (`run --resume`):
    it loads, and its history is exactly the input's history plus this stage with these parameters."""
    if not out_path.is_file():
        return None
    arch = cfg.model.arch or getattr(params, "arch", None) or (ckpt or {}).get("arch")
    entry_config = params_dict(params)
    try:
        if STAGES.get(name).ext == ".dnc":
            from .stages.pack import packed_already

            result = packed_already(ckpt, params, out_path) if ckpt is not None else None
            if result is None:
                return None
            entry = {"stage": name, "config": entry_config, "result": without_timings(result)}
            return {**ckpt, "history": [*ckpt.get("history", []), entry]}
        out = load_checkpoint(out_path, arch=arch)
    except UserError:
        return None
    history = out.get("history") or []
    if not history or history[-1].get("stage") != name or not _same(history[-1].get("config"), entry_config):
        return None
    if ckpt is not None and not _same(history[:-1], ckpt.get("history", [])):
        return None
    return out
