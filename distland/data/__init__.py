"""Data sets as whole tensors: ``load_split(name, split) -> (inputs, targets)``.

Surface evaluation runs the same samples at every grid point, so a split is decoded and normalized once and kept
as one float tensor (moved to the device once by the evaluator), never re-decoded per point.
Names: ``digits`` (scikit-learn's bundled 8×8 digits), ``synthetic`` (CIFAR-shaped, learnable), ``cifar10``
(the python-pickle release), or a plug-in ``"package.module:function"`` taking the split name.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Sequence, Tuple

import torch

Split = Tuple[torch.Tensor, torch.Tensor]
SPLITS = ("train", "test")
_LOADERS: Dict[str, str] = {
    "digits": "distland.data.digits:load",
    "synthetic": "distland.data.synthetic:load",
    "cifar10": "distland.data.cifar10:load",
}


def names() -> Tuple[str, ...]:
    return tuple(_LOADERS)


def _resolve(name: str) -> Callable[..., Split]:
    from ..models import import_object

    if ":" in name:
        return import_object(name, "data.name")
    if name not in _LOADERS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(_LOADERS)} "
                         "(or a plug-in 'package.module:function' taking the split name)")
    mod, _, fn = _LOADERS[name].partition(":")
    return getattr(importlib.import_module(mod), fn)


def load_split(name: str, split: str, max_samples: int = 0, **options: Any) -> Split:
    """Load one split as ``(float inputs, int64 targets)``; ``max_samples > 0`` keeps the first that many.

    ``options`` go to built-in loaders (e.g. ``root`` for cifar10); plug-ins are called with the split name only.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    loader = _resolve(name)
    out = loader(split) if ":" in name else loader(split, **options)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError(f"data loader {name!r} must return (inputs, targets), got {type(out).__name__}")
    return as_split(out, f"data {name!r} split {split!r}", max_samples)


def as_split(pair: Any, where: str, max_samples: int = 0) -> Split:
    """``(inputs, targets)`` checked and converted as every split is: float inputs, int64 class indices, the same
    number of samples; ``max_samples > 0`` keeps the first that many."""
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise TypeError(f"{where}: expected a pair (inputs, targets), got {type(pair).__name__}")
    x, y = (torch.as_tensor(t) for t in pair)
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{where}: {x.shape[0] if x.ndim else 0} inputs but {y.shape[0] if y.ndim else 0} targets")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or y.ndim != 1:
        raise ValueError(f"{where}: targets must be a 1-D integer tensor of class indices, "
                         f"got {tuple(y.shape)} {y.dtype}")
    if max_samples and max_samples > 0:
        x, y = x[:max_samples], y[:max_samples]
    return x.detach().cpu().float().contiguous(), y.detach().cpu().long().contiguous()


def load_splits(source: Any, splits: Sequence[str]) -> Dict[str, Split]:
    """Each of ``splits`` of a data source (a config's ``data`` section: ``name``, ``max_samples``, ``root``,
    ``options``), in order."""
    options = dict(source.options)
    if source.root:
        options["root"] = source.root
    return {s: load_split(source.name, s, source.max_samples, **options) for s in splits}
