"""`dnncompress prune`."""
from __future__ import annotations

import click

from ..errors import UserError
from ..stages.prune import PruneParams
from .common import (
    ProgressBar,
    data_options,
    help_text,
    input_options,
    load_input,
    make_context,
    param_options,
    params_from,
    resolve_input,
    run_stage,
    stdout_console,
    with_options,
)

EXAMPLE = "dnncompress prune base.pt --sparsity auto --max-drop 0.5 --plot sens.png -o pruned.pt"
FIELDS = ["scope", "max_drop", "plot", "structured", "flops", "importance", "recover_epochs"]
HELP = {"max_drop": "auto: accuracy budget in points (before fine-tuning)", "plot": "auto: write the sensitivity curves as PNG",
        "structured": "remove whole Conv filters (channel) or Linear neurons (neuron): the model shrinks",
        "flops": "structured: the fraction of FLOPs to remove (instead of --sparsity's fraction of units)",
        "importance": "structured: score units by L1 / L2 norm or taylor (gradient × weight on training batches)",
        "recover_epochs": "structured auto: fine-tune each candidate this many epochs before measuring its validation drop"}


def print_structured(result: dict, out) -> None:
    from rich.table import Table

    auto = result.get("auto")
    t = Table(title=f"prune --structured {result['structured']} → {out}: FLOPs {result['flops_before']:,} → {result['flops_after']:,} "
                    f"(−{100 * result['flops_removed']:.1f} %), parameters {result['params_before']:,} → {result['params_after']:,}"
                    + (f" (auto: measured drop {auto['measured_drop']:.2f} pt ≤ {auto['max_drop']} pt on validation)" if auto else ""))
    for c in ("module", "now", "was"):
        t.add_column(c, justify="left" if c == "module" else "right")
    for r in result["layers"]:
        was = result["removed"].get(r["layer"], {})
        t.add_row(r["layer"], ", ".join(f"{k}={v}" for k, v in r["sizes"].items() if k in was), ", ".join(f"{k}={v}" for k, v in was.items()))
    stdout_console().print(t)


def print_prune(result: dict, out) -> None:
    from rich.table import Table

    if result.get("structured"):
        return print_structured(result, out)
    auto = result.get("auto")
    t = Table(title=f"prune → {out}" + (f" (auto: measured drop {auto['measured_drop']:.2f} pt ≤ {auto['max_drop']} pt before fine-tuning)" if auto else ""))
    for c in ("layer", "params", "kept", "sparsity"):
        t.add_column(c, justify="left" if c == "layer" else "right")
    for r in result["layers"]:
        t.add_row(r["layer"], f"{r['params']:,}", f"{r['kept']:,}", f"{100 * r['sparsity']:.1f}%")
    total = sum(r["params"] for r in result["layers"])
    t.add_row("total", f"{total:,}", f"{sum(r['kept'] for r in result['layers']):,}", f"{100 * result['overall_sparsity']:.1f}%", style="bold")
    stdout_console().print(t)


@click.command("prune", help=help_text("Magnitude-prune Conv and Linear weights: a fixed sparsity, or 'auto' from a sensitivity scan; "
                                       "--structured removes whole filters or neurons.", EXAMPLE))
@click.argument("checkpoint", required=False)
@click.option("--sparsity", default="0.9", show_default=True, help="fraction of weights to remove, in [0, 1), or 'auto'")
@with_options(param_options(PruneParams, FIELDS, HELP))
@click.option("--exclude", multiple=True, help="fnmatch pattern of layers to leave dense (repeatable)")
@click.option("--override", "overrides", multiple=True, help="per-layer sparsity, PATTERN=VALUE (e.g. conv1=0.5)")
@click.option("--block", default=1, show_default=True, type=int, help="prune runs of this many contiguous weights of a row together (match pq's d)")
@with_options(data_options + input_options)
@click.option("-o", "--output", default=None, type=click.Path())
@click.option("--json", "json_out", is_flag=True)
def prune(checkpoint, sparsity, exclude, overrides, block, data, data_dir, device, arch, trust, output, json_out, **fields):
    parsed = {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--override '{item}' must look like PATTERN=SPARSITY, e.g. conv1=0.5")
        pattern, value = item.split("=", 1)
        try:
            parsed[pattern] = float(value)
        except ValueError:
            raise UserError(f"--override '{item}': '{value}' is not a number") from None
    params = params_from(PruneParams, FIELDS, fields, sparsity=sparsity, exclude=list(exclude), overrides=parsed, block=block)
    plot = params.plot
    path = resolve_input(checkpoint)
    if plot:
        from ..fileio import refuse_input

        refuse_input(plot, [path, output], "--plot")
    path, ckpt = load_input(str(path), arch, trust)
    with ProgressBar("sensitivity scan", enabled=params.sparsity == "auto") as bar:
        out, _, result = run_stage("prune", params, path, ckpt, output, make_context(data, data_dir, device, progress=bar), json_out)
    if not json_out:
        print_prune(result, out)
    if result.get("warning"):
        click.echo(f"warning: {result['warning']}", err=True)
