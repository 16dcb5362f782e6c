"""The click command line: parse, call the library, print. No compression logic lives here."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .errors import UserError

EXAMPLES = {
    "train": "dnncompress train lenet5 --data mnist --epochs 3 -o base.pt",
    "eval": "dnncompress eval base.pt --json",
    "finetune": "dnncompress finetune base.ft.pt --epochs 2 -o tuned.pt",
    "run": "dnncompress run configs/demo.yaml stages.2.finetune.epochs=1",
    "validate": "dnncompress validate configs/demo.yaml",
    "list": "dnncompress list",
    "quantize": "dnncompress quantize base.pt --scheme fourval --exclude conv1 -o q.pt",
    "pack": "dnncompress pack qat.pt -o model.dnc --entropy huffman",
    "prune": "dnncompress prune base.pt --sparsity auto --max-drop 0.5 --plot sens.png -o pruned.pt",
    "unpack": "dnncompress unpack model.dnc -o restored.pt",
    "report": "dnncompress report model.dnc --plot sizes.png",
    "joint": "dnncompress joint base.pt --target-ratio 60 -o joint.pt",
}


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _stdout_console():
    """Rich console for results; wide when piped so tables are not squeezed to 80 columns."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


MAX_MESSAGE = 500


def _fail(message: str, code: int) -> None:
    if len(message) > MAX_MESSAGE:  # a hostile file can make any quoted value long
        message = message[: MAX_MESSAGE - 1] + "…"
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class Group(click.Group):
    """Maps library errors to one-line messages: bad input → exit 2, anything else → exit 1."""

    def main(self, *args, **kwargs):
        """Click's own usage errors become one line too (`error: ...`, exit 2)."""
        kwargs.setdefault("standalone_mode", True)
        if not kwargs["standalone_mode"]:
            return super().main(*args, **kwargs)
        try:
            return super().main(*args, **{**kwargs, "standalone_mode": False})
        except click.exceptions.Abort:
            _fail("aborted", 1)
        except click.ClickException as e:
            hint = f" (see '{e.ctx.command_path} --help')" if getattr(e, "ctx", None) is not None else ""
            _fail(e.format_message().splitlines()[0] + hint, e.exit_code if e.exit_code else 2)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            _fail(str(e).splitlines()[0] if str(e) else "bad input", 2)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except Exception as e:  # last line of defence: no traceback for users
            if os.environ.get("DNNCOMPRESS_DEBUG"):
                raise
            _fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (set DNNCOMPRESS_DEBUG=1 for a traceback)", 1)


def _help(name: str, text: str) -> str:
    return f"{text}\n\n\b\nExample:\n  {EXAMPLES[name]}"


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="dnncompress")
def main():
    """dnncompress: prune, quantize, fine-tune and pack PyTorch models into files as small as reported."""


# ---------------------------------------------------------------- shared helpers


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def resolve_input(path: str | None, suffixes=(".pt", ".dnc")) -> Path:
    """The given checkpoint, or the newest output recorded in this directory (said on stderr)."""
    from .runstate import latest_output

    if path:
        return Path(path)
    found = latest_output(want_suffix=suffixes)
    click.echo(f"using {found} (newest output in this directory)", err=True)
    return found


def load_input(path: str | None, arch=None, trust=False):
    from .checkpoint import load_checkpoint

    p = resolve_input(path)
    if p.suffix == ".dnc":
        from .pack import checkpoint_from_packed

        return p, checkpoint_from_packed(p, arch=arch, trust=trust)
    return p, load_checkpoint(p, arch=arch, trust=trust)


class ProgressBar:
    """Rich progress on stderr, fed by the library's progress events."""

    def __init__(self, description: str, enabled: bool = True):
        self.description, self.enabled = description, enabled and _rank() == 0
        self.progress = self.task = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=_stderr_console(), transient=False,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress:
            self.progress.__exit__(*exc)

    def __call__(self, event: dict) -> None:
        if not self.progress:
            return
        kind = event.get("kind")
        if kind == "start":
            self.task = self.progress.add_task(self.description, total=event["total"], completed=event.get("done", 0), info="")
        elif kind == "step" and self.task is not None:
            info = f"epoch {event['epoch']} loss {event['loss']:.3f} acc {event['accuracy']:.1f}%"
            self.progress.update(self.task, advance=1, info=info)
        elif kind == "scan" and event.get("total"):
            if self.task is None:
                self.task = self.progress.add_task(self.description, total=event["total"], info="")
            self.progress.update(self.task, completed=event["done"], info=event.get("info", ""))


def make_context(data=None, data_dir=None, device="auto", seed=0, progress=None, resume=False, snapshot_every=200):
    from .stages import Context

    return Context(data_name=data, data_dir=data_dir, device=device, seed=seed, progress=progress,
                   log=lambda m: click.echo(m, err=True), resume=resume, snapshot_every=snapshot_every)


def run_stage(name, params, input_path, ckpt, output, ctx, json_out=False):
    from .fileio import output_path
    from .stages import STAGES, execute

    stage = STAGES.get(name)
    out = output_path(input_path, output, stage.suffix, stage.ext)
    ckpt, result = execute(name, params, ckpt, out, ctx, main_process=_rank() == 0)
    if _rank() == 0:
        if json_out:
            click.echo(json.dumps({"output": str(out), **_jsonable(result)}))
        else:
            _print_result(name, out, result)
    return out, ckpt, result


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return obj.item()
        except (ValueError, RuntimeError):
            return str(obj)
    return obj


def _print_result(name, out, result):
    acc = result.get("accuracy")
    extra = f" — test accuracy {acc:.2f}%" if isinstance(acc, (int, float)) else ""
    click.echo(f"{name}: wrote {out}{extra}")


data_options = [
    click.option("--data", "data", default=None, help="dataset: mnist, cifar10, cifar100, digits, synthetic (default: the checkpoint's)"),
    click.option("--data-dir", default=None, type=click.Path(), help="folder with the dataset files (MNIST IDX, CIFAR python batches)"),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 …"),
]
resume_options = [
    click.option("--resume", is_flag=True, help="continue a killed run from its last snapshot (same command, same output)"),
    click.option("--snapshot-every", default=200, show_default=True, type=click.IntRange(0, None),
                 help="optimizer steps between resumable snapshots (plus one per epoch); 0 = none"),
]
input_options = [
    click.option("--arch", default=None, help="architecture to build (needed for a bare state_dict; a package.module:factory "
                 "recorded in a file is only imported when you name it here)"),
    click.option("--trust", is_flag=True, help="allow what can run code: a pickled full model, or a module:factory recorded "
                 "in a file (only for files you trust)"),
]


def with_options(options):
    def deco(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return deco


# ---------------------------------------------------------------- commands


@main.command(help=_help("train", "Train ARCH from scratch and write a checkpoint."))
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
    from .models import build_model
    from .stages.training import TrainParams

    build_model(arch) if ":" not in arch else None  # unknown names fail before any data loads
    params = TrainParams(arch=arch, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, schedule=schedule, seed=seed)
    with ProgressBar(f"train {arch}") as bar:
        ctx = make_context(data or "mnist", data_dir, device, seed, bar, resume, snapshot_every)
        run_stage("train", params, None, None, output or f"{arch.replace(':', '_')}.base.pt", ctx, json_out)


@main.command("eval", help=_help("eval", "Evaluate a checkpoint or packed .dnc on its test set."))
@click.argument("checkpoint", required=False)
@with_options(data_options + input_options)
@click.option("--json", "json_out", is_flag=True, help="print one JSON object on stdout")
def eval_cmd(checkpoint, data, data_dir, device, arch, trust, json_out):
    from .surgery import model_from_checkpoint
    from .train import evaluate

    path, ckpt = load_input(checkpoint, arch, trust)
    ctx = make_context(data, data_dir, device)
    bundle = ctx.data_for(ckpt)
    model = model_from_checkpoint(ckpt)
    metrics = evaluate(model, bundle.test, device=device)
    from .quantize_model import quantization_summary

    layers = quantization_summary(model)
    out = {"checkpoint": str(path), "arch": ckpt["arch"], "dataset": bundle.name, **metrics,
           "quantized_layers": len(layers), "masked_layers": len(ckpt.get("masks", {})), "layers": layers}
    if json_out:
        click.echo(json.dumps(out))
    else:
        if layers:
            print_layers(layers, f"{path}: quantized layers")
        click.echo(f"{path}: {ckpt['arch']} on {bundle.name} ({metrics['n']} test images) — accuracy {metrics['accuracy']:.2f}%, loss {metrics['loss']:.4f}")


@main.command(help=_help("finetune", "Fine-tune a checkpoint; pruned weights stay zero, quantized layers train with QAT."))
@click.argument("checkpoint", required=False)
@with_options(data_options + input_options)
@click.option("--epochs", default=2, show_default=True, type=int)
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--l1", default=0.0, show_default=True, type=float, help="L1 penalty on compressed weights")
@click.option("--l2", default=0.0, show_default=True, type=float, help="L2 penalty on compressed weights")
@click.option("--agp", "agp_final", default=None, type=float, help="gradually prune to this sparsity while fine-tuning (AGP)")
@click.option("--agp-end", default=0.75, show_default=True, type=float, help="fraction of training where AGP reaches its target")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-o", "--output", default=None, type=click.Path())
@with_options(resume_options)
@click.option("--json", "json_out", is_flag=True)
def finetune(checkpoint, data, data_dir, device, arch, trust, epochs, lr, batch_size, l1, l2, agp_final, agp_end, seed, output, resume,
             snapshot_every, json_out):
    from .stages.training import AGPParams, FinetuneParams

    agp = AGPParams(final=agp_final, end=agp_end) if agp_final is not None else None
    params = FinetuneParams(epochs=epochs, lr=lr, batch_size=batch_size, l1=l1, l2=l2, agp=agp, seed=seed)
    path, ckpt = load_input(checkpoint, arch, trust)
    with ProgressBar("finetune") as bar:
        run_stage("finetune", params, path, ckpt, output, make_context(data, data_dir, device, seed, bar, resume, snapshot_every), json_out)


def print_layers(rows: list[dict], title: str) -> None:
    """A rich table of per-layer quantization results (stdout: it is the command's result)."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("layer", "scheme", "bits", "params", "nonzeros", "distinct", "rel. L2 error"):
        table.add_column(col, justify="left" if col in ("layer", "scheme") else "right")
    for r in rows:
        table.add_row(r["layer"], r["scheme"], str(r["bits"]), f"{r['params']:,}", f"{r['nonzeros']:,}",
                      str(r["distinct_values"]), f"{r['rel_error']:.4f}")
    _stdout_console().print(table)


def _parse_overrides(items) -> dict:
    """--override 'conv1:bits=8' (repeatable) → {'conv1': {'bits': 8}}."""
    import yaml

    out: dict = {}
    for item in items:
        if ":" not in item or "=" not in item.split(":", 1)[1]:
            raise UserError(f"--override '{item}' must look like PATTERN:key=value, e.g. conv1:bits=8")
        pattern, kv = item.split(":", 1)
        key, value = kv.split("=", 1)
        out.setdefault(pattern, {})[key] = yaml.safe_load(value)
    return out


@main.command(help=_help("quantize", "Quantize every Conv/Linear weight (post-training); fine-tune afterwards for QAT."))
@click.argument("checkpoint", required=False)
@click.option("--scheme", required=True, help="fourval, ternary, asym-ternary, asym-quaternary, codebook")
@click.option("--bits", type=int, default=None, help="bits per weight (codebook: 2–8; the others are 2-bit)")
@click.option("--codebook", "mode", type=click.Choice(["static", "dynamic"]), default=None, help="codebook: SQC (static) or DQC (dynamic)")
@click.option("--zero/--no-zero", default=None, help="codebook: keep an exact zero value")
@click.option("--init", type=click.Choice(["kmeans", "linear", "pow2"]), default=None, help="codebook initialisation")
@click.option("--rule", type=click.Choice(["twn", "exact"]), default=None, help="ternary: TWN threshold rule or exact L2 fit")
@click.option("--per-channel", is_flag=True, help="one scale per output channel (fourval, ternary, asym)")
@click.option("--refit", type=click.Choice(["fast", "exact", "none"]), default="fast", show_default=True, help="scale re-fit per QAT step")
@click.option("--exclude", multiple=True, help="fnmatch pattern of layer names to leave in fp32 (repeatable)")
@click.option("--override", "overrides", multiple=True, help="per-layer option, PATTERN:key=value (e.g. conv1:bits=8)")
@with_options(data_options + input_options)
@click.option("-o", "--output", default=None, type=click.Path())
@click.option("--json", "json_out", is_flag=True)
def quantize(checkpoint, scheme, bits, mode, zero, init, rule, per_channel, refit, exclude, overrides, data, data_dir, device, arch, trust, output, json_out):
    from .stages.quantize import QuantizeParams

    params = QuantizeParams(scheme=scheme, bits=bits, per_channel=per_channel, rule=rule, codebook=mode, zero=zero, init=init,
                            refit=refit, exclude=list(exclude), overrides=_parse_overrides(overrides))
    path, ckpt = load_input(checkpoint, arch, trust)
    out, _, result = run_stage("quantize", params, path, ckpt, output, make_context(data, data_dir, device), json_out)
    if not json_out:
        print_layers(result["layers"], f"{scheme} → {out}")


@main.command(help=_help("joint", "Choose per-layer sparsity and bit-width under a size target, then prune and QAT them in (seed 002)."))
@click.argument("checkpoint", required=False)
@click.option("--target-ratio", default=60.0, show_default=True, type=float, help="fp32 safetensors bytes / packed bytes")
@click.option("--target-bytes", default=None, type=int, help="a packed size in bytes instead of a ratio")
@click.option("--prune-epochs", default=3, show_default=True, type=int)
@click.option("--qat-epochs", default=2, show_default=True, type=int)
@click.option("--entropy", type=click.Choice(["none", "huffman"]), default="huffman", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@with_options(data_options + input_options)
@click.option("-o", "--output", default=None, type=click.Path())
@with_options(resume_options)
@click.option("--json", "json_out", is_flag=True)
def joint(checkpoint, target_ratio, target_bytes, prune_epochs, qat_epochs, entropy, seed, data, data_dir, device, arch, trust, output,
          resume, snapshot_every, json_out):
    from .stages.joint import JointParams

    params = JointParams(target_ratio=target_ratio, target_bytes=target_bytes, prune_epochs=prune_epochs, qat_epochs=qat_epochs,
                         entropy=entropy, seed=seed)
    path, ckpt = load_input(checkpoint, arch, trust)
    with ProgressBar("joint") as bar:
        run_stage("joint", params, path, ckpt, output, make_context(data, data_dir, device, seed, bar, resume, snapshot_every), json_out)


def print_prune(result: dict, out) -> None:
    from rich.table import Table

    auto = result.get("auto")
    t = Table(title=f"prune → {out}" + (f" (auto: measured drop {auto['measured_drop']:.2f} pt ≤ {auto['max_drop']} pt before fine-tuning)" if auto else ""))
    for c in ("layer", "params", "kept", "sparsity"):
        t.add_column(c, justify="left" if c == "layer" else "right")
    for r in result["layers"]:
        t.add_row(r["layer"], f"{r['params']:,}", f"{r['kept']:,}", f"{100 * r['sparsity']:.1f}%")
    total = sum(r["params"] for r in result["layers"])
    t.add_row("total", f"{total:,}", f"{sum(r['kept'] for r in result['layers']):,}", f"{100 * result['overall_sparsity']:.1f}%", style="bold")
    _stdout_console().print(t)


@main.command(help=_help("prune", "Magnitude-prune Conv and Linear weights: a fixed sparsity, or 'auto' from a sensitivity scan."))
@click.argument("checkpoint", required=False)
@click.option("--sparsity", default="0.9", show_default=True, help="fraction of weights to remove, in [0, 1), or 'auto'")
@click.option("--scope", type=click.Choice(["layer", "global"]), default="layer", show_default=True)
@click.option("--max-drop", default=0.5, show_default=True, type=float, help="auto: accuracy budget in points (before fine-tuning)")
@click.option("--exclude", multiple=True, help="fnmatch pattern of layers to leave dense (repeatable)")
@click.option("--override", "overrides", multiple=True, help="per-layer sparsity, PATTERN=VALUE (e.g. conv1=0.5)")
@click.option("--plot", type=click.Path(), default=None, help="auto: write the sensitivity curves as PNG")
@with_options(data_options + input_options)
@click.option("-o", "--output", default=None, type=click.Path())
@click.option("--json", "json_out", is_flag=True)
def prune(checkpoint, sparsity, scope, max_drop, exclude, overrides, plot, data, data_dir, device, arch, trust, output, json_out):
    from .stages.prune import PruneParams

    parsed = {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--override '{item}' must look like PATTERN=SPARSITY, e.g. conv1=0.5")
        pattern, value = item.split("=", 1)
        try:
            parsed[pattern] = float(value)
        except ValueError:
            raise UserError(f"--override '{item}': '{value}' is not a number") from None
    params = PruneParams(sparsity=sparsity, scope=scope, max_drop=max_drop, exclude=list(exclude), overrides=parsed, plot=plot)
    path = resolve_input(checkpoint)
    if plot:
        from .fileio import refuse_input

        refuse_input(plot, [path, output], "--plot")
    path, ckpt = load_input(str(path), arch, trust)
    with ProgressBar("sensitivity scan", enabled=params.sparsity == "auto") as bar:
        out, _, result = run_stage("prune", params, path, ckpt, output, make_context(data, data_dir, device, progress=bar), json_out)
    if not json_out:
        print_prune(result, out)


@main.command(help=_help("pack", "Pack a checkpoint into a .dnc file (safetensors, no pickle) as small as reported."))
@click.argument("checkpoint", required=False)
@click.option("--entropy", type=click.Choice(["none", "huffman"]), default="none", show_default=True,
              help="entropy-code codes and index gaps (used per layer only where smaller)")
@click.option("--fp16", is_flag=True, help="store biases/BN and other leftovers as fp16 (smaller, not lossless)")
@with_options(input_options)
@click.option("-o", "--output", default=None, type=click.Path(), help="output .dnc [default: beside the input]")
@click.option("--json", "json_out", is_flag=True)
def pack(checkpoint, entropy, fp16, arch, trust, output, json_out):
    from .stages.pack import PackParams

    path, ckpt = load_input(checkpoint, arch, trust)
    if path.suffix == ".dnc":
        raise UserError(f"{path} is already packed; pass the checkpoint it came from")
    run_stage("pack", PackParams(output=output, entropy=entropy, fp16=fp16), path, ckpt, output,
              make_context(), json_out)


@main.command(help=_help("unpack", "Restore a checkpoint from a .dnc: weights bit-equal to what the quantized model evaluates with."))
@click.argument("packed", required=False)
@with_options(input_options)
@click.option("-o", "--output", default=None, type=click.Path())
@click.option("--json", "json_out", is_flag=True)
def unpack(packed, arch, trust, output, json_out):
    from .checkpoint import save_checkpoint
    from .fileio import output_path
    from .pack import checkpoint_from_packed
    from .runstate import record_output

    src = resolve_input(packed, (".dnc",))
    out = output_path(src, output, "unpacked", ".pt")
    ckpt = checkpoint_from_packed(src, arch=arch, trust=trust)
    save_checkpoint(ckpt, out)
    record_output(out, "unpack")
    info = {"output": str(out), "layers": len(ckpt["quant"]) + len(set(ckpt["masks"]) - set(ckpt["quant"])), "arch": ckpt["arch"]}
    click.echo(json.dumps(info) if json_out else f"unpack: wrote {out}")


def print_report(rep: dict) -> None:
    from rich.table import Table

    t = Table(title=f"{rep['file']} — {rep.get('arch')}")
    cols = ["layer", "params", "nonzeros", "scheme", "bits", "codes", "index", "codebook", "fp", "bytes", "share", "bits/w"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("layer", "scheme") else "right")
    for r in rep["layers"]:
        t.add_row(r["layer"], f"{r['params']:,}", f"{r['nonzeros']:,}", r["scheme"], str(r["bits"]), f"{r['codes']:,}",
                  f"{r['index']:,}", f"{r['codebook']:,}", f"{r['fp']:,}", f"{r['bytes']:,}", f"{100 * r['share']:.1f}%",
                  f"{r['bits_per_weight']:.2f}")
    t.add_row("(container)", "", "", "", "", "", "", "", "", f"{rep['container_bytes']:,}",
              f"{100 * rep['container_bytes'] / rep['packed_bytes']:.1f}%", "")
    t.add_row("total", f"{rep['params']:,}", f"{rep['nonzeros']:,}", "", "", "", "", "", "", f"{rep['packed_bytes']:,}", "100%",
              f"{rep['bits_per_weight']:.2f}", style="bold")
    console = _stdout_console()
    console.print(t)
    console.print(f"fp32 safetensors {rep['fp32_bytes']:,} bytes → packed {rep['packed_bytes']:,} bytes: "
                  f"[bold]{rep['ratio']:.1f}× smaller[/bold] ({rep['percent_of_fp32']:.2f} % of fp32)")


@main.command(help=_help("report", "Per-layer table of where every byte goes, with the ratio from actual file sizes."))
@click.argument("target", required=False)
@click.option("--entropy", type=click.Choice(["none", "huffman"]), default="none", show_default=True,
              help="for a checkpoint: the entropy coder to pack it with")
@click.option("--plot", type=click.Path(), default=None, help="write a PNG of per-layer bytes and bits per weight")
@with_options(input_options)
@click.option("--json", "json_out", is_flag=True)
def report(target, entropy, plot, arch, trust, json_out):
    from .report import plot_report, report_checkpoint, report_packed

    path = resolve_input(target)
    if plot:
        from .fileio import check_plot_path, refuse_input

        refuse_input(plot, [path], "--plot")
        check_plot_path(plot)
    if path.suffix == ".dnc":
        rep = report_packed(path, arch=arch, trust=trust)
    else:
        _, ckpt = load_input(str(path), arch, trust)
        rep = report_checkpoint(ckpt, entropy)
    if plot:
        plot_report(rep, plot)
    if json_out:
        click.echo(json.dumps(_jsonable(rep)))
    else:
        print_report(rep)


@main.command(help=_help("run", "Run a YAML config's stages in order; KEY=VALUE pairs override config keys."))
@click.argument("config", type=click.Path())
@click.argument("overrides", nargs=-1)
@with_options(data_options)
@click.option("--trust", is_flag=True, help="allow a package.module:factory architecture named in the config (it runs that code)")
@with_options(resume_options)
@click.option("--json", "json_out", is_flag=True)
def run(config, overrides, data, data_dir, device, trust, resume, snapshot_every, json_out):
    from .config import load_config
    from .pipeline import run_config

    cfg = load_config(config, list(overrides), trust=trust)
    results = []

    def on_stage(i, name, out, result):
        results.append({"stage": name, "output": str(out), **_jsonable(result)})
        if not json_out:
            if result.get("skipped"):
                click.echo(f"[{i}] {name}: {out} is complete (resume); skipped", err=True)
            else:
                _print_result(f"[{i}] {name}", out, result)

    with ProgressBar("run") as bar:
        ctx = make_context(data or cfg.data.name, data_dir or cfg.data.root, device if device != "auto" else cfg.device, cfg.seed, bar,
                           resume, snapshot_every)
        run_config(cfg, ctx, on_stage)
    if json_out:
        click.echo(json.dumps({"config": config, "stages": results}))


@main.command(help=_help("validate", "Check a config without running it."))
@click.argument("config", type=click.Path())
@click.argument("overrides", nargs=-1)
@click.option("--trust", is_flag=True, help="allow a package.module:factory architecture named in the config")
def validate(config, overrides, trust):
    from .config import load_config

    cfg = load_config(config, list(overrides), trust=trust)
    click.echo(f"{config}: ok — {len(cfg.stages)} stage(s): {', '.join(n for n, _ in cfg.stages)}")


@main.command("list", help=_help("list", "List architectures, datasets, stages and quantization schemes."))
@click.option("--json", "json_out", is_flag=True)
def list_cmd(json_out):
    from . import available

    info = available()
    if json_out:
        click.echo(json.dumps(info))
        return
    for key, names in info.items():
        click.echo(f"{key}: {', '.join(names)}")


if __name__ == "__main__":
    main()
