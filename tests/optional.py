"""Skip marks for optional dependencies, so the suite runs where tools/install_torch.sh had to take the CPU-only
torch without torchvision (PyPI's torchvision cannot import beside it)."""
import pytest


def _torchvision_imports() -> bool:
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):  # RuntimeError: a torchvision built for another torch
        return False
    return True


needs_torchvision = pytest.mark.skipif(not _torchvision_imports(), reason="torchvision: optional, and not importable beside this torch")
