import gzip
import struct

import numpy as np
import pytest
import torch

from dnncompress.data import load_data
from dnncompress.errors import UserError


def test_embedded_mnist_is_a_fixed_4000_1000_split():
    a, b = load_data("mnist", val_split=0), load_data("mnist", seed=7, val_split=0)
    assert len(a.train) == 4000 and len(a.test) == 1000 and a.val is None
    assert torch.equal(a.test.tensors[1], b.test.tensors[1])  # split does not follow the training seed
    assert a.input_shape == (1, 28, 28)
    assert sorted(a.train.tensors[1].unique().tolist()) == list(range(10))


def _rows(ds):
    """Each image's bytes (the embedded MNIST has no duplicate images)."""
    return {r.numpy().tobytes() for r in ds.tensors[0].reshape(len(ds), -1)}


def test_validation_is_held_out_of_training_and_never_overlaps_test():
    full, a, b = load_data("mnist", val_split=0), load_data("mnist"), load_data("mnist", seed=7)
    assert len(a.train) == 3600 and len(a.val) == 400 and len(a.test) == 1000
    assert torch.equal(a.val.tensors[0], b.val.tensors[0])  # fixed, whatever the training seed
    train, val, test = _rows(a.train), _rows(a.val), _rows(a.test)
    assert not train & val and not val & test and not train & test
    assert train | val == _rows(full.train)
    with pytest.raises(UserError, match="val_split"):
        load_data("mnist", val_split=0.9)


def _write_idx(path, arr):
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_mnist_from_idx_folder(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_idx(raw / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (20, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, (20,)))
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (5, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, (5,)))
    d = load_data("mnist", str(tmp_path))
    assert len(d.train) + len(d.val) == 20 and len(d.test) == 5


def test_missing_data_dirs_say_what_to_put_where(tmp_path):
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte"):
        load_data("mnist", str(tmp_path))
    with pytest.raises(UserError, match="data_batch_1.*cifar-10-batches-py|cifar-10-batches-py.*data_batch_1"):
        load_data("cifar10", str(tmp_path))
    with pytest.raises(UserError, match="--data-dir"):
        load_data("cifar100")
    with pytest.raises(UserError, match="did you mean 'cifar10'"):
        load_data("cifar11")


def test_cifar_python_batches_are_read(tmp_path):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": np.zeros((4, 3072), np.uint8), "labels": [1, 2, 3, 4]}, f)
    d = load_data("cifar10", str(tmp_path))
    assert len(d.train) + len(d.val) == 20 and d.input_shape == (3, 32, 32) and d.augment


def test_digits_and_synthetic():
    d = load_data("digits")
    assert d.input_shape == (1, 28, 28) and len(d.train) + len(d.val) + len(d.test) == 1797
    s = load_data("synthetic", input_shape=(3, 32, 32))
    assert s.train.tensors[0].shape[1:] == (3, 32, 32)
