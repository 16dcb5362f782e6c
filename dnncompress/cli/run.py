"""`dnncompress run`."""
from __future__ import annotations

import json

import click

from .common import ProgressBar, data_options, echo, help_text, jsonable, make_context, print_result, resume_options, with_options

EXAMPLE = "dnncompress run configs/demo.yaml stages.2.finetune.epochs=1"


@click.command("run", help=help_text("Run a YAML config's stages in order; KEY=VALUE pairs override config keys.", EXAMPLE))
@click.argument("config", type=click.Path())
@click.argument("overrides", nargs=-1)
@with_options(data_options)
@click.option("--trust", is_flag=True, help="allow a package.module:factory architecture named in the config (it runs that code)")
@with_options(resume_options)
@click.option("--json", "json_out", is_flag=True)
def run(config, overrides, data, data_dir, device, trust, resume, snapshot_every, json_out):
    from ..config import load_config
    from ..pipeline import run_config

    cfg = load_config(config, list(overrides), trust=trust)
    results = []

    def on_stage(i, name, out, result):
        results.append({"stage": name, "output": str(out), **jsonable(result)})
        if not json_out:
            if result.get("skipped"):
                echo(f"[{i}] {name}: {out} is complete (resume); skipped", err=True)
            else:
                print_result(f"[{i}] {name}", out, result)

    with ProgressBar("run") as bar:
        ctx = make_context(data or cfg.data.name, data_dir or cfg.data.root, device if device != "auto" else cfg.device, cfg.seed, bar,
                           resume, snapshot_every)
        if ctx.val_split is None:
            ctx.val_split = cfg.data.val_split
        ctx.data_options = {**cfg.data.options, **ctx.data_options}
        run_config(cfg, ctx, on_stage)
    if json_out:
        click.echo(json.dumps({"config": config, "stages": results}))
