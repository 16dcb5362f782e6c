"""`dnncompress pack`."""
from __future__ import annotations

import click

from ..errors import UserError
from .common import help_text, input_options, load_input, make_context, run_stage, with_options

EXAMPLE = "dnncompress pack q.pt -o model.dnc --entropy huffman"


@click.command("pack", help=help_text("Pack a checkpoint into a .dnc file (safetensors, no pickle) as small as reported.", EXAMPLE))
@click.argument("checkpoint", required=False)
@click.option("--entropy", type=click.Choice(["none", "huffman"]), default="none", show_default=True,
              help="entropy-code codes and index gaps (used per layer only where smaller)")
@click.option("--fp16", is_flag=True, help="store biases/BN and other leftovers as fp16 (smaller, not lossless)")
@with_options(input_options)
@click.option("-o", "--output", default=None, type=click.Path(), help="output .dnc [default: beside the input]")
@click.option("--json", "json_out", is_flag=True)
def pack(checkpoint, entropy, fp16, arch, trust, output, json_out):
    from ..stages.pack import PackParams

    path, ckpt = load_input(checkpoint, arch, trust)
    if path.suffix == ".dnc":
        raise UserError(f"{path} is already packed; pass the checkpoint it came from")
    run_stage("pack", PackParams(output=output, entropy=entropy, fp16=fp16), path, ckpt, output,
              make_context(), json_out)
