"""`dnncompress finetune`."""
from __future__ import annotations

import click

from .common import ProgressBar, data_options, help_text, input_options, load_input, make_context, resume_options, run_stage, with_options

EXAMPLE = "dnncompress finetune pruned.pt --epochs 2 -o tuned.pt"


@click.command("finetune", help=help_text("Fine-tune a checkpoint; pruned weights stay zero, quantized layers train with QAT.", EXAMPLE))
@click.argument("checkpoint", required=False)
@with_options(data_options + input_options)
@click.option("--epochs", default=2, show_default=True, type=int)
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--l1", default=0.0, show_default=True, type=float, help="L1 penalty on compressed weights")
@click.option("--l2", default=0.0, show_default=True, type=float, help="L2 penalty on compressed weights")
@click.option("--agp", "agp_final", default=None, type=float, help="gradually prune to this sparsity while fine-tuning (AGP)")
@click.option("--agp-end", default=0.75, show_default=True, type=float, help="fraction of training where AGP reaches its target")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-o", "--output", default=None, type=click.Path())
@with_options(resume_options)
@click.option("--json", "json_out", is_flag=True)
def finetune(checkpoint, data, data_dir, device, arch, trust, epochs, lr, batch_size, l1, l2, agp_final, agp_end, seed, output, resume,
             snapshot_every, json_out):
    from ..stages.training import AGPParams, FinetuneParams

    agp = AGPParams(final=agp_final, end=agp_end) if agp_final is not None else None
    params = FinetuneParams(epochs=epochs, lr=lr, batch_size=batch_size, l1=l1, l2=l2, agp=agp, seed=seed)
    path, ckpt = load_input(checkpoint, arch, trust)
    with ProgressBar("finetune") as bar:
        run_stage("finetune", params, path, ckpt, output, make_context(data, data_dir, device, seed, bar, resume, snapshot_every), json_out)
