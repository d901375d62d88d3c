"""The α/β grid: pure functions, no communication.

Points are numbered in row-major order of the ``(nx, ny)`` result arrays: flat index ``p = i * ny + j`` is the point
``(x_i, y_j)``, stored at ``[i, j]``. (The paper authors' tool stores it at ``[j, i]``.) A 1-D grid has ``ny = 1``
internally and arrays of shape ``(nx,)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .config import GridConfig, check_axis


@dataclass(frozen=True)
class Grid:
    """Coordinates of a 1-D (``y is None``) or 2-D grid."""

    x: np.ndarray
    y: Optional[np.ndarray] = None

    @classmethod
    def from_config(cls, cfg: GridConfig) -> "Grid":
        return cls(axis(*check_axis("grid.x", cfg.x)),
                   None if cfg.y is None else axis(*check_axis("grid.y", cfg.y)))

    @property
    def ndim(self) -> int:
        return 1 if self.y is None else 2

    @property
    def shape(self) -> Tuple[int, ...]:
        return (len(self.x),) if self.y is None else (len(self.x), len(self.y))

    @property
    def ny(self) -> int:
        return 1 if self.y is None else len(self.y)

    @property
    def size(self) -> int:
        return len(self.x) * self.ny

    def index(self, p: int) -> Tuple[int, ...]:
        """Array index of flat point ``p``."""
        i, j = divmod(int(p), self.ny)
        return (i,) if self.y is None else (i, j)

    def coords(self, p: int) -> Tuple[float, ...]:
        """``(α,)`` or ``(α, β)`` of flat point ``p``."""
        i, j = divmod(int(p), self.ny)
        return (float(self.x[i]),) if self.y is None else (float(self.x[i]), float(self.y[j]))


def axis(lo: float, hi: float, num: int) -> np.ndarray:
    """``num`` evenly spaced coordinates from ``lo`` to ``hi`` inclusive, in float64."""
    return np.linspace(float(lo), float(hi), int(num), dtype=np.float64)


def segments(points: Sequence[int], ny: int) -> List[Tuple[int, int, int, int]]:
    """Group sorted flat indices into ``(row, j0, j1, k0)`` runs: points ``k0..k0+(j1-j0)`` of the input are row
    ``row``, columns ``j0:j1``. One contiguous slab write per run keeps HDF5 I/O to a handful of calls per chunk."""
    out: List[Tuple[int, int, int, int]] = []
    k = 0
    n = len(points)
    while k < n:
        i, j0 = divmod(int(points[k]), ny)
        end = k + 1
        while end < n and int(points[end]) == int(points[end - 1]) + 1 and int(points[end]) // ny == i:
            end += 1
        out.append((i, j0, j0 + (end - k), k))
        k = end
    return out
