"""`dnncompress pack`."""
from __future__ import annotations

import click

from ..errors import UserError
from ..stages.pack import PackParams
from .common import help_text, input_options, load_input, make_context, param_options, params_from, run_stage, with_options

EXAMPLE = "dnncompress pack q.pt -o model.dnc --entropy huffman"
FIELDS = ["entropy", "fp16"]
HELP = {"entropy": "entropy-code codes and index gaps (used per layer only where smaller)",
        "fp16": "store biases/BN and other leftovers as fp16 (smaller, not lossless)"}


@click.command("pack", help=help_text("Pack a checkpoint into a .dnc file (safetensors, no pickle) as small as reported.", EXAMPLE))
@click.argument("checkpoint", required=False)
@with_options(param_options(PackParams, FIELDS, HELP))
@with_options(input_options)
@click.option("-o", "--output", default=None, type=click.Path(), help="output .dnc [default: beside the input]")
@click.option("--json", "json_out", is_flag=True)
def pack(checkpoint, arch, trust, output, json_out, **fields):
    params = params_from(PackParams, FIELDS, fields, output=output)
    path, ckpt = load_input(checkpoint, arch, trust)
    if path.suffix == ".dnc":
        raise UserError(f"{path} is already packed; pass the checkpoint it came from")
    run_stage("pack", params, path, ckpt, output, make_context(), json_out)
