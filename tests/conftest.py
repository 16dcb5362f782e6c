import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


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
