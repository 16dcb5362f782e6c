"""`dnncompress joint`."""
from __future__ import annotations

import click

from .common import ProgressBar, data_options, help_text, input_options, load_input, make_context, resume_options, run_stage, with_options

EXAMPLE = "dnncompress joint base.pt --target-ratio 60 -o joint.pt"


@click.command("joint", help=help_text("Choose per-layer sparsity and bit-width under a size target, then prune and QAT them in (seed 002).", EXAMPLE))
@click.argument("checkpoint", required=False)
@click.option("--target-ratio", default=60.0, show_default=True, type=float, help="fp32 safetensors bytes / packed bytes")
@click.option("--target-bytes", default=None, type=int, help="a packed size in bytes instead of a ratio")
@click.option("--prune-epochs", default=3, show_default=True, type=int)
@click.option("--qat-epochs", default=2, show_default=True, type=int)
@click.option("--entropy", type=click.Choice(["none", "huffman"]), default="huffman", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@with_options(data_options + input_options)
@click.option("-o", "--output", default=None, type=click.Path())
@with_options(resume_options)
@click.option("--json", "json_out", is_flag=True)
def joint(checkpoint, target_ratio, target_bytes, prune_epochs, qat_epochs, entropy, seed, data, data_dir, device, arch, trust, output,
          resume, snapshot_every, json_out):
    from ..stages.joint import JointParams

    params = JointParams(target_ratio=target_ratio, target_bytes=target_bytes, prune_epochs=prune_epochs, qat_epochs=qat_epochs,
                         entropy=entropy, seed=seed)
    path, ckpt = load_input(checkpoint, arch, trust)
    with ProgressBar("joint") as bar:
        run_stage("joint", params, path, ckpt, output, make_context(data, data_dir, device, seed, bar, resume, snapshot_every), json_out)
