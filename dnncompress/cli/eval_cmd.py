"""`dnncompress eval`."""
from __future__ import annotations

import json

import click

from .common import data_options, help_text, input_options, load_input, make_context, print_layers, with_options

EXAMPLE = "dnncompress eval base.pt --json"


@click.command("eval", help=help_text("Evaluate a checkpoint or packed .dnc on its test set.", EXAMPLE))
@click.argument("checkpoint", required=False)
@with_options(data_options + input_options)
@click.option("--json", "json_out", is_flag=True, help="print one JSON object on stdout")
def eval_cmd(checkpoint, data, data_dir, device, arch, trust, json_out):
    from ..surgery import model_from_checkpoint
    from ..train import evaluate

    path, ckpt = load_input(checkpoint, arch, trust)
    ctx = make_context(data, data_dir, device)
    bundle = ctx.data_for(ckpt)
    model = model_from_checkpoint(ckpt)
    metrics = evaluate(model, bundle.test, device=device)
    from ..quantize_model import quantization_summary

    layers = quantization_summary(model)
    out = {"checkpoint": str(path), "arch": ckpt["arch"], "dataset": bundle.name, **metrics,
           "quantized_layers": len(layers), "masked_layers": len(ckpt.get("masks", {})), "layers": layers}
    if json_out:
        click.echo(json.dumps(out))
    else:
        if layers:
            print_layers(layers, f"{path}: quantized layers")
        click.echo(f"{path}: {ckpt['arch']} on {bundle.name} ({metrics['n']} test images) — accuracy {metrics['accuracy']:.2f}%, loss {metrics['loss']:.4f}")
