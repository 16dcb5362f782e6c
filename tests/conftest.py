import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def _compiled_from_the_start():
    """The tests compare the compiled kernels with the torch/numpy paths from their first call: no one-off budget
    (compiled.py) to spend first. tests/test_fast_paths.py tests the budget itself."""
    from dnncompress import compiled

    compiled.ONE_OFF_BUDGET = 0


_compiled_from_the_start()


def _register_test_linear():
    """A registered zoo name for single-Linear test models: a name from a file may be a registered
    architecture, while `torch.nn:Linear` in a file would need --arch or --trust."""
    from dnncompress.models import ARCHS, register_arch

    if "test-linear" not in ARCHS:
        register_arch("test-linear", (1, 1, 1), 0)(lambda in_features=1, out_features=1, bias=True: torch.nn.Linear(in_features, out_features, bias))


_register_test_linear()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty directory so the run-state file and outputs stay per test."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A lenet300 trained one epoch on synthetic data, shared read-only by tests."""
    from dnncompress.stages import Context, execute
    from dnncompress.stages.training import TrainParams

    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    ctx = Context(data_name="synthetic", run_dir=str(path.parent))
    execute("train", TrainParams(arch="lenet300", epochs=1), None, path, ctx)
    return path
