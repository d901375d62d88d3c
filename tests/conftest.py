"""Shared helpers for the serial test files: small configs, checkpoints with non-trivial BatchNorm, independent
loss evaluation with plain torch, and file fingerprints.

Everything here stays small (a few hundred digits, grids of a handful of points, one thread) so the serial suite
runs in well under a minute on a shared two-core machine.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

torch.set_num_threads(1)

SAMPLES = 150
# Keys every small job sets: one thread, no progress lines, few samples, a tiny grid.
BASE_OVERRIDES = (
    f"data.max_samples={SAMPLES}",
    "engine.threads=1",
    "engine.device=cpu",
    "sweep.progress=false",
    "grid.x=[-1, 1, 3]",
    "grid.y=[-1, 1, 3]",
)


def overrides_for(output: Path, *extra: str) -> List[str]:
    """``--set`` strings for a small job writing ``output`` (later entries win)."""
    return [*BASE_OVERRIDES, f"output={output}", *extra]


def small_config(output: Path, *extra: str):
    from distland.config import load_config

    return load_config(None, overrides_for(output, *extra))


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def small_config_dict(output: Path, **top: object) -> Dict[str, object]:
    """The same small job as a YAML mapping (for the CLI)."""
    data: Dict[str, object] = {
        "model": "democnn",
        "data": {"name": "digits", "max_samples": SAMPLES},
        "grid": {"x": [-1, 1, 3], "y": [-1, 1, 3]},
        "engine": {"threads": 1, "device": "cpu"},
        "sweep": {"progress": False},
        "output": str(output),
    }
    data.update(top)
    return data


def randomize_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics (defaults are 1/0/0/1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.3 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                m.num_batches_tracked.fill_(7)
    return model


def make_model(name: str = "democnn", seed: int = 0, **kwargs) -> nn.Module:
    from distland.models import build_model

    torch.manual_seed(seed)
    return randomize_batchnorm(build_model(name, **kwargs), seed + 1000).eval()


def save_checkpoint(path: Path, name: str = "democnn", seed: int = 0) -> Path:
    torch.save(make_model(name, seed).state_dict(), path)
    return path


def plain_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Tuple[float, float]:
    """Mean cross-entropy and accuracy (percent) in eval mode, the textbook way."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = F.cross_entropy(logits.double(), y).item()
        acc = 100.0 * (logits.argmax(1) == y).double().mean().item()
    return loss, acc


def perturbed(model: nn.Module, theta: Mapping[str, torch.Tensor], directions: Sequence[Mapping[str, object]],
              coeffs: Sequence[float]) -> nn.Module:
    """``model`` (modified in place) at θ + Σ c_k d_k, computed in float64 per tensor of ``theta``."""
    state = model.state_dict()
    with torch.no_grad():
        for key, base in theta.items():
            value = base.detach().double().clone()
            for c, d in zip(coeffs, directions):
                value += float(c) * torch.as_tensor(d[key]).double()
            state[key].copy_(value.to(state[key].dtype))
    return model


def fingerprint(path: Path) -> Tuple[bytes, int]:
    """Bytes and modification time of a file: a refused run must change neither."""
    return Path(path).read_bytes(), os.stat(path).st_mtime_ns


@pytest.fixture
def digits_train():
    from distland.data import load_split

    return load_split("digits", "train", SAMPLES)
