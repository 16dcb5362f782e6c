"""The README's Python example runs as written and round-trips through the packed file."""
import re
from pathlib import Path

import torch

from .optional import needs_torchvision


@needs_torchvision
def test_readme_python_example(in_tmp):
    text = (Path(__file__).parent.parent / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # our own documentation, run as written
    model, restored = scope["model"].eval(), scope["restored"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(restored(x), model(x))
    assert (in_tmp / "resnet18.dnc").stat().st_size < 0.25 * 11_689_512 * 4
