"""Users' own data for the tests: `--data tests.data_factory:tiny` and some broken factories."""
import torch
from torch.utils.data import DataLoader, TensorDataset


def tiny(n: int = 96, size: int = 28):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n + 32, 1, size, size, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    return TensorDataset(x[:n], y[:n]), DataLoader(TensorDataset(x[n:], y[n:]), batch_size=8)  # a loader works too


def as_dict():
    train, test = tiny()
    return {"train": train, "test": test, "num_classes": 3}


def wrong():
    return "not datasets"


def broken():
    raise RuntimeError("disk on fire")
