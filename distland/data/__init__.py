"""Data sets as whole tensors: ``load_split(name, split) -> (inputs, targets)``.

Surface evaluation runs the same samples at every grid point, so a split is decoded and normalized once and kept
as one float tensor (moved to the device once by the evaluator), never re-decoded per point.
Names: ``digits`` (scikit-learn's bundled 8×8 digits), ``synthetic`` (CIFAR-shaped, learnable), ``cifar10``
(the python-pickle release), or a plug-in ``"package.module:function"`` taking the split name.
"""
from __future__ import annotations

import importlib
import inspect
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


def _resolve(name: str, allow: Sequence[str] = ()) -> Callable[..., Split]:
    from ..models import import_object

    if ":" in name:
        return import_object(name, "data.name", allow)
    if name not in _LOADERS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(_LOADERS)} "
                         "(or a plug-in 'package.module:function' taking the split name)")
    mod, _, fn = _LOADERS[name].partition(":")
    return getattr(importlib.import_module(mod), fn)


def options_of(name: str) -> Tuple[str, ...]:
    """The ``data.options`` a built-in loader accepts."""
    params = inspect.signature(_resolve(name)).parameters
    return tuple(p for p in params if p != "split")


def load_split(name: str, split: str, max_samples: int = 0, class_targets: bool = True, *,
               allow: Sequence[str] = (), **options: Any) -> Split:
    """Load one split as ``(float inputs, int64 targets)``; ``max_samples > 0`` keeps the first that many.
    With ``class_targets=False`` (a plug-in loss, e.g. regression) targets may be any tensor and keep their dtype.

    ``options`` go to built-in loaders (e.g. ``root`` for cifar10; an unknown one is an error); plug-ins (from
    modules in ``allow``, see :func:`distland.models.allowed_plugins`) are called with the split name only.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    loader = _resolve(name, allow)
    if ":" in name:
        try:
            out = loader(split)
        except (ValueError, OSError, RuntimeError):
            raise
        except Exception as e:  # noqa: BLE001 - a plug-in's own bug or bad data: one line that names it
            raise ValueError(f"data loader {name!r} failed on split {split!r}: {type(e).__name__}: {e}") from None
    else:
        valid = options_of(name)
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"data.options: {unknown[0]!r} is not an option of data set {name!r}; valid: "
                             f"{', '.join(valid) or 'none'}")
        out = loader(split, **options)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        got = f"a {type(out).__name__} of length {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__
        raise ValueError(f"data loader {name!r} must return (inputs, targets), got {got}")
    return as_split(out, f"data {name!r} split {split!r}", max_samples, class_targets)


def as_split(pair: Any, where: str, max_samples: int = 0, class_targets: bool = True) -> Split:
    """``(inputs, targets)`` checked and converted as every split is: float inputs, int64 class indices (any
    targets for a plug-in loss: ``class_targets=False``), the same number of samples; ``max_samples > 0`` keeps the
    first that many."""
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise ValueError(f"{where}: expected a pair (inputs, targets), got {type(pair).__name__}")
    try:
        x, y = (torch.as_tensor(t) for t in pair)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{where}: inputs and targets must be tensors or arrays ({e})") from None
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{where}: {tuple(x.shape)} inputs but {tuple(y.shape)} targets")
    if class_targets and (y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or y.ndim != 1):
        raise ValueError(f"{where}: targets must be a 1-D integer tensor of class indices, got {tuple(y.shape)} "
                         f"{y.dtype} (a plug-in loss accepts any targets)")
    if not x.is_floating_point() and x.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        raise ValueError(f"{where}: inputs must be numbers, got {x.dtype}")
    if max_samples and max_samples > 0:
        x, y = x[:max_samples], y[:max_samples]
    x, y = x.detach().cpu(), y.detach().cpu()
    y = y.long() if class_targets else (y.float() if y.is_floating_point() else y)
    return x.float().contiguous(), y.contiguous()


def load_splits(source: Any, splits: Sequence[str], class_targets: bool = True, allow: Sequence[str] = ()
                ) -> Dict[str, Split]:
    """Each of ``splits`` of a data source (a config's ``data`` section: ``name``, ``max_samples``, ``root``,
    ``options``), in order; plug-ins only from ``allow``."""
    options = dict(source.options)
    if source.root:
        options["root"] = source.root
    subset, seed = getattr(source, "subset", 0), getattr(source, "subset_seed", 0)
    chunk = list(getattr(source, "split_index", []) or [])
    if not (subset or chunk):
        return {s: load_split(source.name, s, source.max_samples, class_targets, allow=allow, **options)
                for s in splits}
    out: Dict[str, Split] = {}
    for s in splits:
        x, y = load_split(source.name, s, 0, class_targets, allow=allow, **options)
        x, y = select(x, y, subset, seed, chunk if s == "train" else [])
        out[s] = (x[:source.max_samples], y[:source.max_samples]) if source.max_samples else (x, y)
    return out


def select(x: torch.Tensor, y: torch.Tensor, subset: int = 0, seed: int = 0, chunk: Sequence[int] = ()) -> Split:
    """The samples a job evaluates, in this order:

    1. ``chunk = [k, n]``: samples ``k·m … (k+1)·m − 1`` with ``m = N // n`` (the authors' ``--data_split n
       --split_idx k``: contiguous chunks of the train set in file order; the last ``N mod n`` samples belong
       to no chunk, as theirs);
    2. ``subset > 0``: that many samples drawn without replacement by ``torch.randperm`` under ``seed`` (kept
       in their original order, so the same seed gives the same samples on every machine and rank).
    """
    if chunk:
        k, n = int(chunk[0]), int(chunk[1])
        m = x.shape[0] // n
        if m == 0:
            raise ValueError(f"data.split_index {list(chunk)}: {x.shape[0]} samples cannot make {n} chunks")
        x, y = x[k * m:(k + 1) * m], y[k * m:(k + 1) * m]
    if subset:
        if subset > x.shape[0]:
            raise ValueError(f"data.subset {subset} is larger than the {x.shape[0]} samples available; lower it")
        keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(int(seed)))[:subset].sort().values
        x, y = x[keep], y[keep]
    return x.contiguous(), y.contiguous()
