"""`dnncompress validate`."""
from __future__ import annotations

import click

from .common import help_text

EXAMPLE = "dnncompress validate configs/demo.yaml"


@click.command("validate", help=help_text("Check a config without running it.", EXAMPLE))
@click.argument("config", type=click.Path())
@click.argument("overrides", nargs=-1)
@click.option("--trust", is_flag=True, help="allow a package.module:factory architecture named in the config")
def validate(config, overrides, trust):
    from ..config import load_config

    cfg = load_config(config, list(overrides), trust=trust)
    click.echo(f"{config}: ok — {len(cfg.stages)} stage(s): {', '.join(n for n, _ in cfg.stages)}")
