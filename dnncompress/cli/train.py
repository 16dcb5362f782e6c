"""`dnncompress train`."""
from __future__ import annotations

import click

from .common import ProgressBar, data_options, help_text, make_context, resume_options, run_stage, with_options

EXAMPLE = "dnncompress train lenet5 --data mnist --epochs 3 -o base.pt"


@click.command("train", help=help_text("Train ARCH from scratch and write a checkpoint.", EXAMPLE))
@click.argument("arch")
@with_options(data_options)
@click.option("--epochs", default=3, show_default=True, type=int)
@click.option("--lr", default=2e-3, show_default=True, type=float)
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option("--schedule", type=click.Choice(["onecycle", "cosine", "constant"]), default="onecycle", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-o", "--output", default=None, type=click.Path(), help="output checkpoint [default: ARCH.base.pt]")
@with_options(resume_options)
@click.option("--json", "json_out", is_flag=True, help="print one JSON object on stdout")
def train(arch, data, data_dir, device, epochs, lr, batch_size, optimizer, schedule, seed, output, resume, snapshot_every, json_out):
    from ..models import build_model
    from ..stages.training import TrainParams

    build_model(arch) if ":" not in arch else None  # unknown names fail before any data loads
    params = TrainParams(arch=arch, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, schedule=schedule, seed=seed)
    with ProgressBar(f"train {arch}") as bar:
        ctx = make_context(data or "mnist", data_dir, device, seed, bar, resume, snapshot_every)
        run_stage("train", params, None, None, output or f"{arch.replace(':', '_')}.base.pt", ctx, json_out)
