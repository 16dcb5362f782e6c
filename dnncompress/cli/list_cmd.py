"""`dnncompress list`."""
from __future__ import annotations

import json

import click

from .common import help_text

EXAMPLE = "dnncompress list"


@click.command("list", help=help_text("List architectures, datasets, stages and quantization schemes.", EXAMPLE))
@click.option("--json", "json_out", is_flag=True)
def list_cmd(json_out):
    from ..catalog import builtin

    info = builtin()
    if json_out:
        click.echo(json.dumps(info))
        return
    for key, names in info.items():
        click.echo(f"{key}: {', '.join(names)}")
