"""The paper's VGG-9 for 32×32 inputs: 7 conv-BN-ReLU layers, 3 max-pools, 2 fully connected layers.

Layout (Li et al. 2018): 64, 64, pool, 128, 128, pool, 256, 256, 256, pool leaves a 256×4×4 map; then
FC 4096→256 with BatchNorm and ReLU, and FC 256→classes. Every conv is a plain ``nn.Conv2d`` (no bias)
registered right before its ``nn.BatchNorm2d`` so an evaluation pass can fold the BN into the conv.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch
from torch import nn

from . import register

VGG9_LAYERS: Sequence[Union[int, str]] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M")


class VGG(nn.Module):
    """conv-BN-ReLU stacks with max-pools (``"M"``), then a hidden FC layer with BatchNorm and a classifier."""

    def __init__(self, layers: Sequence[Union[int, str]] = VGG9_LAYERS, num_classes: int = 10,
                 in_channels: int = 3, input_size: int = 32, hidden: int = 256) -> None:
        super().__init__()
        modules: List[nn.Module] = []
        channels, size = in_channels, input_size
        for spec in layers:
            if spec == "M":
                modules.append(nn.MaxPool2d(2))
                size //= 2
            else:
                modules += [nn.Conv2d(channels, int(spec), 3, padding=1, bias=False),
                            nn.BatchNorm2d(int(spec)), nn.ReLU(inplace=True)]
                channels = int(spec)
        self.features = nn.Sequential(*modules)
        # The hidden FC is followed by BatchNorm too, so its bias would be redundant.
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, hidden, bias=False),
                                nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(hidden, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.features(x)))


@register("vgg9")
def vgg9(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """VGG-9 as in the paper, for 32×32 inputs."""
    return VGG(VGG9_LAYERS, num_classes, in_channels)
