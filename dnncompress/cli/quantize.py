"""`dnncompress quantize`."""
from __future__ import annotations

import click

from ..errors import UserError
from ..stages.quantize import QuantizeParams
from .common import (
    data_options,
    help_text,
    input_options,
    key_values,
    load_input,
    make_context,
    param_options,
    params_from,
    print_layers,
    run_stage,
    with_options,
)

EXAMPLE = "dnncompress quantize tuned.pt --scheme fourval --exclude conv1 -o q.pt"
FIELDS = ["scheme", "bits", "codebook", "zero", "init", "rule", "per_channel", "group_size", "rotate", "refit", "calibrate", "target_bits", "tune_epochs"]
HELP = {"scheme": "fourval, ternary, asym-ternary, asym-quaternary, codebook, pq (see 'dnncompress list')",
        "bits": "bits per code (codebook: 2–8; pq: 1–8, 2^bits centroids; the others are 2-bit)",
        "codebook": "codebook: SQC (static) or DQC (dynamic)", "zero": "codebook: keep an exact zero value",
        "init": "codebook initialisation", "rule": "ternary: TWN threshold rule or exact L2 fit",
        "per_channel": "one scale per output channel (fourval, ternary, asym; codebook: a shared table × a scale per row)", "refit": "scale re-fit per QAT step",
        "group_size": "one scale per run of N weights of a row, e.g. 64 (fourval, ternary, asym, codebook; the scales are counted in the file)",
        "rotate": "quantize each row in a randomized Hadamard frame (outlier columns spread out; costs no bytes; unpruned layers only)",
        "calibrate": "calibrated PTQ on N validation samples: each layer minimizes its output error (GPTQ-style) with the scheme's levels",
        "target_bits": "mixed precision (codebook, pq): each layer's bits chosen so the layers average at most this many bits per "
                       "weight, least harm to the output on the --calibrate samples first",
        "tune_epochs": "after calibration, with every code fixed, train per-row scales (folded into the tables), biases and "
                       "norms for N epochs to match the unquantized model's outputs on the --calibrate samples (no bytes added)"}


def _parse_overrides(items) -> dict:
    """--override 'conv1:bits=8' (repeatable) → {'conv1': {'bits': 8}}."""
    out: dict = {}
    for item in items:
        if ":" not in item or "=" not in item.split(":", 1)[1]:
            raise UserError(f"--override '{item}' must look like PATTERN:key=value, e.g. conv1:bits=8")
        pattern, kv = item.split(":", 1)
        out.setdefault(pattern, {}).update(key_values([kv], "--override", "conv1:bits=8"))
    return out


@click.command("quantize", help=help_text("Quantize every Conv/Linear weight (post-training); fine-tune afterwards for QAT.", EXAMPLE))
@click.argument("checkpoint", required=False)
@with_options(param_options(QuantizeParams, FIELDS, HELP))
@click.option("--exclude", multiple=True, help="fnmatch pattern of layer names to leave in fp32 (repeatable)")
@click.option("--override", "overrides", multiple=True, help="per-layer option, PATTERN:key=value (e.g. conv1:bits=8)")
@click.option("--opt", "scheme_options", multiple=True, help="a scheme's own option, key=value (e.g. pq: d=8, table=fp32)")
@with_options(data_options + input_options)
@click.option("-o", "--output", default=None, type=click.Path())
@click.option("--json", "json_out", is_flag=True)
def quantize(checkpoint, exclude, overrides, scheme_options, data, data_dir, device, arch, trust, output, json_out, **fields):
    params = params_from(QuantizeParams, FIELDS, fields, exclude=list(exclude), overrides=_parse_overrides(overrides),
                         options=key_values(scheme_options, "--opt", "d=8"))
    scheme = params.scheme
    path, ckpt = load_input(checkpoint, arch, trust)
    out, _, result = run_stage("quantize", params, path, ckpt, output, make_context(data, data_dir, device), json_out)
    if not json_out:
        print_layers(result["layers"], f"{scheme} → {out}")
