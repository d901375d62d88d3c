"""Directions in weight space (Li et al. 2018, §4): random Gaussian, normalized per filter / layer / weight.

All functions are pure: they take and return ordered ``{state_dict key: tensor}`` mappings and never touch a model.
A direction has one entry per key of the weights it perturbs — ``named_parameters()`` for ``type: weights``, the
full ``state_dict()`` (BatchNorm running statistics included) for ``type: states``.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from .config import NORMS
from .grid import axis_names

Tensors = Dict[str, torch.Tensor]
_EPS = 1e-10   # guards 0/0 for an all-zero filter of θ* (then the direction's filter is zero too)


class DirectionError(ValueError):
    """A direction cannot be built or does not match the model."""


def reference_weights(model: nn.Module, kind: str = "weights") -> Tensors:
    """The tensors a direction moves, detached and cloned to float32-safe CPU copies, in model order."""
    if kind == "weights":
        items = [(k, p) for k, p in model.named_parameters()]
    elif kind == "states":
        items = list(model.state_dict().items())
    else:
        raise DirectionError(f"directions.type {kind!r} is not valid; choose weights or states")
    return OrderedDict((k, v.detach().cpu().clone()) for k, v in items)


def movable(t: torch.Tensor) -> bool:
    """Integer buffers (``num_batches_tracked``) never move."""
    return t.is_floating_point()


def random_direction(reference: Mapping[str, torch.Tensor], generator: torch.Generator) -> Tensors:
    """A Gaussian tensor per key, drawn in key order from ``generator`` (float32 on CPU, so it is reproducible on
    any device and any number of ranks)."""
    out: Tensors = OrderedDict()
    for key, ref in reference.items():
        if movable(ref):
            out[key] = torch.randn(ref.shape, generator=generator, dtype=torch.float32).to(ref.dtype)
        else:
            out[key] = torch.zeros_like(ref)
    return out


def normalize(direction: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], norm: str = "filter",
              ignore: str = "biasbn") -> Tensors:
    """Scale ``direction`` tensor by tensor; returns new tensors.

    - ``filter``: each slice along dim 0 (a conv filter, a linear row) gets the norm of the same slice of θ*:
      d_i ← d_i / ‖d_i‖ · ‖θ_i‖ (the paper's filter normalization);
    - ``layer``: the whole tensor gets the tensor's norm; ``weight``: d ⊙ θ;
    - ``dfilter`` / ``dlayer``: unit-norm filters / tensors; ``none``: unchanged.
    One-dimensional tensors (biases, BatchNorm) are zeroed under ``ignore: biasbn``; under ``ignore: none`` they
    are normalized like a layer (``filter`` and ``layer``), never copied from θ*. Integer tensors are always zero.
    """
    if norm not in NORMS:
        raise DirectionError(f"directions.norm {norm!r} is not valid; choose one of {', '.join(NORMS)}")
    if ignore not in ("biasbn", "none"):
        raise DirectionError(f"directions.ignore {ignore!r} is not valid; choose biasbn or none")
    check_compatible(direction, reference)
    out: Tensors = OrderedDict()
    for key, ref in reference.items():
        d = direction[key].detach().to(torch.float64)
        theta = ref.detach().to(torch.float64)
        if not movable(ref) or (d.dim() <= 1 and ignore == "biasbn"):
            out[key] = torch.zeros_like(ref)
            continue
        out[key] = _scale(d, theta, norm).to(ref.dtype)
    return out


def _scale(d: torch.Tensor, theta: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "none":
        return d
    if norm == "weight":
        return d * theta
    if norm in ("filter", "dfilter") and d.dim() > 1:
        flat = d.reshape(d.shape[0], -1)
        dn = flat.norm(dim=1, keepdim=True)
        target = theta.reshape(theta.shape[0], -1).norm(dim=1, keepdim=True) if norm == "filter" else 1.0
        return (flat / (dn + _EPS) * target).reshape(d.shape)
    # layer / dlayer, and filter / dfilter on 1-D tensors (kept only under ignore: none)
    target = theta.norm() if norm in ("filter", "layer") else 1.0
    return d / (d.norm() + _EPS) * target


def check_compatible(direction: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                     source: str = "direction") -> None:
    """Raise :class:`DirectionError` naming the first differing key or shape."""
    missing = [k for k in reference if k not in direction]
    extra = [k for k in direction if k not in reference]
    if missing or extra:
        raise DirectionError(f"{source} does not match the model: missing {missing[:3]}, unexpected {extra[:3]} "
                             f"({len(missing)} missing, {len(extra)} unexpected); was it made for another model "
                             "or another directions.type?")
    for key, ref in reference.items():
        if tuple(direction[key].shape) != tuple(ref.shape):
            raise DirectionError(f"{source} tensor {key!r} has shape {tuple(direction[key].shape)}, the model's has "
                                 f"{tuple(ref.shape)}; was it made for another model?")


def make_random(reference: Mapping[str, torch.Tensor], seed: int, norm: str, ignore: str, ndim: int,
                same_dir: bool = False, ynorm: str = "", yignore: str = "") -> List[Tensors]:
    """``ndim`` normalized random directions from one seeded stream (x first, then y, z, …: the first two of a
    K-D job are the 2-D job's). ``same_dir``: every axis repeats x's direction. ``ynorm`` / ``yignore`` ("" = as
    x) normalize the other axes differently (the authors' ``--ynorm`` / ``--yignore``); the draws are the same,
    so only the scaling differs from a surface without them."""
    gen = torch.Generator().manual_seed(int(seed))
    raw = random_direction(reference, gen)
    dirs = [normalize(raw, reference, norm, ignore)]
    for _ in range(1, ndim):
        raw_k = raw if same_dir else random_direction(reference, gen)
        dirs.append(normalize(raw_k, reference, ynorm or norm, yignore or ignore))
    return dirs


def interpolation(reference: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                  source: str = "directions.target") -> Tensors:
    """The direction θ′ − θ, so that θ + α(θ′ − θ) = (1−α)θ + αθ′ (integer buffers stay put)."""
    check_compatible(target, reference, source)
    return OrderedDict((k, (target[k].to(ref.dtype) - ref) if movable(ref) else torch.zeros_like(ref))
                       for k, ref in reference.items())


def variance_keys(reference: Mapping[str, torch.Tensor]) -> List[str]:
    """The BatchNorm running variances among ``reference``'s keys (``type: states`` only has them).

    An interpolation moves them geometrically, var(α) = var₀^(1−α) · var₁^α (linear in log var, as suits a scale).
    That is exact at α = 0 and 1 and > 0 for every α. The linear mix (1−α)var₀ + αvar₁ turns negative beyond α = 1
    as soon as var₁ < var₀ (BatchNorm then takes the root of a negative number: NaN at every point), and a linear
    mix of standard deviations reaches 0 there (BatchNorm divides by √ε: the loss explodes). Inside (0, 1) the
    geometric mix lies below the linear one (at α = ½ it is √(var₀var₁) instead of (var₀ + var₁)/2).
    """
    return [k for k, v in reference.items() if k.endswith("running_var") and movable(v)]


def load_file(path: Union[str, Path], reference: Mapping[str, torch.Tensor], ndim: int) -> List[Tensors]:
    """Directions from a file: ours (``directions/x/<key>``) or the paper authors' tool (``xdirection/0..k-1`` in
    parameter order). Shapes are checked against ``reference``."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise DirectionError(f"direction file {str(p)!r} not found; set directions.file to an existing file")
    out: List[Tensors] = []
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise DirectionError(f"direction file {str(p)!r} is not a readable HDF5 file ({e})") from None
    with f:
        # K-D: directions/z, directions/axis4, … (the authors' layout has x and y only)
        for axis, legacy in zip(axis_names(ndim), ("xdirection", "ydirection") + ("",) * max(0, ndim - 2)):
            if f"directions/{axis}" in f:
                group = f[f"directions/{axis}"]
                d = OrderedDict((k, torch.from_numpy(np.asarray(group[k])) if k in group else None) for k in reference)
                absent = [k for k, v in d.items() if v is None]
                if absent:
                    raise DirectionError(f"direction file {str(p)!r} has no tensor {absent[0]!r} in directions/{axis} "
                                         f"({len(absent)} missing); was it made for another model or directions.type?")
            elif legacy and legacy in f:
                d = _legacy(f[legacy], reference, str(p), legacy)
            else:
                found = f"neither directions/{axis} nor {legacy}" if legacy else f"no directions/{axis}"
                raise DirectionError(f"direction file {str(p)!r} has {found}; "
                                     f"a {ndim}-D surface needs {ndim} direction(s)")
            check_compatible(d, reference, f"direction file {str(p)!r} ({axis})")
            # Integer buffers never move: the authors' `states` files hold num_batches_tracked differences as
            # integers, which would otherwise be added with a float step (and are meaningless for evaluation).
            out.append(OrderedDict((k, v.to(reference[k].dtype) if movable(reference[k])
                                    else torch.zeros_like(reference[k])) for k, v in d.items()))
    return out


def _legacy(group, reference: Mapping[str, torch.Tensor], path: str, name: str) -> Tensors:
    # The original tool stores one dataset per tensor, numbered in parameter (or state_dict) order.
    names = sorted(group.keys(), key=lambda s: int(s) if s.isdigit() else -1)
    if len(names) != len(reference):
        raise DirectionError(f"direction file {path!r} group {name} has {len(names)} tensors, the model has "
                             f"{len(reference)}; check directions.type (weights vs states) and the model")
    return OrderedDict((k, torch.from_numpy(np.asarray(group[n]))) for k, n in zip(reference, names))


def to_numpy(direction: Mapping[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    return OrderedDict((k, v.detach().cpu().numpy()) for k, v in direction.items())


def from_numpy(arrays: Mapping[str, np.ndarray]) -> Tensors:
    return OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in arrays.items())


def build(reference: Mapping[str, torch.Tensor], kind: str, norm: str, ignore: str, seed: int, ndim: int,
          same_dir: bool = False, file: str = "", target: Optional[Mapping[str, torch.Tensor]] = None,
          target2: Optional[Mapping[str, torch.Tensor]] = None, ynorm: str = "", yignore: str = ""
          ) -> List[Tensors]:
    """The directions for a job.

    - ``random``: seeded Gaussian directions, normalized per axis (``ynorm`` / ``yignore`` for y);
    - ``interp``: x = θ′ − θ*; a 2-D interpolation adds a random y direction (the first draw of ``seed``,
      normalized with ``ynorm`` / ``yignore``, else ``norm`` / ``ignore``);
    - ``plane``: x = θ′ − θ*, y = θ″ − θ* (the plane through three models: (0,0) = θ*, (1,0) = θ′, (0,1) = θ″);
    - ``file``: read from a direction file.
    """
    if kind == "random":
        return make_random(reference, seed, norm, ignore, ndim, same_dir, ynorm, yignore)
    if kind == "interp":
        if target is None:
            raise DirectionError("directions.kind 'interp' needs the target weights (directions.target)")
        out = [interpolation(reference, target)]
        if ndim == 2:
            gen = torch.Generator().manual_seed(int(seed))
            out.append(normalize(random_direction(reference, gen), reference, ynorm or norm, yignore or ignore))
        return out
    if kind == "plane":
        if target is None or target2 is None:
            raise DirectionError("directions.kind 'plane' needs the weights of directions.target and target2")
        if ndim != 2:
            raise DirectionError("directions.kind 'plane' is 2-D: set grid.y")
        return [interpolation(reference, target), interpolation(reference, target2, "directions.target2")]
    if kind == "file":
        return load_file(file, reference, ndim)
    raise DirectionError(f"directions.kind {kind!r} is not valid; choose random, interp, plane or file")
