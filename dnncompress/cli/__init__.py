"""The click command line: parse, call the library, print. No compression logic lives here.

One file per command, each with its help example beside it; what they share is in `common`."""
from __future__ import annotations

import click

from .common import Group

# name → (module, function, one-line help): the top-level help and the command list need no import of
# torch; a command's module is imported when that command runs (a test keeps this table true)
COMMANDS = {
    "train": ("train", "train", "Train ARCH from scratch and write a checkpoint."),
    "eval": ("eval_cmd", "eval_cmd", "Evaluate a checkpoint or packed .dnc on its test set."),
    "finetune": ("finetune", "finetune", "Fine-tune a checkpoint; pruned weights stay zero, quantized ones train (QAT)."),
    "quantize": ("quantize", "quantize", "Quantize every Conv/Linear weight (post-training or calibrated)."),
    "joint": ("joint", "joint", "Choose per-layer sparsity and bit-width under a size target."),
    "shrink": ("shrink", "shrink", "Remove whole filters and neurons until the packed file fits a byte target."),
    "prune": ("prune", "prune", "Prune weights by magnitude, or whole channels/neurons (--structured)."),
    "pack": ("pack", "pack", "Pack a checkpoint into a .dnc file as small as reported."),
    "unpack": ("unpack", "unpack", "Restore a checkpoint from a .dnc."),
    "report": ("report", "report", "Per-layer table of where every byte goes."),
    "export": ("export", "export", "Export a checkpoint or .dnc to ONNX, checked with onnxruntime."),
    "run": ("run", "run", "Run a YAML config's stages (a file, or a shipped config by name)."),
    "validate": ("validate", "validate", "Check a config without running it."),
    "list": ("list_cmd", "list_cmd", "List architectures, datasets, stages, schemes and shipped configs."),
}


class LazyGroup(Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        import importlib

        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, _, short) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="dnncompress")
def main():
    """dnncompress: prune, quantize, fine-tune and pack PyTorch models into files as small as reported."""


__all__ = ["COMMANDS", "main"]
