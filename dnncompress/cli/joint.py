"""`dnncompress joint`."""
from __future__ import annotations

import click

from ..stages.joint import JointParams
from .common import (
    ProgressBar,
    data_options,
    fractions,
    help_text,
    input_options,
    load_input,
    make_context,
    param_options,
    params_from,
    resume_options,
    run_stage,
    stdout_console,
    with_options,
)

EXAMPLE = "dnncompress joint base.pt --target-ratio 60 -o joint.pt"
FIELDS = ["target_ratio", "target_bytes", "prune_epochs", "qat_epochs", "lr", "codebook", "entropy", "seed", "retries", "rounds", "recover_epochs"]
HELP = {"retries": "when the packed file misses the target: tighten by the excess and train again, this many times",
        "target_ratio": "fp32 safetensors bytes / packed bytes", "target_bytes": "a packed size in bytes instead of a ratio",
        "codebook": "codebook QAT mode", "entropy": "how the result will be packed (for its measured size)",
        "rounds": "re-run the allocation between fine-tuning rounds: each scans the model as the last round left it",
        "recover_epochs": "with --channels/--neurons: fine-tuning of each structured cut before it is scanned"}


@click.command("joint", help=help_text("Choose per-layer sparsity and bit-width under a size target, then prune and QAT them in (seed 002).", EXAMPLE))
@click.argument("checkpoint", required=False)
@with_options(param_options(JointParams, FIELDS, HELP))
@click.option("--channels", default=None, help="structured candidates: fractions of every Conv's filters to remove, e.g. 0.5,0.7 "
                                               "(searched with the per-layer sparsity and bits; 0 is always a candidate)")
@click.option("--neurons", default=None, help="structured candidates: fractions of every hidden Linear's neurons to remove")
@with_options(data_options + input_options)
@click.option("-o", "--output", default=None, type=click.Path())
@with_options(resume_options)
@click.option("--json", "json_out", is_flag=True)
def joint(checkpoint, channels, neurons, data, data_dir, device, arch, trust, output, resume, snapshot_every, json_out, **fields):
    extra = {k: v for k, v in (("channels", fractions(channels, "channels")), ("neurons", fractions(neurons, "neurons"))) if v is not None}
    params = params_from(JointParams, FIELDS, fields, **extra)
    path, ckpt = load_input(checkpoint, arch, trust)
    with ProgressBar("joint") as bar:
        ctx = make_context(data, data_dir, device, params.seed, bar, resume, snapshot_every)
        out, _, result = run_stage("joint", params, path, ckpt, output, ctx, json_out)
    if not json_out:
        print_joint(result, out)  # (a MISSED target is also said on stderr, by the stage's log)


def print_joint(result: dict, out) -> None:
    """The per-layer choice and whether the packed file kept the target (MISSED in the title when it did not)."""
    from rich.table import Table

    verdict = "met" if result["target_met"] else "MISSED"
    t = Table(title=f"joint → {out}: packed {result['packed_bytes']:,} bytes ({result['ratio']:.1f}×), target "
                    f"{result['target_bytes']:,}: {verdict}; chosen on {result['chosen_on']}")
    for c in ("layer", "params", "sparsity", "bits", "scan drop (pt)", "est. bytes"):
        t.add_column(c, justify="left" if c == "layer" else "right")
    for r in result["layers"]:
        t.add_row(r["layer"], f"{r['params']:,}", f"{100 * r['sparsity']:.0f}%", str(r["bits"]), f"{r['scan_drop']:+.2f}", f"{r['est_bytes']:,}")
    stdout_console().print(t)
