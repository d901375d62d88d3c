"""The built-in demo net: a small conv net with BatchNorm for 8×8 one-channel digits (scikit-learn's bundled set)."""
from __future__ import annotations

import torch
from torch import nn

from . import register


class DemoCNN(nn.Module):
    """conv-BN-ReLU ×2, global average pool, linear. ~5k parameters: trains in seconds on a CPU."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class MLP(nn.Module):
    """A tiny fully connected net; useful for fast tests and the coordinator benchmark."""

    def __init__(self, in_features: int = 64, hidden: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register("democnn")
def democnn(in_channels: int = 1, num_classes: int = 10, width: int = 16) -> nn.Module:
    return DemoCNN(in_channels, num_classes, width)


@register("mlp")
def mlp(in_features: int = 64, hidden: int = 32, num_classes: int = 10) -> nn.Module:
    return MLP(in_features, hidden, num_classes)
