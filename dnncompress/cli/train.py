"""`dnncompress train`."""
from __future__ import annotations

import click

from ..stages.training import TrainParams
from .common import ProgressBar, data_options, help_text, make_context, param_options, params_from, resume_options, run_stage, with_options

EXAMPLE = "dnncompress train lenet5 --data mnist --epochs 3 -o base.pt"
FIELDS = ["epochs", "lr", "batch_size", "optimizer", "schedule", "weight_decay", "seed"]


@click.command("train", help=help_text("Train ARCH from scratch and write a checkpoint.", EXAMPLE))
@click.argument("arch")
@with_options(data_options)
@with_options(param_options(TrainParams, FIELDS))
@click.option("-o", "--output", default=None, type=click.Path(), help="output checkpoint [default: ARCH.base.pt]")
@with_options(resume_options)
@click.option("--json", "json_out", is_flag=True, help="print one JSON object on stdout")
def train(arch, data, data_dir, device, output, resume, snapshot_every, json_out, **fields):
    from ..models import build_model

    build_model(arch) if ":" not in arch else None  # unknown names fail before any data loads
    params = params_from(TrainParams, FIELDS, fields, arch=arch)
    with ProgressBar(f"train {arch}") as bar:
        ctx = make_context(data or "mnist", data_dir, device, params.seed, bar, resume, snapshot_every)
        run_stage("train", params, None, None, output or f"{arch.replace(':', '_')}.base.pt", ctx, json_out)
