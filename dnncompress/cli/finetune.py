"""`dnncompress finetune`."""
from __future__ import annotations

import click

from ..stages.training import AGPParams, FinetuneParams
from .common import (
    ProgressBar,
    data_options,
    help_text,
    input_options,
    load_input,
    make_context,
    param_options,
    params_from,
    resume_options,
    run_stage,
    with_options,
)

EXAMPLE = "dnncompress finetune pruned.pt --epochs 2 -o tuned.pt"
FIELDS = ["epochs", "lr", "batch_size", "optimizer", "schedule", "weight_decay", "l1", "l2", "seed"]
HELP = {"l1": "L1 penalty on compressed weights", "l2": "L2 penalty on compressed weights"}


@click.command("finetune", help=help_text("Fine-tune a checkpoint; pruned weights stay zero, quantized layers train with QAT.", EXAMPLE))
@click.argument("checkpoint", required=False)
@with_options(data_options + input_options)
@with_options(param_options(FinetuneParams, FIELDS, HELP))
@click.option("--agp", "agp_final", default=None, type=float, help="gradually prune to this sparsity while fine-tuning (AGP)")
@click.option("--agp-end", default=AGPParams.end, show_default=True, type=float, help="fraction of training where AGP reaches its target")
@click.option("-o", "--output", default=None, type=click.Path())
@with_options(resume_options)
@click.option("--json", "json_out", is_flag=True)
def finetune(checkpoint, data, data_dir, device, arch, trust, agp_final, agp_end, output, resume, snapshot_every, json_out, **fields):
    agp = AGPParams(final=agp_final, end=agp_end) if agp_final is not None else None
    params = params_from(FinetuneParams, FIELDS, fields, agp=agp)
    path, ckpt = load_input(checkpoint, arch, trust)
    if "unpack" in [h.get("stage") for h in ckpt.get("history", [])][-1:]:
        click.echo(f"note: {path.name} keeps no fp32 shadow weights: fine-tuning starts from its decoded (quantized) weights; "
                   "pass the .pt it was packed from to continue from the shadow weights", err=True)
    with ProgressBar("finetune") as bar:
        ctx = make_context(data, data_dir, device, params.seed, bar, resume, snapshot_every)
        run_stage("finetune", params, path, ckpt, output, ctx, json_out)
