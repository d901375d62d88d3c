"""The paper's VGG-9 (and VGG-16/19) for 32×32 inputs, in the paper authors' layout.

Layout (Li et al. 2018; the authors' ``cifar10/models/vgg.py``): conv-BN-ReLU layers with max-pools, e.g. VGG-9's
64, 64, pool, 128, 128, pool, 256, 256, 256, pool, leaving a 256×4×4 map; then ``fc`` = Linear(4096→256) + BatchNorm1d
+ ReLU, and the ``classifier`` Linear(256→classes). Module names, shapes (convs and the hidden FC carry biases, as
the authors' do) and order match the authors', so their checkpoints and direction files load as they are. A conv is
registered right before its ``nn.BatchNorm2d`` so an evaluation pass can fold the BN into it (bias included).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Union

import torch
from torch import nn

from . import register

Layers = Sequence[Union[int, str]]
VGG9_LAYERS: Layers = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M")
LAYERS: Dict[str, Layers] = {
    "vgg9": VGG9_LAYERS,
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """conv-BN-ReLU stacks with max-pools (``"M"``), then a hidden FC layer (as wide as the last conv) with
    BatchNorm and ReLU, and a linear classifier."""

    def __init__(self, layers: Layers = VGG9_LAYERS, num_classes: int = 10, in_channels: int = 3,
                 input_size: int = 32) -> None:
        super().__init__()
        modules: List[nn.Module] = []
        channels, size = in_channels, input_size
        for spec in layers:
            if spec == "M":
                # ceil_mode as the authors: an odd map keeps its last row/column (no effect on 32×32 inputs).
                modules.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                size = -(-size // 2)
            else:
                modules += [nn.Conv2d(channels, int(spec), 3, padding=1),
                            nn.BatchNorm2d(int(spec)), nn.ReLU(inplace=True)]
                channels = int(spec)
        self.features = nn.Sequential(*modules)
        self.fc = nn.Sequential(nn.Linear(channels * size * size, channels), nn.BatchNorm1d(channels),
                                nn.ReLU(inplace=True))
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(torch.flatten(self.features(x), 1)))


def _register(name: str) -> None:
    @register(name, aliases=[name.upper()], authors=True)
    def factory(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return VGG(LAYERS[name], num_classes, in_channels)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{name.upper()} as in the paper authors' code, for 32×32 inputs."


for _name in LAYERS:
    _register(_name)
