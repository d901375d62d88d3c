"""What one grid point computes: the seam where per-point quantities plug in.

A :class:`Quantity` declares the datasets it keeps in the surface file (:class:`~distland.surfacefile.QuantityLayout`:
names, dtypes, fill values, the settings that determine its values) and, on each rank, starts a
:class:`PointEvaluator` that computes those datasets for a unit of grid points on the rank's device. The scheduler,
the file, resume, ``done`` masks, progress and ``distland info`` handle every quantity alike without knowing what it
is. To add one: write a module here with a Quantity subclass, name it in :data:`REGISTRY`, and test it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

if TYPE_CHECKING:  # the config validates quantity names without importing torch
    import numpy as np
    import torch
    from torch import nn

    from ..engine import Engine
    from ..surfacefile import QuantityLayout

Tensors = Mapping[str, "torch.Tensor"]
Poll = Optional[Callable[[], None]]


@dataclass
class Context:
    """What every rank has built for the job, handed to each quantity it computes."""

    model: nn.Module                                  # θ* loaded, eval mode, on the host
    reference: Tensors                                # θ* as the directions see it (weights or states)
    directions: List[Tensors]                         # one per grid axis
    splits: Dict[str, Tuple[torch.Tensor, torch.Tensor]]
    engine: Engine                                    # as :func:`distland.engine.choose` made it for this rank
    coordinator: bool                                 # rank 0 of a multi-rank job: it must keep answering workers
    share: int                                        # points this rank can expect to compute for this quantity
    log_keys: Sequence[str] = ()                      # tensors moved geometrically (interpolated BN variances)


class PointEvaluator(ABC):
    """One rank's evaluator of a quantity, holding whatever it keeps on the device between units."""

    engine: Optional[Engine] = None   # the engine as it really runs (recorded in the file), if the quantity uses one

    @abstractmethod
    def evaluate(self, points: Sequence[Tuple[float, ...]], poll: Poll = None) -> Dict[str, np.ndarray]:
        """The quantity's datasets at each of ``points`` (grid coordinates), one array entry per point.
        ``poll`` (on the coordinator) must be called often, e.g. between forward batches."""

    def facts(self) -> Dict[str, int]:
        """Counts summed over ranks after the sweep and stored as root attributes (e.g. ``compiled_ranks``)."""
        return {}

    def finish(self, last_point: Tuple[float, ...]) -> Tuple[Dict[str, str], List[str]]:
        """On rank 0 after a sweep that computed points: attributes to store and lines for the summary."""
        return {}, []


class Quantity(ABC):
    """A per-point quantity of a surface job."""

    name: str = ""

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: object) -> "Quantity":
        """The quantity as the job's :class:`~distland.config.Config` asks for it."""

    @abstractmethod
    def layout(self) -> QuantityLayout:
        """The datasets it writes and the settings that determine their values."""

    @abstractmethod
    def start(self, ctx: Context) -> PointEvaluator:
        """Its evaluator on this rank (called on every rank that computes points of it)."""


# Quantity name (the config's ``quantities`` list) → where its class lives; imported only when a job uses it, so
# that validating a config needs no torch.
REGISTRY: Dict[str, str] = {
    "loss": "distland.quantities.loss:LossQuantity",
    "hessian": "distland.quantities.hessian:HessianQuantity",
}


def build(names: Sequence[str], cfg: object) -> List[Quantity]:
    """The quantities a job computes, in order, from their config names."""
    import importlib

    out = []
    for name in names:
        if ":" in name:  # a plug-in: "package.module:QuantityClass"
            from ..models import import_object

            cls = import_object(name, "quantity", getattr(cfg, "plugins", ()))
            if not (isinstance(cls, type) and issubclass(cls, Quantity)):
                raise ValueError(f"quantity {name!r} is not a distland.quantities.Quantity subclass")
        elif name in REGISTRY:
            module, attr = REGISTRY[name].split(":")
            cls = getattr(importlib.import_module(module), attr)
        else:
            raise ValueError(f"unknown quantity {name!r}; choose from {', '.join(REGISTRY)} "
                             "(or a plug-in 'package.module:QuantityClass')")
        out.append(cls.from_config(cfg))
    return out
