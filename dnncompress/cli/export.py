"""`dnncompress export`."""
from __future__ import annotations

import json

import click

from ..errors import UserError
from .common import help_text, input_options, load_input, with_options

EXAMPLE = "dnncompress export model.dnc -o model.onnx --keep-quantized"


def _shape(value: str | None):
    if value is None:
        return None
    try:
        dims = tuple(int(v) for v in value.split(","))
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise UserError(f"--input-shape {value!r}: give one input's positive sizes without the batch, e.g. 1,28,28")
    return dims


@click.command("export", help=help_text(
    "Export a compressed checkpoint or .dnc to ONNX (smaller shapes after structured pruning; weights dequantized, "
    "or with --keep-quantized as packed codes and a table gathered in the graph), checked with onnxruntime.", EXAMPLE))
@click.argument("source", required=False)
@click.option("-o", "--output", default=None, type=click.Path(), help="output .onnx [default: beside the input]")
@click.option("--keep-quantized", is_flag=True, help="store quantized weights as 1/2/4/8-bit codes + table (a small file)")
@click.option("--input-shape", default=None, help="one input's sizes without the batch, e.g. 3,32,32 [default: from the checkpoint]")
@click.option("--opset", default=18, show_default=True, type=int, help="ONNX opset (18 or newer)")
@with_options(input_options)
@click.option("--json", "json_out", is_flag=True)
def export(source, output, keep_quantized, input_shape, opset, arch, trust, json_out):
    from ..fileio import output_path
    from ..onnx_export import export_onnx
    from ..runstate import record_output

    shape = _shape(input_shape)
    path, ckpt = load_input(source, arch, trust)
    out = output_path(path, output, "quantized" if keep_quantized else "dense", ".onnx")
    if out.suffix.lower() != ".onnx":
        raise UserError(f"-o {out}: name a .onnx file")
    info = export_onnx(ckpt, out, keep_quantized=keep_quantized, input_shape=shape, opset=opset)
    record_output(out, "export")
    info["source"], info["source_bytes"] = str(path), path.stat().st_size
    if json_out:
        click.echo(json.dumps(info))
        return
    kept = [row for row in info["layers"] if row["stored"] == "codes"]
    check = ("onnxruntime not installed: not checked" if info["max_abs_diff"] is None
             else f"onnxruntime matches PyTorch to {info['max_abs_diff']:.1e}")
    click.echo(f"export: wrote {out}, {info['bytes']:,} bytes ({path.name}: {info['source_bytes']:,} bytes); {check}")
    if keep_quantized:
        click.echo(f"  {len(kept)} of {len(info['layers'])} quantized layers stored as codes")
        for row in info["layers"]:
            if row["stored"] != "codes":
                click.echo(f"  {row['layer']}: fp32 ({row['reason']})")
