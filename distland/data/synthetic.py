"""Synthetic CIFAR-shaped data with learnable labels, for tests and benchmarks without a download."""
from __future__ import annotations

import torch

from . import Split


def load(split: str, num_samples: int = 1024, channels: int = 3, size: int = 32, num_classes: int = 10,
         seed: int = 0) -> Split:
    """Gaussian images labelled by a fixed random linear teacher on 4×4-pooled pixels (so a net can learn them).

    Train and test draw from the same distribution with different generator streams.
    """
    g = torch.Generator().manual_seed(seed * 2 + (0 if split == "train" else 1))
    x = torch.randn(num_samples, channels, size, size, generator=g)
    teacher = torch.randn(channels * 16, num_classes, generator=torch.Generator().manual_seed(10_000 + seed))
    pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
    y = (pooled @ teacher).argmax(1)
    return x, y
