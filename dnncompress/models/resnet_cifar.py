"""CIFAR ResNets of He et al. (2016), option A: identity shortcuts, zero-padded channels."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .zoo import register_arch


class ShortcutA(nn.Module):
    """Parameter-free shortcut: subsample by 2 and zero-pad the new channels."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = ShortcutA(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    # structured pruning leaves the residual stream whole: option-A shortcuts zero-pad channels by position,
    # which no dependency graph can follow; each block's inner channels (conv1 → conv2) are free to go
    structured_keep = ("conv1", "layer*.conv2")

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _make(depth: int, params: int):
    @register_arch(f"resnet{depth}", input_shape=(3, 32, 32), params=params)
    def factory(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
        return CifarResNet(depth, num_classes, in_channels)

    factory.__name__ = f"resnet{depth}"
    return factory


resnet20 = _make(20, 269_722)
resnet32 = _make(32, 464_154)
resnet44 = _make(44, 658_586)
resnet56 = _make(56, 853_018)
