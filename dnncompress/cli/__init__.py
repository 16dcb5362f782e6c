"""The click command line: parse, call the library, print. No compression logic lives here.

One file per command, each with its help example beside it; what they share is in `common`."""
from __future__ import annotations

import click

from . import eval_cmd, finetune, joint, list_cmd, pack, prune, quantize, report, run, train, unpack, validate
from .common import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="dnncompress")
def main():
    """dnncompress: prune, quantize, fine-tune and pack PyTorch models into files as small as reported."""


for _command in (train.train, eval_cmd.eval_cmd, finetune.finetune, quantize.quantize, joint.joint, prune.prune, pack.pack,
                 unpack.unpack, report.report, run.run, validate.validate, list_cmd.list_cmd):
    main.add_command(_command)

__all__ = ["main"]
