"""Loss functions a grid point (and training) can use: ``cross_entropy``, ``mse`` and plug-ins.

A criterion gives each sample's loss (summed in float64 over the whole split, then divided by the number of
samples, so a mean over batches of different sizes is exact) and, where it makes sense, whether each sample is
classified correctly (accuracy). ``mse`` is the paper authors' definition: the mean over classes of
(softmax(output) − one-hot(target))². A plug-in ``"package.module:function"`` takes ``(outputs, targets)`` and
returns the per-sample losses, shape (B,); it may carry a ``correct`` attribute with the same signature that
returns per-sample booleans, otherwise no accuracy is computed. Plug-in targets may be any tensor (regression).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .config import LOSSES

PerSample = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Criterion:
    """A loss: ``losses(outputs, targets)`` per sample, ``correct(outputs, targets)`` per sample or None."""

    name: str
    losses: PerSample
    correct: Optional[PerSample]
    class_targets: bool      # targets are class indices into the output's last dimension

    def per_sample(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each sample's loss, checked: a plug-in that reduced the batch would otherwise be silently wrong."""
        values = self.losses(outputs, targets)
        if values.shape != (outputs.shape[0],):
            raise ValueError(f"loss {self.name!r} returned shape {tuple(values.shape)} for a batch of "
                             f"{outputs.shape[0]}; it must return one loss per sample (reduction='none')")
        return values

    def mean(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean loss of a batch (what training and Hessian-vector products differentiate)."""
        return self.per_sample(outputs, targets).mean()


def _ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    one_hot = F.one_hot(y, out.shape[-1]).to(out.dtype)
    return ((torch.softmax(out, dim=-1) - one_hot) ** 2).mean(dim=-1)


def _argmax_correct(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return out.argmax(-1) == y


def resolve(spec: str, allow: Sequence[str] = ()) -> Criterion:
    """The criterion named by ``spec`` (a config's ``loss``); a plug-in only from a module in ``allow`` (see
    :func:`distland.models.allowed_plugins`)."""
    if spec == "cross_entropy":
        return Criterion(spec, _ce, _argmax_correct, True)
    if spec == "mse":
        return Criterion(spec, _mse, _argmax_correct, True)
    if ":" not in spec:
        raise ValueError(f"loss {spec!r} is not valid; choose {', '.join(LOSSES)} or a plug-in "
                         "'package.module:function' returning per-sample losses")
    from .models import import_object

    fn = import_object(spec, "loss", allow)
    if not callable(fn):
        raise ValueError(f"loss {spec!r} is not callable")
    correct = getattr(fn, "correct", None)
    return Criterion(spec, fn, correct if callable(correct) else None, False)
