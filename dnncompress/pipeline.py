"""Runs a config's stages in order, each through the same `execute` the CLI commands use."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from .checkpoint import load_checkpoint
from .config import RunConfig, stage_outputs
from .errors import UserError
from .stages import STAGES, Context, execute


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
    for i, ((name, params), out_path) in enumerate(zip(cfg.stages, stage_outputs(cfg))):
        if name == "train":
            params = dataclasses.replace(params, arch=params.arch or cfg.model.arch, arch_kwargs=params.arch_kwargs or cfg.model.arch_kwargs)
        ckpt, result = execute(name, params, ckpt, out_path, ctx)
        outputs.append(out_path)
        if on_stage:
            on_stage(i, name, out_path, result)
    return outputs
