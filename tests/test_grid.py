"""The grid and its partition into work: coordinates and flat indices, row segments, static blocks, unit sizes."""
from __future__ import annotations

import math

import numpy as np
import pytest

from distland.config import GridConfig
from distland.grid import Grid, axis, segments
from distland.schedule import TAIL_SECONDS, chunk_size, from_runs, take, to_runs


# --------------------------------------------------------------------------------------------- Grid
def test_2d_grid_flat_index_is_row_major_over_nx_by_ny():
    grid = Grid.from_config(GridConfig(x=[-1.0, 0.0, 3], y=[0.0, 2.0, 4]))
    assert grid.ndim == 2
    assert grid.shape == (3, 4) and grid.ny == 4 and grid.size == 12
    np.testing.assert_array_equal(grid.x, [-1.0, -0.5, 0.0])
    np.testing.assert_allclose(grid.y, [0.0, 2 / 3, 4 / 3, 2.0], rtol=0, atol=1e-15)
    assert grid.x.dtype == np.float64 and grid.y.dtype == np.float64
    seen = set()
    for p in range(grid.size):
        i, j = grid.index(p)
        assert p == i * 4 + j
        assert (i, j) == np.unravel_index(p, grid.shape)
        assert grid.coords(p) == (grid.x[i], grid.y[j])
        seen.add((i, j))
    assert seen == {(i, j) for i in range(3) for j in range(4)}
    assert grid.coords(4) == (-0.5, 0.0)  # second row starts at y_0
    assert grid.coords(11) == (0.0, 2.0)


def test_1d_grid_has_ny_1_and_plain_indices():
    grid = Grid.from_config(GridConfig(x=[-2.0, 2.0, 5], y=None))
    assert grid.ndim == 1 and grid.shape == (5,) and grid.ny == 1 and grid.size == 5
    for p in range(5):
        assert grid.index(p) == (p,)
        assert grid.coords(p) == (float(grid.x[p]),)
    assert [grid.coords(p)[0] for p in range(5)] == [-2.0, -1.0, 0.0, 1.0, 2.0]


def test_single_point_axes():
    grid = Grid.from_config(GridConfig(x=[0.0, 0.0, 1], y=[0.0, 0.0, 1]))
    assert grid.shape == (1, 1) and grid.size == 1
    assert grid.index(0) == (0, 0) and grid.coords(0) == (0.0, 0.0)
    line = Grid.from_config(GridConfig(x=[0.0, 0.0, 1], y=None))
    assert line.shape == (1,) and line.coords(0) == (0.0,)
    mixed = Grid.from_config(GridConfig(x=[-1.0, 1.0, 3], y=[0.0, 0.0, 1]))
    assert mixed.shape == (3, 1)
    assert [mixed.coords(p) for p in range(3)] == [(-1.0, 0.0), (0.0, 0.0), (1.0, 0.0)]


def test_axis_is_inclusive_and_exact_at_the_ends():
    a = axis(-0.3, 1.7, 11)
    assert len(a) == 11 and a[0] == -0.3 and a[-1] == 1.7
    np.testing.assert_allclose(np.diff(a), 0.2, rtol=1e-12)


# --------------------------------------------------------------------------------------------- segments
def test_segments_example():
    assert segments([0, 1, 2, 5, 6], 3) == [(0, 0, 3, 0), (1, 2, 3, 3), (2, 0, 1, 4)]
    assert segments([], 4) == []
    assert segments([7], 4) == [(1, 3, 4, 0)]
    assert segments(list(range(9)), 9) == [(0, 0, 9, 0)]  # a 1-D grid is one row


@pytest.mark.parametrize("ny", [1, 2, 3, 7])
def test_segments_cover_every_point_once_in_maximal_row_runs(ny):
    rng = np.random.default_rng(ny)
    for _ in range(30):
        n = int(rng.integers(0, 40))
        points = sorted(rng.choice(max(n, 1) * 2, size=n, replace=False).tolist()) if n else []
        runs = segments(points, ny)
        rebuilt = []
        for i, j0, j1, k in runs:
            assert 0 <= j0 < j1 <= ny
            assert k == len(rebuilt)
            for t in range(j1 - j0):
                assert points[k + t] == i * ny + j0 + t
            rebuilt.extend(i * ny + j for j in range(j0, j1))
        assert rebuilt == points
        for (i, _, j1, _), (i2, j0b, _, _) in zip(runs, runs[1:]):
            assert not (i == i2 and j1 == j0b), "two runs that could have been one write"


# --------------------------------------------------------------------------------------------- static blocks
@pytest.mark.parametrize("nranks", [1, 2, 5, 64])
def test_chunk_size_bounds(nranks):
    for remaining in range(0, 60):
        for rate in (0.0, 0.3, 3.0, 40.0, 1e9):
            for fixed in (0, 1, 4, 1000):
                c = chunk_size(remaining, nranks, rate, fixed=fixed)
                if remaining <= 0:
                    assert c == 0
                    continue
                assert 1 <= c <= remaining
                if fixed:
                    assert c == min(fixed, remaining)
                else:
                    # a fair share, or (fast points) the least work a unit holds
                    assert c <= max(math.ceil(remaining / (2 * nranks)), math.ceil(rate * TAIL_SECONDS)) or c == 1
                    if rate == 0.0:
                        assert c == 1  # unknown speed: one point


def test_chunk_size_caps_and_targets():
    assert chunk_size(-5, 4) == 0
    assert chunk_size(100_000, 1, rate=1e9) == 4096  # max_chunk bounds what a killed rank loses
    assert chunk_size(100_000, 1, rate=1e9, max_chunk=17) == 17
    assert chunk_size(100_000, 1, rate=40.0, target_seconds=0.5) == 20  # about half a second of work
    assert chunk_size(100_000, 1, rate=0.01) == 1  # slow points go one at a time
    assert chunk_size(10, 2, rate=40.0) == 3  # guided: ceil(10 / (2*2))
    assert chunk_size(10, 2, rate=1e9) == 10  # ...but a unit keeps TAIL_SECONDS of work: 10 points are 10 ns
    assert chunk_size(1000, 16, rate=1000.0) == 50  # guided 32 < 0.05 s of work at 1000 points/s
    assert chunk_size(100_000, 1, rate=1e9, fixed=3000) == 3000  # a fixed chunk is honoured as given


def test_chunk_size_slow_start():
    # Unknown cost: 1, 2, 4, … points.
    sizes, prev = [], 0
    for _ in range(4):
        prev = chunk_size(100_000, 4, 0.0, previous=prev)
        sizes.append(prev)
    assert sizes == [1, 2, 4, 8]
    # Known but possibly optimistic cost: at most 4x the previous unit, however high the rate looks.
    assert chunk_size(100_000, 4, rate=1e6, previous=2) == 8
    assert chunk_size(100_000, 4, rate=1e6, previous=1000) == 4000
    assert chunk_size(100_000, 4, rate=10.0, previous=1000) == 5   # slower than thought: shrink at once
    # The caps still hold during the ramp.
    assert chunk_size(10, 2, rate=10.0, previous=100) == 3
    assert chunk_size(100_000, 1, rate=1e9, previous=4000) == 4096


@pytest.mark.parametrize("points", [[], [7], list(range(5, 2505)), [0, 1, 2, 5, 6, 9, 11, 12], list(range(0, 40, 2)),
                                    [3, 2, 1]])
def test_runs_round_trip(points):
    runs = to_runs(points)
    assert from_runs(runs) == points
    assert all(start < stop for start, stop in runs)
    if points == list(range(5, 2505)):
        assert runs == [(5, 2505)]   # a fresh sweep's unit is one run, however long
    if points == [0, 1, 2, 5, 6, 9, 11, 12]:
        assert runs == [(0, 3), (5, 7), (9, 10), (11, 13)]


def test_take():
    queue = list(range(10))
    assert take(queue, 3) == [0, 1, 2] and queue == list(range(3, 10))
    assert take(queue, 100) == list(range(3, 10)) and queue == []
