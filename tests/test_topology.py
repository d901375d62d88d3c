"""Topology of surfaces (docs/topology.md): minima, merge levels, basins, distances, on surfaces known exactly."""
from __future__ import annotations

import heapq
import math
import sys
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import yaml

from distland.analysis import topology as T
from distland.analysis.sharpness import format_report, read_report, sharpness_report, store_report


# ---------------------------------------------------------------------------------------------------- helpers
def brute_pairs(values, valid):
    """(birth, death) of every minimum by a minimax search from each one, independent of the union-find.

    Points are ordered by (loss, flat index); a minimum's death is the lowest level at which it is joined, inside
    the sublevel set, to an earlier point (a Dijkstra search that pops points by loss and tracks the running max).
    """
    flat, ok, shape = values.reshape(-1), valid.reshape(-1), values.shape
    strides = np.cumprod((1,) + shape[::-1])[:-1][::-1]

    def nbrs(p):
        idx = np.unravel_index(p, shape)
        for ax in range(len(shape)):
            for s in (-1, 1):
                j = idx[ax] + s
                if 0 <= j < shape[ax]:
                    q = p + s * int(strides[ax])
                    if ok[q]:
                        yield q

    key = lambda p: (flat[p], p)  # noqa: E731
    pairs = []
    for m in np.flatnonzero(ok):
        if any(key(q) < key(m) for q in nbrs(m)):
            continue
        heap, seen, level, death = [(flat[m], m)], {m}, -math.inf, math.inf
        while heap:
            v, p = heapq.heappop(heap)
            level = max(level, v)
            if key(p) < key(m):
                death = level
                break
            for q in nbrs(p):
                if q not in seen:
                    seen.add(q)
                    heapq.heappush(heap, (flat[q], q))
        if death > flat[m]:
            pairs.append((flat[m], death))
    return np.array(sorted(pairs)).reshape(-1, 2)


def sorted_pairs(d):
    d = np.asarray(d, float).reshape(-1, 2)
    return d[np.lexsort((d[:, 1], d[:, 0]))]


def rastrigin_like(eps=0.1, step=1 / 8, lim=2.0):
    """g(x) + g(y), g(x) = 1 − cos 2πx + εx²: on this grid the minima are exactly the integer lattice points."""
    axis = np.arange(-lim, lim + step / 2, step)
    g = 1 - np.cos(2 * np.pi * axis) + eps * axis ** 2
    return axis, g[:, None] + g[None, :]


def two_wells(x, y, sigma=0.25):
    # e^{−y²/2σ²} · h(x) with h < 0: every path between the wells climbs at least max h between them.
    return -(0.5 * np.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2))
             + 1.0 * np.exp(-((x - 1) ** 2 + y ** 2) / (2 * sigma ** 2)))


# ---------------------------------------------------------------------------------------------------- merge tree
def test_one_d_by_hand():
    v = np.array([3.0, 1.0, 4.0, 0.0, 5.0, 2.0, 6.0])
    tree = T.merge_tree(v)
    assert tree.minima.tolist() == [3, 1, 5]                       # deepest first
    assert tree.birth.tolist() == [0.0, 1.0, 2.0]
    assert tree.death.tolist() == [math.inf, 4.0, 5.0]
    assert tree.saddle.tolist() == [-1, 2, 4]
    assert tree.parent.tolist() == [-1, 0, 0]                      # both merge into the global minimum
    # Index 1's component holds the edge point 0 from level 3; index 3's from 4 (when it absorbs 0..2).
    assert tree.edge.tolist() == [4.0, 3.0, math.inf]
    assert tree.spill.tolist() == [4.0, 3.0, 5.0]
    r = T.topology_numbers(v, [np.arange(7.0) - 3])                # the centre (0) is index 3, the global minimum
    assert r["n_minima"] == 3 and r["n_components"] == 1
    assert r["total_persistence"] == 6.0 and r["max_persistence"] == 3.0
    assert r["centre_loss"] == 0.0 and r["centre_is_global"] == 1.0 and r["centre_spill_edge"] == 1.0
    assert r["centre_depth"] == 4.0 and r["centre_barrier"] == 4.0
    assert r["centre_basin_points"] == 1                           # {L < 4} around index 3 is index 3 alone
    assert r["centre_basin_area"] == 1.0 and r["centre_basin_fraction"] == 1 / 6


def test_thresholds_count_persistence_relative_to_the_range():
    # Persistences 0.3, 1 and 8 (global: inf) on a range of 10 (0 … 10); "exceeds" is strict.
    v = np.array([0.0, 9.0, 1.0, 4.0, 3.0, 3.5, 3.2, 10.0])
    tree = T.merge_tree(v)
    assert sorted_pairs(tree.diagram()).tolist() == [[0.0, math.inf], [1.0, 9.0], [3.0, 4.0], [3.2, 3.5]]
    r = T.topology_numbers(v, thresholds=(0.01, 0.05, 0.1, 0.5))
    assert r["loss_range"] == 10.0
    assert (r["n_minima_1pct"], r["n_minima_5pct"], r["n_minima_10pct"], r["n_minima_50pct"]) == (4, 3, 2, 2)
    assert r["total_persistence"] == pytest.approx(9.3) and r["total_persistence_rel"] == pytest.approx(0.93)


@pytest.mark.parametrize("shape", [(40,), (9, 11), (5, 4, 6)])
def test_union_find_equals_brute_force_and_gudhi(shape):
    rng = np.random.default_rng(len(shape))
    for trial in range(3):
        v = np.round(rng.random(shape), 1 if trial == 0 else 6)     # trial 0 has many ties (plateaus)
        done = rng.random(shape) > 0.1
        v[rng.random(shape) < 0.05] = np.nan                        # diverged points inside the done ones
        valid = done & np.isfinite(v)
        mine = sorted_pairs(T.merge_tree(v, done).diagram())
        np.testing.assert_array_equal(mine, brute_pairs(np.where(valid, v, np.nan), valid))
        np.testing.assert_array_equal(mine, sorted_pairs(T.persistence_diagram(v, done)))


def test_rastrigin_like_minima_and_merge_levels_are_exact():
    eps = 0.1
    axis, v = rastrigin_like(eps)
    tree = T.merge_tree(v)
    lattice = [(m, n) for m in range(-2, 3) for n in range(-2, 3)]
    assert len(tree.minima) == 25
    got = {tuple(float(axis[i]) for i in tree.coords(k)): (tree.birth[k], tree.death[k])
           for k in range(len(tree.minima))}
    assert set(got) == {(float(m), float(n)) for m, n in lattice}
    for m, n in lattice:
        birth, death = got[(float(m), float(n))]
        assert birth == pytest.approx(eps * (m * m + n * n), abs=1e-12)
        if (m, n) == (0, 0):
            assert death == math.inf
        else:   # over the lowest ridge towards the centre: g(½) = 2 + ε/4 on top of the other coordinate's g
            exits = [(abs(m) - 0.5) ** 2 + n * n] if m else []
            exits += [m * m + (abs(n) - 0.5) ** 2] if n else []
            assert death == pytest.approx(2 + eps * min(exits), abs=1e-12)
    r = T.topology_numbers(v, [axis, axis])
    assert r["n_minima"] == r["n_minima_10pct"] == 25 and r["n_components"] == 1
    assert r["centre_is_global"] == 1.0 and r["centre_min_loss"] == 0.0
    # The global well absorbs its shallower neighbours (at 2 + ε/4, then 2 + 5ε/4) and first reaches the grid's
    # edge when it absorbs the well at (±2, 0) over the ridge x = ±1.5: depth = barrier = 2 + 2.25ε, a lower
    # bound (spilled at the edge). Its basin is the 3×3 block of wells below that level, inside [-1.5, 1.5]².
    assert r["centre_depth"] == pytest.approx(2 + 2.25 * eps, abs=1e-12) and r["centre_spill_edge"] == 1.0
    assert r["centre_barrier"] == r["centre_depth"]
    assert 0.2 < r["centre_basin_fraction"] < 9 / 16


def test_gaussian_wells_barrier_out_of_the_shallow_centre_well():
    x, y = np.linspace(-1, 2, 31), np.linspace(-1, 1, 21)
    v = two_wells(x[:, None], y[None, :])
    r = T.topology_numbers(v, [x, y])
    assert r["n_minima"] == 2 and r["n_components"] == 1
    between = (x > 1e-9) & (x < 1 - 1e-9)
    saddle = v[between, 10].max()                                   # y = 0 is row 10
    assert r["centre_loss"] == v[10, 10] and r["centre_min_loss"] == v[10, 10]
    assert r["centre_is_global"] == 0.0 and r["centre_spill_edge"] == 0.0
    assert r["centre_barrier"] == pytest.approx(saddle - v[10, 10], abs=1e-15)
    assert r["centre_depth"] == r["centre_barrier"]
    assert r["max_persistence"] == pytest.approx(saddle - v[10, 10], abs=1e-15)
    tree = T.merge_tree(v)
    assert tree.coords(0) == (20, 10) and tree.coords(1) == (10, 10)   # deep well at x = 1, shallow at 0
    assert tree.parent[1] == 0 and np.unravel_index(tree.saddle[1], v.shape)[1] == 10
    # The basin below the saddle holds the centre and not the deep well.
    assert 1 <= r["centre_basin_points"] < (v < saddle).sum()


def test_bowl_basin_spills_at_the_grid_edge_and_counts_the_disc():
    x = np.linspace(-1, 1, 21)
    v = x[:, None] ** 2 + x[None, :] ** 2
    r = T.topology_numbers(v, [x, x])
    assert r["n_minima"] == 1 and r["total_persistence"] == 0.0 and r["max_persistence"] == 0.0
    assert r["centre_spill_edge"] == 1.0 and r["centre_depth"] == pytest.approx(1.0)
    assert r["centre_barrier"] == pytest.approx(1.0)
    inside = (v < 1 - 1e-12)   # the lowest edge points are (±1, 0), (0, ±1) at exactly 1
    assert r["centre_basin_points"] == inside.sum()
    assert r["centre_basin_area"] == pytest.approx(inside.sum() * 0.01)   # no edge point inside: full cells
    assert r["centre_basin_fraction"] == pytest.approx(inside.sum() * 0.01 / 4)


def test_three_d_bowl():
    x = np.linspace(-1, 1, 11)
    v = x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2
    r = T.topology_numbers(v, [x, x, x])
    assert r["n_minima"] == 1 and "centre_z" in r and r["centre_depth"] == pytest.approx(1.0)
    assert r["centre_basin_points"] == (v < 1 - 1e-12).sum()


# ---------------------------------------------------------------------------------------------------- invalid points
def test_pending_point_opens_the_basin_and_diverged_point_is_a_wall():
    x = np.linspace(-1, 1, 21)
    v = x[:, None] ** 2 + x[None, :] ** 2
    done = np.ones(v.shape, bool)
    done[15, 10] = False                                            # (0.5, 0) pending
    r = T.topology_numbers(v, [x, x], done)
    # The basin is open as soon as it reaches a neighbour of the pending point: (0.4, 0) at 0.16.
    assert r["centre_spill_edge"] == 1.0 and r["centre_depth"] == pytest.approx(0.16)
    assert r["n_excluded"] == 1 and r["n_valid"] == 440
    diverged = v.copy()
    diverged[15, 10] = np.nan                                       # done, but NaN: a wall, not an opening
    r = T.topology_numbers(diverged, [x, x], np.ones(v.shape, bool))
    assert r["centre_depth"] == pytest.approx(1.0) and r["n_excluded"] == 1
    assert r["centre_basin_points"] == (v < 1 - 1e-12).sum() - 1


def test_a_wall_of_diverged_points_splits_the_grid_into_components():
    v = np.array([1.0, 0.0, 1.0, np.inf, 2.0, 0.5, 2.0])
    r = T.topology_numbers(v)
    assert r["n_components"] == 2 and r["n_minima"] == 2 and r["n_minima_10pct"] == 2
    assert r["n_excluded"] == 1 and r["loss_max"] == 2.0     # inf is excluded, never part of the range
    assert sorted_pairs(T.merge_tree(v).diagram()).tolist() == [[0.0, math.inf], [0.5, math.inf]]
    assert T.topology_numbers(np.full(4, np.nan)) == {"n_valid": 0.0, "n_excluded": 4.0}


# ---------------------------------------------------------------------------------------------------- distances
def test_distances_are_zero_for_equal_surfaces_and_see_a_shift():
    axis, v = rastrigin_like()
    d = T.compare(v, v)
    assert d == {"bottleneck": 0.0, "bottleneck_rel": 0.0}
    d = T.compare(v, v + 0.25)
    assert d["bottleneck"] == pytest.approx(0.25)                   # every point moves by (0.25, 0.25)
    assert d["bottleneck_rel"] == pytest.approx(0.0, abs=1e-12)     # rescaled to [0, 1], the shift is gone
    smooth = axis[:, None] ** 2 + axis[None, :] ** 2                # one minimum: 24 fewer points to match
    assert T.compare(v, smooth)["bottleneck_rel"] > 0.1
    assert T.diagram_distance([[0, math.inf]], [[0, math.inf], [1, math.inf]]) == math.inf
    assert T.diagram_distance([[0, math.inf], [1, 3]], [[0.5, math.inf]]) == 1.0   # (1, 3) to the diagonal


def test_missing_gudhi_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gudhi", None)                 # import gudhi now raises ImportError
    with pytest.raises(T.MissingDependency, match=r"pip install"):
        T.persistence_diagram(np.zeros(3))
    # The numbers need no library.
    assert T.topology_numbers(np.array([1.0, 0.0, 1.0]))["n_minima"] == 1


# ---------------------------------------------------------------------------------------------------- report, plot
def _data(x, y, v, done=None):
    return SimpleNamespace(x=x, y=y, metrics={"train_loss": v}, done=np.ones(v.shape, bool) if done is None else done,
                           attrs={}, config={"directions": {"kind": "random"}}, path="t.h5")


def test_sharpness_report_carries_topology_and_stores_it(tmp_path):
    axis, v = rastrigin_like()
    report = sharpness_report(_data(axis, axis, v))
    assert report["topology.n_minima"] == 25 and report["topology.centre_x"] == 0.0
    text = format_report(report, "train_loss")
    assert "topology    25 minima" in text and "centre basin minimum 0" in text
    path = str(tmp_path / "s.h5")
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = axis
    store_report(path, report, "train_loss")
    with h5py.File(path, "r") as f:
        back = read_report(dict(f.attrs))
        assert f.attrs["sharpness.topology.n_minima_5pct"] == 25.0
    assert back["topology.centre_depth"] == pytest.approx(report["topology.centre_depth"])


def _write(path, x, y, v):
    with h5py.File(path, "w") as f:
        f["xcoordinates"], f["ycoordinates"] = x, y
        f["train_loss"], f["done"] = v, np.ones(v.shape, np.uint8)
        f.attrs.update({"distland_layout": 1, "config": yaml.safe_dump({"model": "m", "directions": {}})})
    return path


def test_plot_persistence_side_by_side_and_info(tmp_path, capsys):
    from distland.info import describe_surface
    from distland import cli

    axis, v = rastrigin_like(step=1 / 4)
    a = _write(str(tmp_path / "a.h5"), axis, axis, v)
    b = _write(str(tmp_path / "b.h5"), axis, axis, axis[:, None] ** 2 + axis[None, :] ** 2)
    assert cli.main(["plot", a, b, "--kinds", "persistence", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    png = tmp_path / "compare_a_b_persistence_train_loss.png"
    assert f"wrote {png}" in out and png.stat().st_size > 10_000
    assert cli.main(["plot", a, "--kinds", "persistence", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "a_persistence_train_loss.png").exists()
    from distland.plot.topology import distances_text
    from distland.plot.common import PlotOptions, load

    assert "b vs a: bottleneck" in distances_text([load(a), load(b)], PlotOptions())
    assert "topology    25 minima" in describe_surface(a)
