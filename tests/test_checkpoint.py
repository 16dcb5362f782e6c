import pytest
import torch

from dnncompress.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from dnncompress.errors import UserError
from dnncompress.fileio import atomic_path, output_path
from dnncompress.models import build_model


def test_checkpoint_is_a_weights_only_plain_dict(tiny_ckpt):
    raw = torch.load(tiny_ckpt, weights_only=True)
    assert raw["format"] == FORMAT and raw["version"] == 1
    for key in ("arch", "arch_kwargs", "dataset", "state_dict", "masks", "quant", "metrics", "history"):
        assert key in raw
    assert raw["history"][0]["stage"] == "train" and "seconds" not in raw["history"][0]  # no timings: same input, same bytes
    assert raw["metrics"]["accuracy"] > 50


def test_bare_state_dict_needs_an_arch(tmp_path):
    model = build_model("lenet300")
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(UserError, match="--arch"):
        load_checkpoint(path)
    ckpt = load_checkpoint(path, arch="lenet300")
    assert torch.equal(ckpt["state_dict"]["1.weight"], model.state_dict()["1.weight"])
    with pytest.raises(UserError, match="does not fit"):
        load_checkpoint(path, arch="lenet5")


def test_full_model_pickle_needs_trust(tmp_path):
    from dnncompress.models.lenet import LeNet5

    model = LeNet5()
    path = tmp_path / "full.pt"
    torch.save(model, path)
    with pytest.raises(UserError, match="--trust"):
        load_checkpoint(path)
    ckpt = load_checkpoint(path, trust=True)
    assert ckpt["arch"] == "dnncompress.models.lenet:LeNet5"
    assert torch.equal(ckpt["state_dict"]["fc1.weight"], model.fc1.weight)
    torch.save(torch.nn.Linear(4, 3), path)  # needs constructor args: the user must name a factory
    with pytest.raises(UserError, match="pass --arch"):
        load_checkpoint(path, trust=True)


def test_garbage_and_wrong_version(tmp_path, tiny_ckpt):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError):
        load_checkpoint(bad)
    ckpt = load_checkpoint(tiny_ckpt)
    ckpt["version"] = 99
    save_checkpoint(ckpt, tmp_path / "v99.pt")
    with pytest.raises(UserError, match="version 99"):
        load_checkpoint(tmp_path / "v99.pt")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.pt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_output_path_never_overwrites_input(tmp_path):
    src = tmp_path / "model.pt"
    src.write_bytes(b"x")
    assert output_path(src, None, "fourval") == tmp_path / "model.fourval.pt"
    with pytest.raises(UserError, match="input"):
        output_path(src, src, "x")
