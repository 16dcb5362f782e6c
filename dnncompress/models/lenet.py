"""LeNet-300-100 and the Caffe LeNet-5 used by Deep Compression and seed 000.

ReLUs after the convolutions are an addition to the Caffe prototxt: they change no
parameter count and make three-epoch training reliable.
"""
from __future__ import annotations

import torch.nn as nn

from .zoo import register_arch


@register_arch("lenet300", input_shape=(1, 28, 28), params=266_610)
def lenet300(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    in_features = in_channels * image_size * image_size
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, 300), nn.ReLU(),
        nn.Linear(300, 100), nn.ReLU(),
        nn.Linear(100, num_classes),
    )


class LeNet5(nn.Module):
    """conv 20@5×5 → pool → conv 50@5×5 → pool → fc 500 → fc classes (431,080 params at 28×28)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"lenet5 needs images of at least 16×16, got {image_size}×{image_size}")
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.fc2 = nn.Linear(500, num_classes)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


@register_arch("lenet5", input_shape=(1, 28, 28), params=431_080)
def lenet5(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    return LeNet5(num_classes, in_channels, image_size)


class LeNet5Classic(nn.Module):
    """The 1998 LeNet-5 sizes (6/16/120/84, ≈61.7k params at 32×32 input): a small net where low bits cost more."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2 if image_size == 28 else 0)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.relu(self.fc1(x.flatten(1)))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


@register_arch("lenet5-classic", input_shape=(1, 28, 28), params=61_706)
def lenet5_classic(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    return LeNet5Classic(num_classes, in_channels, image_size)
