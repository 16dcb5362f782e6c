"""A 'model factory' that writes a file when imported and when called: a file that names it as its
architecture must never get it imported or called unless the user names it or passes --trust."""
import os
from pathlib import Path

import torch.nn as nn

if os.environ.get("DNNCOMPRESS_EVIL_MARKER"):
    Path(os.environ["DNNCOMPRESS_EVIL_MARKER"] + ".imported").write_text("imported")


def build(path: str = "", **_):
    Path(path).write_text("called")
    return nn.Linear(4, 2)
