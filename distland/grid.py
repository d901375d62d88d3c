"""The α/β(/γ/…) grid: pure functions, no communication.

Points are numbered in row-major (C) order of the result arrays: on a 2-D grid flat index ``p = i * ny + j`` is the
point ``(x_i, y_j)``, stored at ``[i, j]``; on a K-D grid ``p`` is ``np.ravel_multi_index((i, j, k, …), shape)``,
the point ``(x_i, y_j, z_k, …)`` stored at ``[i, j, k, …]``. (The paper authors' tool stores 2-D at ``[j, i]``.) A
1-D grid has arrays of shape ``(nx,)``.

Axes are named ``x``, ``y``, ``z``, then ``axis4``, ``axis5``, …: the name gives the coordinates dataset
(``<name>coordinates``) and the directions group (``directions/<name>``) of the surface file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .config import GridConfig, check_axis


def axis_name(k: int) -> str:
    """The name of axis ``k`` (0-based): x, y, z, axis4, axis5, …"""
    return "xyz"[k] if k < 3 else f"axis{k + 1}"


def axis_names(ndim: int) -> List[str]:
    return [axis_name(k) for k in range(ndim)]


class Axes:
    """The axes of a grid held as ``x``, ``y`` (None for 1-D) and ``more`` (the axes after ``y``): shared by
    :class:`Grid` and :class:`distland.surfacefile.SurfaceData`."""

    x: np.ndarray
    y: Optional[np.ndarray]
    more: Tuple[np.ndarray, ...]

    @property
    def axes(self) -> Tuple[np.ndarray, ...]:
        return (self.x,) if self.y is None else (self.x, self.y) + tuple(self.more)

    @property
    def names(self) -> List[str]:
        return axis_names(self.ndim)

    @property
    def ndim(self) -> int:
        return 1 if self.y is None else 2 + len(self.more)


@dataclass(frozen=True)
class Grid(Axes):
    """Coordinates of a 1-D (``y is None``), 2-D or K-D grid (``more``: the axes after ``y``)."""

    x: np.ndarray
    y: Optional[np.ndarray] = None
    more: Tuple[np.ndarray, ...] = ()

    @classmethod
    def from_config(cls, cfg: GridConfig) -> "Grid":
        extra = [axis(*check_axis(f"grid.{axis_name(k + 2)}", a)) for k, a in enumerate(cfg.extra_axes())]
        return cls(axis(*check_axis("grid.x", cfg.x)),
                   None if cfg.y is None else axis(*check_axis("grid.y", cfg.y)), tuple(extra))

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(len(a) for a in self.axes)

    @property
    def ny(self) -> int:
        return 1 if self.y is None else len(self.y)

    @property
    def run(self) -> int:
        """Points per run of consecutive flat indices that one slab write can take: the last axis's length
        (the whole grid when 1-D)."""
        return len(self.axes[-1])

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def index(self, p: int) -> Tuple[int, ...]:
        """Array index of flat point ``p``."""
        return tuple(int(i) for i in np.unravel_index(int(p), self.shape))

    def coords(self, p: int) -> Tuple[float, ...]:
        """``(α,)``, ``(α, β)`` or ``(α, β, γ, …)`` of flat point ``p``."""
        return tuple(float(a[i]) for a, i in zip(self.axes, self.index(p)))


def axis(lo: float, hi: float, num: int) -> np.ndarray:
    """``num`` evenly spaced coordinates from ``lo`` to ``hi`` inclusive, in float64."""
    return np.linspace(float(lo), float(hi), int(num), dtype=np.float64)


def segments(points: Sequence[int], ny: int) -> List[Tuple[int, int, int, int]]:
    """Group sorted flat indices into ``(row, j0, j1, k0)`` runs: points ``k0..k0+(j1-j0)`` of the input are row
    ``row`` (the flat index over every axis but the last), last-axis positions ``j0:j1``. One contiguous slab write
    per run keeps HDF5 I/O to a handful of calls per chunk."""
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
