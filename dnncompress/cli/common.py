"""What every command shares: one-line errors, progress bars, inputs, outputs and common options."""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import click

from ..errors import UserError


def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def stdout_console():
    """Rich console for results; wide when piped so tables are not squeezed to 80 columns."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


MAX_MESSAGE = 500


def fail(message: str, code: int) -> None:
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
            fail("aborted", 1)
        except click.ClickException as e:
            hint = f" (see '{e.ctx.command_path} --help')" if getattr(e, "ctx", None) is not None else ""
            fail(e.format_message().splitlines()[0] + hint, e.exit_code if e.exit_code else 2)

    def parse_args(self, ctx, args):
        """A bare `dnncompress` prints the command list (exit 0), not a usage error."""
        if not args:
            click.echo(ctx.get_help())
            ctx.exit(0)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            message = str(e).splitlines()[0] if str(e) else "bad input"
            traceback.clear_frames(e.__traceback__)  # free the failed run's model now, not in a later GC pass
            fail(message, 2)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except Exception as e:  # last line of defence: no traceback for users
            if os.environ.get("DNNCOMPRESS_DEBUG"):
                raise
            fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (set DNNCOMPRESS_DEBUG=1 for a traceback)", 1)




def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def resolve_input(path: str | None, suffixes=(".pt", ".dnc")) -> Path:
    """The given checkpoint, or the newest output recorded in this directory (said on stderr)."""
    from ..runstate import latest_output

    if path:
        return Path(path)
    found = latest_output(want_suffix=suffixes)
    click.echo(f"using {found} (newest output in this directory)", err=True)
    return found


def load_input(path: str | None, arch=None, trust=False):
    from ..checkpoint import load_checkpoint
    from ..filekind import sniff

    p = resolve_input(path)
    if p.suffix == ".dnc" or sniff(p) == "packed":  # by content too: a renamed .dnc still loads
        from ..pack import checkpoint_from_packed

        return p, checkpoint_from_packed(p, arch=arch, trust=trust)
    return p, load_checkpoint(p, arch=arch, trust=trust)


class ProgressBar:
    """Rich progress on stderr, fed by the library's progress events: one bar per stage and per kind of
    work (training steps, a sensitivity scan), so a scan never takes over a training bar; a finished bar
    stays as it ended. Result lines go through `echo`, above the bars, never glued onto one."""

    def __init__(self, description: str, enabled: bool = True):
        self.description, self.enabled = description, enabled and rank() == 0
        self.progress = None
        self.tasks: dict[tuple, int] = {}

    active: ProgressBar | None = None  # the bar that is live now: result and log lines print above it

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=stderr_console(), transient=False,
                redirect_stdout=False, redirect_stderr=False,
            )
            self.progress.__enter__()
        ProgressBar.active = self
        return self

    def __exit__(self, *exc):
        ProgressBar.active = None
        if self.progress:
            self.progress.__exit__(*exc)

    def echo(self, message: str, err: bool = False) -> None:
        """A line printed above the live bars (plain click.echo when no bar is live)."""
        if self.progress is not None and self.progress.live.is_started and self.progress.console.is_terminal:
            self.progress.console.print(message, markup=False, highlight=False, soft_wrap=True)
            return
        click.echo(message, err=err)

    def _label(self, event: dict, work: str) -> str:
        stage = event.get("stage")
        if self.description == "run" and stage:
            return f"{stage} {work}" if work != "training" else stage
        return self.description if work == "training" else f"{self.description} {work}"

    def _task(self, event: dict, work: str, total: int, done: int = 0, fresh: bool = False) -> int:
        key = (event.get("stage"), work)
        if fresh or key not in self.tasks:
            label = self._label(event, work)
            used = [t.description for t in self.progress.tasks]
            if label in used:  # a stage that runs twice (two fine-tunes): its second bar says so
                label = f"{label} ({sum(1 for u in used if u == label or u.startswith(label + ' (')) + 1})"
            self.tasks[key] = self.progress.add_task(label, total=total, completed=done, info="")
        return self.tasks[key]

    def __call__(self, event: dict) -> None:
        if not self.progress:
            return
        kind = event.get("kind")
        if kind == "start":
            self._task(event, "training", event["total"], event.get("done", 0), fresh=True)
        elif kind == "step" and (event.get("stage"), "training") in self.tasks:
            info = f"epoch {event['epoch']} loss {event['loss']:.3f} acc {event['accuracy']:.1f}%"
            self.progress.update(self.tasks[(event.get("stage"), "training")], advance=1, info=info)
        elif kind == "scan" and event.get("total"):
            task = self._task(event, "scan", event["total"])
            self.progress.update(task, completed=event["done"], info=event.get("info", ""))


def make_context(data=None, data_dir=None, device="auto", seed=0, progress=None, resume=False, snapshot_every=200):
    from ..stages import Context
    from ..train import pick_device

    pick_device(device)  # a device this machine lacks fails now, in one line, not inside torch after loading everything
    click_ctx = click.get_current_context(silent=True)
    meta = click_ctx.meta if click_ctx is not None else {}  # --val-split and --data-opt: data options every data command has
    return Context(data_name=data, data_dir=data_dir, device=device, seed=seed, progress=progress,
                   log=lambda m: echo(m, err=True), resume=resume, snapshot_every=snapshot_every,
                   val_split=meta.get("val_split"), data_options=dict(meta.get("data_options") or {}))


def key_values(items, flag: str, example: str) -> dict:
    """Repeatable `key=value` options (values read as YAML scalars: 8 → int, true → bool) → a dict."""
    import yaml

    out: dict = {}
    for item in items or ():
        if "=" not in item:
            raise UserError(f"{flag} '{item}' must look like key=value, e.g. {example}")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def _keep_data_options(ctx, param, values):
    try:
        ctx.meta["data_options"] = key_values(values, "--data-opt", "image_size=64")
    except UserError as e:
        raise click.BadParameter(str(e)) from None
    return ctx.meta["data_options"]


def _keep_val_split(ctx, param, value):
    if value is not None:
        from ..data import check_val_split

        try:
            value = check_val_split(value)
        except UserError as e:
            raise click.BadParameter(str(e)) from None
    ctx.meta["val_split"] = value
    return value


def run_stage(name, params, input_path, ckpt, output, ctx, json_out=False):
    from ..fileio import output_path
    from ..stages import STAGES, execute

    stage = STAGES.get(name)
    out = output_path(input_path, output, stage.suffix, stage.ext)
    ckpt, result = execute(name, params, ckpt, out, ctx, main_process=rank() == 0)
    if rank() == 0:
        if json_out:
            click.echo(json.dumps({"output": str(out), **jsonable(result)}))
        else:
            print_result(name, out, result)
    return out, ckpt, result


def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return obj.item()
        except (ValueError, RuntimeError):
            return str(obj)
    return obj


def echo(message: str, err: bool = False) -> None:
    """click.echo, or above the live progress bars when there are some."""
    if ProgressBar.active is not None:
        ProgressBar.active.echo(message, err)
    else:
        click.echo(message, err=err)


def print_result(name, out, result):
    acc = result.get("accuracy")
    extra = f" — test accuracy {acc:.2f}%" if isinstance(acc, (int, float)) else ""
    if name.split()[-1] == "pack" and result.get("ratio"):
        extra += f" — {result['bytes']:,} bytes, {result['ratio']:.1f}× smaller than fp32 ({result['fp32_bytes']:,} bytes)"
    echo(f"{name}: wrote {out}{extra}")


data_options = [
    click.option("--data", "data", default=None, help="dataset: mnist, cifar10, cifar100, digits, imagefolder, synthetic, or your own "
                 "package.module:function returning (train, test) (default: the checkpoint's)"),
    click.option("--data-dir", default=None, type=click.Path(),
                 help="folder with the dataset files (MNIST IDX, CIFAR python batches, imagefolder's train/ and val/)"),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 …"),
    click.option("--data-opt", multiple=True, expose_value=False, callback=_keep_data_options,
                 help="the dataset's own option, key=value (repeatable; imagefolder: image_size=64, resize=72; a factory: its kwargs)"),
    click.option("--val-split", type=float, default=None, expose_value=False, callback=_keep_val_split,
                 help="fraction of the training data held out for choosing (auto, joint); the test split only reports "
                      "[default: the checkpoint's, else 0.1]"),
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


def param_options(params_cls, names, help: dict | None = None, flags: dict | None = None) -> list:
    """Click options for fields of a stage's parameter dataclass, declared once there: name, type,
    choices and default come from the field (`--batch-size` for `batch_size`); the CLI adds only help.
    `flags` renames an option's flag (e.g. {"codebook": "--codebook"} keeps a field's flag stable)."""
    import dataclasses
    import types
    import typing

    hints = typing.get_type_hints(params_cls)
    defaults = {f.name: f.default for f in dataclasses.fields(params_cls)}
    out = []
    for name in names:
        kind = hints[name]
        args = typing.get_args(kind)
        optional = (typing.get_origin(kind) in (typing.Union, types.UnionType)) and type(None) in args
        if optional:
            kind = next(a for a in args if a is not type(None))
        flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
        default = defaults[name]
        extra = {"default": default, "show_default": default is not None, "help": (help or {}).get(name)}
        if typing.get_origin(kind) is typing.Literal:
            extra["type"] = click.Choice([str(a) for a in typing.get_args(kind)])
        elif kind is bool:
            if default is False and not optional:
                out.append(click.option(flag, name, is_flag=True, help=extra["help"]))
                continue
            flag = f"{flag}/--no-{flag[2:]}"
        elif kind in (int, float, str):
            extra["type"] = kind
        else:
            raise TypeError(f"{params_cls.__name__}.{name}: no command-line form for {kind}")
        out.append(click.option(flag, name, **extra))
    return out


def fractions(text: str | None, name: str) -> list[float] | None:
    """--channels 0.5,0.7 → [0.5, 0.7] (None when the option was not given; range checks are the stage's)."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--{name} takes comma-separated fractions, e.g. 0.5,0.7; got '{text}'") from None


def params_from(params_cls, names, values: dict, **fixed):
    """The stage's parameters from the parsed command line (only the fields `param_options` declared)."""
    return params_cls(**{n: values.pop(n) for n in names}, **fixed)


def with_options(options):
    def deco(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return deco


def help_text(text: str, example: str) -> str:
    """A command's help with its example (which must run as written) beside it."""
    return f"{text}\n\n\b\nExample:\n  {example}"


def print_layers(rows: list[dict], title: str) -> None:
    """A rich table of per-layer quantization results (stdout: it is the command's result)."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("layer", "scheme", "bits", "params", "nonzeros", "distinct", "rel. L2 error"):
        table.add_column(col, justify="left" if col in ("layer", "scheme") else "right")
    for r in rows:
        table.add_row(r["layer"], r["scheme"], str(r["bits"]), f"{r['params']:,}", f"{r['nonzeros']:,}",
                      str(r["distinct_values"]), f"{r['rel_error']:.4f}")
    stdout_console().print(table)
