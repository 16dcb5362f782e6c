"""`dnncompress unpack`."""
from __future__ import annotations

import json

import click

from .common import help_text, input_options, resolve_input, with_options

EXAMPLE = "dnncompress unpack model.dnc -o restored.pt"


@click.command("unpack", help=help_text("Restore a checkpoint from a .dnc: weights bit-equal to what the quantized model evaluates with.", EXAMPLE))
@click.argument("packed", required=False)
@with_options(input_options)
@click.option("-o", "--output", default=None, type=click.Path())
@click.option("--json", "json_out", is_flag=True)
def unpack(packed, arch, trust, output, json_out):
    from ..checkpoint import save_checkpoint
    from ..fileio import output_path
    from ..pack import checkpoint_from_packed
    from ..runstate import record_output

    src = resolve_input(packed, (".dnc",))
    out = output_path(src, output, "unpacked", ".pt")
    ckpt = checkpoint_from_packed(src, arch=arch, trust=trust)
    save_checkpoint(ckpt, out)
    record_output(out, "unpack")
    info = {"output": str(out), "layers": len(ckpt["quant"]) + len(set(ckpt["masks"]) - set(ckpt["quant"])), "arch": ckpt["arch"]}
    click.echo(json.dumps(info) if json_out else f"unpack: wrote {out}")
