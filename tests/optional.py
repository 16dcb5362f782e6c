"""Skip marks for optional dependencies, so the suite runs where tools/install_torch.sh had to take the CPU-only
torch without torchvision (PyPI's torchvision cannot import beside it)."""
import pytest

from dnncompress.errors import UserError
from dnncompress.models.zoo import import_torchvision


def _torchvision_imports() -> bool:
    try:
        import_torchvision("the tests")  # the library's own test: missing, or built for another torch
    except UserError:
        return False
    return True


needs_torchvision = pytest.mark.skipif(not _torchvision_imports(), reason="torchvision: optional, and not importable beside this torch")
