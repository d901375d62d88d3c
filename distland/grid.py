"""The α/β grid and how its points are cut into work: pure functions, no communication.

Points are numbered in row-major order of the ``(nx, ny)`` result arrays: flat index ``p = i * ny + j`` is the point
``(x_i, y_j)``, stored at ``[i, j]``. (The paper authors' tool stores it at ``[j, i]``.) A 1-D grid has ``ny = 1``
internally and arrays of shape ``(nx,)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

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


def static_blocks(n: int, nranks: int) -> List[Tuple[int, int]]:
    """Split ``range(n)`` into ``nranks`` contiguous blocks whose sizes differ by at most one (the original tool's
    static partition; kept for the benchmark baseline and the rank-0 fallback tests)."""
    base, extra = divmod(n, nranks)
    bounds, start = [], 0
    for r in range(nranks):
        stop = start + base + (1 if r < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


TAIL_SECONDS = 0.05   # the least work a unit holds once the speed is known (see chunk_size)
GROWTH = 4   # slow start: a rank's next unit is at most this many times its previous one


def chunk_size(remaining: int, nranks: int, rate: float = 0.0, target_seconds: float = 0.5,
               max_chunk: int = 4096, fixed: int = 0, previous: int = 0) -> int:
    """Points in the next work unit for a rank whose previous unit had ``previous`` points (0: none yet).

    About ``target_seconds`` of work at ``rate`` (one rank's measured points per second; 0 while unknown), so
    the coordinator's message rate stays low with fast models while slow points (a full CIFAR pass) go one at a
    time. Never more than a fair share: the guided cap ``remaining / (2·nranks)`` shrinks units towards the end so
    no rank is left holding a long one while the others idle, but not below TAIL_SECONDS of work. Slow start:
    while the cost is unknown units go 1, 2, 4, …, and after that each is at most GROWTH× the rank's previous one,
    so one optimistic timing (a point measured while an oversubscribed rank briefly had a core to itself) cannot
    hand out a unit that outlasts everyone else's work. ``max_chunk`` bounds what a killed rank can lose.
    """
    if remaining <= 0:
        return 0
    if fixed > 0:
        return min(fixed, remaining)
    guided = math.ceil(remaining / (2 * max(1, nranks)))
    if rate > 0:
        timed = math.ceil(rate * target_seconds)
        if previous > 0:
            timed = min(timed, GROWTH * previous)
    else:
        timed = 2 * previous if previous > 0 else 1
    size = min(remaining, max_chunk, guided, timed)
    if rate > 0:
        # The guided cap must not shrink units below TAIL_SECONDS of work: at the end of a fast sweep, one-point
        # units would cost a round trip each for a millisecond of work, and the imbalance this allows is small.
        size = max(size, min(remaining, max_chunk, timed, math.ceil(rate * TAIL_SECONDS)))
    return max(1, size)


def to_runs(points: Sequence[int]) -> List[Tuple[int, int]]:
    """``points`` as ``(start, stop)`` runs of consecutive indices: a work unit's message stays a few bytes
    (a fresh sweep's unit is one run), below MPI's eager limit however many points it holds."""
    out: List[Tuple[int, int]] = []
    for p in points:
        p = int(p)
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1)
        else:
            out.append((p, p + 1))
    return out


def from_runs(runs: Sequence[Tuple[int, int]]) -> List[int]:
    """The points of :func:`to_runs`' output, in order."""
    return [p for start, stop in runs for p in range(start, stop)]


def take(queue: List[int], n: int) -> List[int]:
    """Pop the first ``n`` points off ``queue`` (in place) and return them."""
    head = queue[:n]
    del queue[:n]
    return head


def iter_chunks(points: Sequence[int], n: int) -> Iterator[List[int]]:
    """Consecutive fixed-size chunks of ``points``."""
    for k in range(0, len(points), n):
        yield list(points[k:k + n])
