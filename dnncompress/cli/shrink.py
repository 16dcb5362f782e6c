"""`dnncompress shrink`."""
from __future__ import annotations

import click

from ..stages.shrink import ShrinkParams
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
    run_stage,
    stdout_console,
    with_options,
)

EXAMPLE = "dnncompress shrink base.pt --target-ratio 400 --scheme ternary -o small.pt"
FIELDS = ["target_ratio", "target_bytes", "scheme", "entropy", "fp16", "recover_epochs", "lr", "margin", "importance", "seed"]
HELP = {"target_ratio": "fp32 safetensors bytes / packed bytes", "target_bytes": "a packed size in bytes instead of a ratio",
        "scheme": "the scheme the file will store (each candidate is quantized with it and packed to measure its size)",
        "entropy": "how the result will be packed", "fp16": "biases will be packed as fp16 (pack --fp16)",
        "recover_epochs": "fine-tuning of each candidate before its validation accuracy is measured",
        "margin": "candidates must fit (1 − margin) × the target (QAT moves the codes' entropy)"}


def print_shrink(result: dict, out) -> None:
    from rich.table import Table

    t = Table(title=f"shrink → {out}: target {result['target_bytes']:,} bytes ({result['scheme']}, {result['entropy']}); "
                    f"chosen on {result['chosen_on']}")
    for c in ("filters removed", "neurons removed", "params", "packed bytes", "val accuracy %", "fits", "chosen"):
        t.add_column(c, justify="right")
    for r in result["trials"]:
        t.add_row(f"{r['channels_removed']:.0%}", f"{r['neurons_removed']:.0%}", f"{r['params']:,}", f"{r['packed_bytes']:,}",
                  f"{r['val_accuracy']:.2f}", "yes" if r["fits"] else "no", "◀" if r["chosen"] else "", style="bold" if r["chosen"] else None)
    stdout_console().print(t)


@click.command("shrink", help=help_text("Remove whole filters and neurons, chosen on validation, until the packed file fits a byte "
                                        "target; then fine-tune, quantize with the same scheme and pack.", EXAMPLE))
@click.argument("checkpoint", required=False)
@with_options(param_options(ShrinkParams, FIELDS, HELP))
@click.option("--channels", default=None, help="fractions of every Conv's filters to try removing, comma-separated [default: 0.5,0.6,0.7,0.8]")
@click.option("--neurons", default=None, help="fractions of every hidden Linear's neurons to try removing [default: 0.8,0.85,0.9,0.93,0.95]")
@with_options(data_options + input_options)
@click.option("-o", "--output", default=None, type=click.Path())
@click.option("--json", "json_out", is_flag=True)
def shrink(checkpoint, channels, neurons, data, data_dir, device, arch, trust, output, json_out, **fields):
    extra = {k: v for k, v in (("channels", fractions(channels, "channels")), ("neurons", fractions(neurons, "neurons"))) if v is not None}
    params = params_from(ShrinkParams, FIELDS, fields, **extra)
    path, ckpt = load_input(checkpoint, arch, trust)
    with ProgressBar("shrink") as bar:
        out, _, result = run_stage("shrink", params, path, ckpt, output, make_context(data, data_dir, device, params.seed, bar), json_out)
    if not json_out:
        print_shrink(result, out)
    if result.get("status"):
        click.echo(f"warning: {result['status']}", err=True)
