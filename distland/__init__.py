"""distland: distributed loss-landscape evaluation (Li et al., "Visualizing the Loss Landscape of Neural Nets").

Importing the package imports neither torch, h5py nor mpi4py; MPI lives in :mod:`distland.comm` alone.
The Python API (:mod:`distland.api`) is loaded on first use: ``distland.surface(model, data, ...)``,
``distland.interpolate``, ``distland.trajectory``, ``distland.read`` and the :class:`~distland.api.Surface` result.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = ("surface", "read", "interpolate", "trajectory", "Surface")

__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(".api", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
