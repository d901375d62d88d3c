"""Plug-in models for the MPI tests (imported by name: ``model: "plugins:slow_mlp"`` with tests/ on PYTHONPATH)."""
from __future__ import annotations

import os
import time

import torch
from torch import nn


class SlowMLP(nn.Module):
    """A tiny MLP whose forward pass sleeps (to make a sweep last long enough to kill) and can fail on one rank."""

    def __init__(self, delay: float = 0.0, fail_rank: int = -1, fail_after: int = 0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
        self.delay, self.fail_rank, self.fail_after = delay, fail_rank, fail_after
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMIX_RANK", "0")))
        if rank == self.fail_rank and self.calls > self.fail_after:
            raise RuntimeError(f"injected failure on rank {rank}")
        if self.delay:
            time.sleep(self.delay)
        return self.net(x)


def slow_mlp(delay: float = 0.0, fail_rank: int = -1, fail_after: int = 0) -> nn.Module:
    return SlowMLP(delay, fail_rank, fail_after)
