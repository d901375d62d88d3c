"""DenseNet-BC for CIFAR (Huang et al. 2017) in the paper authors' layout: DenseNet-121's blocks (6, 12, 24, 16)
behind a 3×3 stem conv.

Each dense layer is a pre-activation bottleneck, BN-ReLU-conv1×1 (4·growth channels) then BN-ReLU-conv3×3
(growth channels), whose output is concatenated *before* its input (the authors' order: new maps first).
Transitions (BN-ReLU-conv1×1-avgpool) halve the channels (rounded down) and the resolution: 32→16→8→4, then
BN-ReLU, global pooling and the ``linear`` classifier. Module names (``conv1``, ``dense1``, ``trans1``, …, ``bn``,
``linear``), shapes and registration order match the authors' ``cifar10/models/densenet.py``, so their checkpoints
and direction files load as they are.

Only the 1×1 bottleneck conv feeds a BatchNorm directly, and it is registered right before that BN (``bn2``)
for BN folding. The other convs feed a concatenation, which no single conv can absorb a BN into.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from . import register


class DenseLayer(nn.Module):
    """Bottleneck layer that puts ``growth`` new feature maps in front of its input."""

    def __init__(self, in_channels: int, growth: int, bottleneck: int = 4) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, bottleneck * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(bottleneck * growth)
        self.conv2 = nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    """BN-ReLU-conv1×1 to ``out_channels``, then 2×2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """DenseNet-BC for 32×32 inputs with four dense blocks of the given sizes (``dense1..4``, ``trans1..3``)."""

    def __init__(self, blocks: Sequence[int] = (6, 12, 24, 16), growth: int = 32, compression: float = 0.5,
                 num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if len(blocks) != 4:
            raise ValueError(f"DenseNet needs four dense blocks, got {len(blocks)}")
        channels = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        # Registered in the authors' order (dense1, trans1, dense2, ...): their direction files list tensors so.
        for i, n_layers in enumerate(blocks, start=1):
            layers = []
            for _ in range(n_layers):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            setattr(self, f"dense{i}", nn.Sequential(*layers))
            if i < len(blocks):
                reduced = int(channels * compression)
                setattr(self, f"trans{i}", Transition(channels, reduced))
                channels = reduced
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)   # the authors' 4×4 average pool on 32×32 inputs
        self.linear = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.trans1(self.dense1(self.conv1(x)))
        out = self.trans2(self.dense2(out))
        out = self.trans3(self.dense3(out))
        out = F.relu(self.bn(self.dense4(out)))
        return self.linear(torch.flatten(self.pool(out), 1))


@register("densenet121", aliases=["DenseNet121"], authors=True)
def densenet121(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """DenseNet-121 (CIFAR variant): growth 32, blocks (6, 12, 24, 16), bottleneck, compression 0.5."""
    return DenseNet((6, 12, 24, 16), 32, 0.5, num_classes, in_channels)
