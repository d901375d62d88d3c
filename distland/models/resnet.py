"""ResNets and Wide-ResNets of the paper (He et al. 2016; Li et al. 2018), with and without skip connections.

Every model here is state_dict-compatible with the paper authors' ``loss-landscape`` code (``cifar10/models``):
same module names (the classifier is ``linear``), shapes, registration order (so their direction files, stored in
parameter order, line up) and forward function, so their checkpoints load by their model names.

- CIFAR ResNet / WRN, depth ``6n+2``: a 3×3 stem conv, three stages of ``n`` basic blocks at 16·k, 32·k and 64·k
  channels (k = 1 for the plain ResNets; WRN-d-k multiplies every width, stem included, by k), global average
  pooling and a linear classifier.
- "ImageNet-layout" ResNet-18/34/50/101/152 for 32×32 inputs: a 64-channel 3×3 stem (stride 1, no max-pool), four
  stages at 64, 128, 256, 512 channels (basic blocks for 18/34, bottleneck blocks ×4 for 50/101/152).

A block whose input and output shapes differ gets a 1×1 conv + BatchNorm projection shortcut (``shortcut.0``,
``shortcut.1``), otherwise the identity. The ``_noshort`` nets drop the shortcut entirely, identity and projection
alike, which is what makes their loss surfaces chaotic in the paper. Every conv is a plain ``nn.Conv2d`` (no bias)
registered right before the ``nn.BatchNorm2d`` that consumes it, so an evaluation pass can fold each BN into it.
"""
from __future__ import annotations

from typing import Optional, Sequence, Type, Union

import torch
from torch import nn
from torch.nn import functional as F

from . import register


def _shortcut(in_planes: int, out_planes: int, stride: int, shortcut: bool) -> Optional[nn.Module]:
    if not shortcut:
        return None
    if stride != 1 or in_planes != out_planes:
        # The input no longer matches the branch's shape, so project it (the paper's option B).
        return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                             nn.BatchNorm2d(out_planes))
    return nn.Identity()


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers; the input is added back before the last ReLU unless ``shortcut`` is False."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class Bottleneck(nn.Module):
    """1×1 (reduce) → 3×3 (carries the stride) → 1×1 (expand ×4) conv-BN layers, plus the shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


Block = Union[Type[BasicBlock], Type[Bottleneck]]


class ResNet(nn.Module):
    """A stem conv-BN-ReLU, one ``layer<i>`` stage per entry of ``blocks`` (the first keeps the resolution, the
    others halve it), global average pooling and the ``linear`` classifier."""

    # Checkpoints of distland before the authors' layout named the classifier `fc` (see checkpoint.py).
    legacy_key_renames = {"fc.": "linear."}

    def __init__(self, block: Block, blocks: Sequence[int], widths: Sequence[int], shortcut: bool = True,
                 num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for stage, (n, planes) in enumerate(zip(blocks, widths)):
            layers = []
            for i in range(n):
                layers.append(block(in_planes, planes, 2 if stage > 0 and i == 0 else 1, shortcut))
                in_planes = planes * block.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
        self.stages = len(blocks)
        # The authors pool with a fixed window equal to the last map (8×8 or 4×4 for 32×32 inputs): the same
        # as global average pooling there, and this also accepts other input sizes.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        if self.stages == 4:
            out = self.layer4(out)
        return self.linear(torch.flatten(self.pool(out), 1))


class CifarResNet(ResNet):
    """A ``depth = 6n+2`` ResNet for 32×32 inputs with stage widths ``16·width, 32·width, 64·width``."""

    def __init__(self, depth: int, width: int = 1, shortcut: bool = True, num_classes: int = 10,
                 in_channels: int = 3) -> None:
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        super().__init__(BasicBlock, (n, n, n), (16 * width, 32 * width, 64 * width), shortcut, num_classes,
                         in_channels)


def _init_weights(model: nn.Module) -> None:
    # He initialization keeps activations from shrinking through 110 ReLU layers, which matters most
    # for the _noshort nets that have no identity path to carry the signal.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _authors_spelling(name: str) -> str:
    # The authors' factory names: ResNet56, ResNet56_noshort, WRN56_2, ResNet50_16_noshort, ...
    head, _, tail = name.partition("_")
    head = head.replace("resnet", "ResNet").replace("wrn", "WRN")
    return f"{head}_{tail}" if tail else head


def _register_cifar(name: str, depth: int, width: int, shortcut: bool, authors: bool = True) -> None:
    @register(name, aliases=[_authors_spelling(name)], authors=authors)
    def factory(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return CifarResNet(depth, width, shortcut, num_classes, in_channels)

    factory.__name__ = factory.__qualname__ = name
    kind = f"WRN-{depth}-{width}" if width > 1 else f"ResNet-{depth}"
    factory.__doc__ = f"{kind} for CIFAR{'' if shortcut else ' without skip connections'}."


# The "ImageNet-layout" nets of the authors' cifar10/models/resnet.py: block type and blocks per stage.
_WIDE_STAGES = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3)),
                101: (Bottleneck, (3, 4, 23, 3)), 152: (Bottleneck, (3, 8, 36, 3))}


def _register_wide(name: str, depth: int, shortcut: bool) -> None:
    block, blocks = _WIDE_STAGES[depth]

    @register(name, aliases=[_authors_spelling(name)], authors=True)
    def factory(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return ResNet(block, blocks, (64, 128, 256, 512), shortcut, num_classes, in_channels)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (f"ResNet-{depth} (ImageNet layout, 3×3 stem for 32×32 inputs)"
                       f"{'' if shortcut else ' without skip connections'}.")


for _depth in (20, 56, 110):
    _register_cifar(f"resnet{_depth}", _depth, 1, True)
    _register_cifar(f"resnet{_depth}_noshort", _depth, 1, False)
for _depth in (32, 44):
    _register_cifar(f"resnet{_depth}_noshort", _depth, 1, False)
    # The authors' code has no ResNet-32/44 with skips; the same factory gives the partner of each no-skip net
    # (configs/small compares them), but they are not marked as the authors' layout.
    _register_cifar(f"resnet{_depth}", _depth, 1, True, authors=False)
_register_cifar("resnet50_16_noshort", 50, 1, False)   # the authors' CIFAR depth-50 (6·8+2), not ResNet-50
for _k in (2, 4, 8):
    _register_cifar(f"wrn56_{_k}", 56, _k, True)
    _register_cifar(f"wrn56_{_k}_noshort", 56, _k, False)
for _k in (2, 4):
    _register_cifar(f"wrn110_{_k}_noshort", 110, _k, False)
for _depth in _WIDE_STAGES:
    _register_wide(f"resnet{_depth}", _depth, True)
    _register_wide(f"resnet{_depth}_noshort", _depth, False)
