"""`dnncompress report`."""
from __future__ import annotations

import json

import click

from .common import help_text, input_options, jsonable, load_input, resolve_input, stdout_console, with_options

EXAMPLE = "dnncompress report model.dnc --plot sizes.png --html report.html --history q.pt"


def print_report(rep: dict) -> None:
    from rich.table import Table

    t = Table(title=f"{rep['file']} — {rep.get('arch')}")
    cols = ["layer", "params", "nonzeros", "scheme", "bits", "codes", "index", "tables", "fp", "bytes", "share", "bits/w"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("layer", "scheme") else "right")
    for r in rep["layers"]:
        t.add_row(r["layer"], f"{r['params']:,}", f"{r['nonzeros']:,}", r["scheme"], str(r["bits"]), f"{r['codes']:,}",
                  f"{r['index']:,}", f"{r['tables']:,}", f"{r['fp']:,}", f"{r['bytes']:,}", f"{100 * r['share']:.1f}%",
                  f"{r['bits_per_weight']:.2f}")
    t.add_row("(container)", "", "", "", "", "", "", "", "", f"{rep['container_bytes']:,}",
              f"{100 * rep['container_bytes'] / rep['packed_bytes']:.1f}%", "")
    t.add_row("total", f"{rep['params']:,}", f"{rep['nonzeros']:,}", "", "", "", "", "", "", f"{rep['packed_bytes']:,}", "100%",
              f"{rep['bits_per_weight']:.2f}", style="bold")
    console = stdout_console()
    console.print(t)
    console.print(f"fp32 safetensors {rep['fp32_bytes']:,} bytes → packed {rep['packed_bytes']:,} bytes: "
                  f"[bold]{rep['ratio']:.1f}× smaller[/bold] ({rep['percent_of_fp32']:.2f} % of fp32)")


@click.command("report", help=help_text("Per-layer table of where every byte goes, with the ratio from actual file sizes.", EXAMPLE))
@click.argument("target", required=False)
@click.option("--entropy", type=click.Choice(["none", "huffman", "ans"]), default="none", show_default=True,
              help="for a checkpoint: the entropy coder to pack it with")
@click.option("--plot", type=click.Path(), default=None, help="write a PNG of per-layer bytes and bits per weight")
@click.option("--html", "html_path", type=click.Path(), default=None,
              help="write one self-contained HTML page: per-layer table and bytes, bits/weight, sparsity, history, sensitivity")
@click.option("--history", "history_from", type=click.Path(), default=None,
              help="for a .dnc: the checkpoint it was packed from, whose stage history the HTML page shows")
@with_options(input_options)
@click.option("--json", "json_out", is_flag=True)
def report(target, entropy, plot, html_path, history_from, arch, trust, json_out):
    from ..errors import UserError
    from ..fileio import check_plot_path, refuse_input
    from ..filekind import sniff
    from ..report import plot_report, report_checkpoint, report_packed

    path = resolve_input(target)
    if plot:
        refuse_input(plot, [path, history_from], "--plot")
        check_plot_path(plot)
    if html_path:
        refuse_input(html_path, [path, history_from], "--html")
        if not html_path.lower().endswith((".html", ".htm")):
            raise UserError(f"--html {html_path}: name a .html file")
    if history_from and (str(history_from).endswith(".dnc") or sniff(history_from) == "packed"):
        raise UserError(f"--history {history_from} is a packed .dnc, which keeps no stage history; "
                        "--history takes the checkpoint it was packed from (.pt)")
    history, source = None, None
    if path.suffix == ".dnc" or sniff(path) == "packed":
        rep = report_packed(path, arch=arch, trust=trust)
    else:
        _, ckpt = load_input(str(path), arch, trust)
        rep = report_checkpoint(ckpt, entropy)
        history, source = ckpt.get("history"), str(path)
    if history_from:
        _, hist_ckpt = load_input(str(history_from), arch, trust)
        history, source = hist_ckpt.get("history"), str(history_from)
    if plot:
        plot_report(rep, plot)
    if html_path:
        from ..fileio import atomic_write_bytes
        from ..report_html import render_html

        atomic_write_bytes(html_path, render_html(rep, history, source).encode())
    if json_out:
        click.echo(json.dumps(jsonable(rep)))
    else:
        print_report(rep)
        if html_path:
            stdout_console().print(f"wrote {html_path}")
