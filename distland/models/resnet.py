"""CIFAR ResNets and Wide-ResNets (He et al. 2016; Li et al. 2018), with and without skip connections.

A depth-``6n+2`` net is a 3×3 stem conv, three stages of ``n`` basic blocks at 16·k, 32·k and 64·k channels
(k = 1 for the plain ResNets; the paper's WRN-56-k multiplies every ResNet-56 width, stem included, by k),
global average pooling and a linear classifier. A block whose input and output shapes differ gets a 1×1
conv + BatchNorm projection shortcut, otherwise the identity. The ``_noshort`` nets drop the shortcut entirely,
identity and projection alike, which is what makes their loss surfaces chaotic in the paper.

Every conv is a plain ``nn.Conv2d`` (no bias) registered right before the ``nn.BatchNorm2d`` that consumes it,
so an evaluation pass can fold each BN into its conv.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from . import register


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers; the input is added back before the last ReLU unless ``shortcut`` is False."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: Optional[nn.Module]
        if not shortcut:
            self.shortcut = None
        elif stride != 1 or in_planes != planes:
            # The input no longer matches the branch's shape, so project it (the paper's option B).
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """A ``depth = 6n+2`` ResNet for 32×32 inputs with stage widths ``16·width, 32·width, 64·width``."""

    def __init__(self, depth: int, width: int = 1, shortcut: bool = True, num_classes: int = 10,
                 in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        widths = [16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks = []
        in_planes = widths[0]
        for stage, planes in enumerate(widths):
            for i in range(n):
                # Stages 2 and 3 halve the resolution in their first block.
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
        self.layer1 = nn.Sequential(*blocks[:n])
        self.layer2 = nn.Sequential(*blocks[n:2 * n])
        self.layer3 = nn.Sequential(*blocks[2 * n:])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(self.pool(out), 1))


def _init_weights(model: nn.Module) -> None:
    # He initialization keeps activations from shrinking through 110 ReLU layers, which matters most
    # for the _noshort nets that have no identity path to carry the signal.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _register(name: str, depth: int, width: int, shortcut: bool) -> None:
    @register(name)
    def factory(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return CifarResNet(depth, width, shortcut, num_classes, in_channels)

    factory.__name__ = factory.__qualname__ = name
    kind = f"WRN-{depth}-{width}" if width > 1 else f"ResNet-{depth}"
    factory.__doc__ = f"{kind} for CIFAR{'' if shortcut else ' without skip connections'}."


for _depth in (20, 56, 110):
    _register(f"resnet{_depth}", _depth, 1, True)
    _register(f"resnet{_depth}_noshort", _depth, 1, False)
for _k in (2, 4, 8):
    _register(f"wrn56_{_k}", 56, _k, True)
    _register(f"wrn56_{_k}_noshort", 56, _k, False)
