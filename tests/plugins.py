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
        # DISTLAND_TEST_DELAY slows one run of a job without changing its config (so a rerun resumes it).
        delay = float(os.environ.get("DISTLAND_TEST_DELAY", self.delay))
        if delay:
            time.sleep(delay)
        return self.net(x)


def slow_mlp(delay: float = 0.0, fail_rank: int = -1, fail_after: int = 0) -> nn.Module:
    return SlowMLP(delay, fail_rank, fail_after)


# ------------------------------------------------------------------------------------------ a plug-in quantity
from distland.quantities import PointEvaluator, Quantity  # noqa: E402
from distland.surfacefile import Dataset, QuantityLayout  # noqa: E402


class CoordQuantity(Quantity):
    """A per-point quantity that needs no model: ``coord_sum`` = x + 10 y (float64) and ``coord_rank`` (int32,
    fill −1) = the MPI rank that computed the point. Exercises the seam: its own datasets, dtypes, fill values
    and ``coord_done`` mask, added to a loss surface without recomputing the loss."""

    name = "coord"
    fail_after = -1   # tests set it: raise after this many points (a crash in the middle of a sweep)

    @classmethod
    def from_config(cls, cfg: object) -> "CoordQuantity":
        return cls()

    def layout(self) -> QuantityLayout:
        return QuantityLayout(self.name, (Dataset("coord_sum"), Dataset("coord_rank", "i4", -1)), {"version": 1})

    def start(self, ctx) -> PointEvaluator:
        return _CoordEvaluator()


class _CoordEvaluator(PointEvaluator):
    def __init__(self) -> None:
        self.points = 0

    def evaluate(self, points, poll=None):
        import numpy as np

        out = []
        for coords in points:
            if CoordQuantity.fail_after >= 0 and self.points >= CoordQuantity.fail_after:
                raise RuntimeError("injected failure in the coord quantity")
            self.points += 1
            out.append(coords[0] + 10 * (coords[1] if len(coords) > 1 else 0.0))
        rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMIX_RANK", "0")))
        return {"coord_sum": np.array(out, dtype=np.float64), "coord_rank": np.full(len(out), rank, np.int32)}

    def facts(self):
        return {"coord_points": self.points}


# ------------------------------------------------------------------------------------------ plug-in losses
def regression_data(split: str):
    """y = x·w + noise on 64 features: a regression task (float targets of shape (N, 1))."""
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    x = torch.randn(96, 64, generator=g)
    w = torch.linspace(-1, 1, 64)
    return x, (x @ w + 0.1 * torch.randn(96, generator=g))[:, None]


def linear_regressor() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(64, 1)


def squared_error(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample squared error (no accuracy)."""
    return ((out - y) ** 2).sum(dim=1)


def margin_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample multi-class hinge loss, with accuracy through its ``correct`` attribute."""
    true = out.gather(1, y[:, None])
    return torch.clamp(1 + out - true, min=0).sum(dim=1) - 1


margin_loss.correct = lambda out, y: out.argmax(1) == y  # type: ignore[attr-defined]


def batch_mean_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A wrong plug-in: it reduces the batch."""
    return torch.nn.functional.cross_entropy(out, y)


# ------------------------------------------------------------------------------------------ Hessian-map models
class BNMLP(nn.Module):
    """1,184 weights in ≥ 2-dim tensors with eval-mode BatchNorm (non-trivial statistics) between them: small enough
    for a dense float64 Hessian per grid point (tests/test_hessian_map.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 10))
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            bn = self.net[2]
            bn.weight.copy_(0.5 + torch.rand(16, generator=g))
            bn.running_mean.copy_(0.2 * torch.randn(16, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(16, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def bn_mlp() -> nn.Module:
    return BNMLP()


class ScaleOnly(nn.Module):
    """Only a 1-D parameter: the default Hessian parameters (≥ 2 dims) are empty."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] * self.scale


def scale_only() -> nn.Module:
    return ScaleOnly()
