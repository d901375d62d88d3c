"""distland.plot: figures, the [i, j] transposition, gaps, shared colour scales, trajectories and exports."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import Callable, Dict, Optional

import h5py
import matplotlib
import numpy as np
import pytest
import yaml

matplotlib.use("Agg")

from matplotlib import image as mpimg  # noqa: E402
from matplotlib.collections import QuadMesh  # noqa: E402

from distland import cli  # noqa: E402
from distland.plot import PlotError, PlotOptions  # noqa: E402
from distland.plot import cli as plot_cli  # noqa: E402
from distland.plot.common import choose_levels, load, plane, value_range, values  # noqa: E402
from distland.plot.export import export_html, export_vts, export_xdmf  # noqa: E402
from distland.plot.surface import plot_1d, plot_2d, plot_compare, save  # noqa: E402
from distland.plot.trajectory import read_trajectory  # noqa: E402

Fn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------------------------------- helpers
def paraboloid(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 0.5 + x ** 2 + 2.0 * y ** 2


def tilted(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Asymmetric in x and y: its maximum is at the largest x, which a swapped axis would misplace."""
    return 3.0 * x + 0.5 * y ** 2


def write_surface(path: str, x: np.ndarray, y: Optional[np.ndarray], fns: Dict[str, Fn],
                  done: Optional[np.ndarray] = None, overrides: Optional[Dict[tuple, float]] = None,
                  model: str = "democnn") -> str:
    """A surface file by the distland contract: [i, j] ↔ (x_i, y_j), a ``done`` mask and the job config."""
    shape = (len(x),) if y is None else (len(x), len(y))
    xx, yy = (x, np.zeros_like(x)) if y is None else np.meshgrid(x, y, indexing="ij")
    done = np.ones(shape, dtype=bool) if done is None else done
    config = {"model": model, "data": {"split": "train"}, "directions": {"norm": "filter", "kind": "random"},
              "grid": {"x": [float(x[0]), float(x[-1]), len(x)],
                       "y": None if y is None else [float(y[0]), float(y[-1]), len(y)]}}
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = x
        if y is not None:
            f["ycoordinates"] = y
        for name, fn in fns.items():
            v = np.asarray(fn(xx, yy), dtype=np.float64).copy()
            for idx, val in (overrides or {}).items():
                v[idx] = val
            v[~done] = 0.0       # what a pre-filled file may hold where nothing was computed yet
            f[name] = v
        f["done"] = done.astype(np.uint8)
        f.create_group("directions/x")
        f.attrs.update({"config": yaml.safe_dump(config), "distland_version": "0.1.0", "distland_layout": 1,
                        "model": model, "checkpoint_sha256": "0" * 64, "created": "2024-01-01T00:00:00"})
    return path


def write_legacy(path: str, x: np.ndarray, y: np.ndarray, fn: Fn) -> str:
    """A file as the paper authors' tool writes it: L(x_i, y_j) at [j, i], no done mask, no version."""
    xx, yy = np.meshgrid(x, y)          # (ny, nx)
    with h5py.File(path, "w") as f:
        f["xcoordinates"], f["ycoordinates"], f["train_loss"] = x, y, fn(xx, yy)
    return path


def assert_image(path: str, min_std: float = 0.02) -> None:
    """The file is a readable image with real content (not a blank canvas)."""
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(img[..., :3].std()) > min_std


X = np.linspace(-1.0, 1.0, 15)
Y = np.linspace(-0.5, 1.5, 11)     # non-square, not symmetric around 0


@pytest.fixture
def surf(tmp_path) -> str:
    return write_surface(str(tmp_path / "surf.h5"), X, Y, {"train_loss": paraboloid, "test_loss": tilted,
                                                           "train_acc": lambda a, b: 90 - 5 * a ** 2})


@pytest.fixture
def curve(tmp_path) -> str:
    x = np.linspace(-0.5, 1.5, 31)
    return write_surface(str(tmp_path / "curve.h5"), x, None,
                         {"train_loss": lambda a, _: 0.1 + a ** 2, "test_loss": lambda a, _: 0.3 + a ** 2,
                          "train_acc": lambda a, _: 99 - 10 * a ** 2, "test_acc": lambda a, _: 95 - 10 * a ** 2})


# ---------------------------------------------------------------------------------------------------- figures
@pytest.mark.parametrize("kind", ["contour", "contourf", "heatmap", "surface3d"])
def test_each_2d_kind_renders_a_real_image(surf, tmp_path, kind):
    data = load(surf)
    path = save(plot_2d(data, kind, PlotOptions()), str(tmp_path / f"{kind}.png"))
    assert_image(path)


def test_2d_title_comes_from_config(surf):
    fig = plot_2d(load(surf), "contour", PlotOptions(log=True))
    text = fig.get_suptitle()
    for part in ("democnn", "train_loss", "filter-normalized", "15×11", "split: train", "log"):
        assert part in text


def test_1d_has_loss_and_accuracy_on_twin_axes(curve, tmp_path):
    fig = plot_1d(load(curve), PlotOptions(log=True))
    loss_ax, acc_ax = fig.axes
    assert {l.get_label() for l in loss_ax.get_lines()} == {"train_loss", "test_loss"}
    assert {l.get_label() for l in acc_ax.get_lines()} == {"train_acc", "test_acc"}
    assert loss_ax.get_yscale() == "log"
    assert_image(save(fig, str(tmp_path / "curve.png")))


def test_heatmap_array_is_transposed_for_matplotlib_on_a_nonsquare_grid(tmp_path):
    x, y = np.linspace(0.0, 2.0, 7), np.linspace(-1.0, 0.5, 4)
    data = load(write_surface(str(tmp_path / "t.h5"), x, y, {"train_loss": tilted}))
    fig = plot_2d(data, "heatmap", PlotOptions())
    mesh = next(c for c in fig.axes[0].collections if isinstance(c, QuadMesh))
    z = np.asarray(mesh.get_array()).reshape(len(y), len(x))
    xx, yy = np.meshgrid(x, y)          # Z[j, i] = f(x_i, y_j) is what pcolormesh / contour want
    np.testing.assert_allclose(z, tilted(xx, yy))
    j, i = np.unravel_index(np.argmax(z), z.shape)
    assert i == len(x) - 1               # the maximum sits at the largest x
    np.testing.assert_allclose(plane(data, "train_loss", False), tilted(xx, yy))


def test_legacy_meshgrid_file_gives_the_same_plot_array(tmp_path):
    x, y = np.linspace(0.0, 2.0, 7), np.linspace(-1.0, 0.5, 4)
    ours = load(write_surface(str(tmp_path / "ours.h5"), x, y, {"train_loss": tilted}))
    old = load(write_legacy(str(tmp_path / "old.h5"), x, y, tilted))
    np.testing.assert_allclose(plane(old, "train_loss", False), plane(ours, "train_loss", False))


def test_unfinished_and_diverged_points_are_gaps_not_zeros(tmp_path):
    done = np.ones((len(X), len(Y)), dtype=bool)
    done[3, 4] = done[10, 2] = False
    data = load(write_surface(str(tmp_path / "gaps.h5"), X, Y, {"train_loss": paraboloid}, done=done,
                              overrides={(0, 0): np.inf, (1, 1): np.nan}))
    z = plane(data, "train_loss", False)
    for i, j in [(3, 4), (10, 2), (0, 0), (1, 1)]:
        assert z.mask[j, i]
    assert z.mask.sum() == 4 and float(z.min()) > 0.4
    fig = plot_2d(data, "heatmap", PlotOptions())
    mesh = next(c for c in fig.axes[0].collections if isinstance(c, QuadMesh))
    arr = mesh.get_array()
    assert np.ma.is_masked(arr) and arr.reshape(len(Y), len(X)).mask[4, 3]
    lo, hi = value_range([values(data, "train_loss", False)], PlotOptions())
    assert np.isfinite(hi) and lo > 0.4
    for kind in ("contour", "contourf", "surface3d"):
        assert_image(save(plot_2d(data, kind, PlotOptions()), str(tmp_path / f"gaps_{kind}.png")))


def test_levels_ignore_outliers_and_accept_overrides(tmp_path):
    data = load(write_surface(str(tmp_path / "o.h5"), X, Y, {"train_loss": paraboloid},
                              overrides={(0, 0): 1e12, (14, 10): np.inf}))
    v = values(data, "train_loss", False)
    lo, hi = value_range([v], PlotOptions())
    assert np.nanmin(v) - 0.5 < lo <= np.nanmin(v) and hi < 10
    assert value_range([v], PlotOptions(vmin=0.2, vmax=3.0)) == (0.2, 3.0)
    llo, lhi = value_range([values(data, "train_loss", True)], PlotOptions(log=True, vmin=0.1, vmax=10))
    assert (llo, lhi) == pytest.approx((-1.0, 1.0))
    fig = plot_2d(data, "contour", PlotOptions(vmin=0.5, vmax=3.0, levels=6))
    cs = fig.axes[0].collections[0]
    np.testing.assert_allclose(cs.levels, np.linspace(0.5, 3.0, 6))
    with pytest.raises(PlotError, match="vmin"):
        value_range([v], PlotOptions(vmin=3, vmax=1))


def test_a_flat_basin_in_steep_walls_gets_quantile_levels(tmp_path):
    data = load(write_surface(str(tmp_path / "basin.h5"), X, Y,
                              {"train_loss": lambda a, b: 0.1 + 40 * (a ** 2 + b ** 2) ** 4}))
    v = values(data, "train_loss", False)
    levels = choose_levels([v], PlotOptions())
    assert np.all(np.diff(levels) > 0) and levels[0] <= np.nanmin(v) and levels[-1] >= np.nanmax(v)
    assert np.sum(levels < (levels[0] + levels[-1]) / 2) > len(levels) * 0.6    # crowded in the basin
    fig = plot_2d(data, "heatmap", PlotOptions())
    norm = fig.axes[0].collections[0].norm
    np.testing.assert_allclose(norm(levels), np.linspace(0, 1, len(levels)), atol=1e-9)   # a colour per band
    assert_image(save(fig, str(tmp_path / "basin.png")))
    explicit = choose_levels([v], PlotOptions(vmin=0.0, vmax=40.0, levels=5))
    np.testing.assert_allclose(explicit, [0, 10, 20, 30, 40])


def test_a_comparison_keeps_the_quantile_levels_a_file_gets_alone(tmp_path):
    # A flat basin (quantile levels alone) beside a high plane whose values put the pooled median mid-range: the
    # comparison must not fall back to even levels that leave the basin with one contour.
    m = float(max(np.abs(X).max(), np.abs(Y).max()))
    basin = load(write_surface(str(tmp_path / "basin.h5"), X, Y,
                               {"train_loss": lambda a, b: 0.1 + 300 * ((a / m) ** 2 + (b / m) ** 2) ** 4 / 16},
                               model="basin"))
    plane_ = load(write_surface(str(tmp_path / "plane.h5"), X, Y,
                                {"train_loss": lambda a, b: 500 + 100 * (a + b) / m}, model="plane"))
    va, vb = values(basin, "train_loss", False), values(plane_, "train_loss", False)
    even = lambda lv: np.allclose(np.diff(lv), np.diff(lv)[0])   # noqa: E731
    assert not even(choose_levels([va], PlotOptions()))              # alone: quantiles
    pooled = np.concatenate([va.ravel(), vb.ravel()])
    assert np.median(pooled) > 0.25 * pooled.max()                   # the pooled test alone would say "even"
    levels = choose_levels([va, vb], PlotOptions())
    assert not even(levels) and np.sum(levels < 50) >= 4             # the basin keeps its contours
    fig = plot_compare([basin, plane_], "contour", PlotOptions())
    np.testing.assert_allclose(fig.axes[0].collections[0].levels, levels)
    assert even(choose_levels([va, vb], PlotOptions(vmin=0, vmax=700)))              # bounds given: even levels


@pytest.mark.parametrize("kind", ["heatmap", "contourf"])
def test_comparison_panels_share_one_colour_scale(tmp_path, kind):
    a = load(write_surface(str(tmp_path / "a.h5"), X, Y, {"train_loss": paraboloid}, model="sharp"))
    b = load(write_surface(str(tmp_path / "b.h5"), X, Y, {"train_loss": lambda p, q: 3 * paraboloid(p, q)},
                           model="flat"))
    fig = plot_compare([a, b], kind, PlotOptions())
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 2 and len(fig.axes) == 3          # two panels, one shared colorbar
    mappables = [ax.collections[0] for ax in panels]
    norms = {(m.norm.vmin, m.norm.vmax) for m in mappables}
    assert len(norms) == 1
    vmin, vmax = norms.pop()
    assert vmin <= paraboloid(X, Y[:, None]).min() and vmax >= 3 * paraboloid(1.0, 1.5) - 1e-9
    if kind == "contourf":
        np.testing.assert_array_equal(mappables[0].levels, mappables[1].levels)
    assert_image(save(fig, str(tmp_path / f"cmp_{kind}.png")))


def test_trajectory_overlay_labels_axes_with_explained_variance(surf, tmp_path):
    traj = str(tmp_path / "traj.h5")
    with h5py.File(traj, "w") as f:
        f["trajectory/coords"] = np.c_[np.linspace(0.9, 0.0, 8), np.linspace(1.2, 0.0, 8)]
        f["trajectory/labels"] = np.arange(0, 40, 5)
        f["trajectory/lr_drops"] = np.array([15, 30])
        f.attrs["explained_variance_ratio"] = np.array([0.8412, 0.1])
    fig = plot_2d(load(surf), "contour", PlotOptions(), trajectory=read_trajectory(traj))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "PC1: 84.1%" and ax.get_ylabel() == "PC2: 10.0%"
    drops = [l for l in ax.get_lines() if l.get_label() == "lr drop"][0]
    np.testing.assert_allclose(drops.get_xdata(), [0.9 - 0.9 * 3 / 7, 0.9 - 0.9 * 6 / 7])
    assert {t.get_text() for t in ax.texts} >= {"0", "35"}
    assert_image(save(fig, str(tmp_path / "traj.png")))


# ---------------------------------------------------------------------------------------------------- exports
def _vts_header_and_blocks(path: str):
    raw = open(path, "rb").read()
    start = raw.index(b"<AppendedData")
    header = ET.fromstring(raw[:start].decode() + "</VTKFile>")
    blob = raw[raw.index(b"_", start) + 1:]    # appended raw data: per array a UInt64 byte count, then the bytes

    def block(offset: int, dtype: str) -> np.ndarray:
        n = int(np.frombuffer(blob[offset:offset + 8], "<u8")[0])
        return np.frombuffer(blob[offset + 8:offset + 8 + n], dtype)

    return header, block


def test_vts_is_a_structured_grid_with_loss_as_height(tmp_path):
    x, y = np.linspace(0.0, 2.0, 6), np.linspace(-1.0, 0.5, 4)
    done = np.ones((6, 4), dtype=bool)
    done[2, 1] = False
    data = load(write_surface(str(tmp_path / "v.h5"), x, y, {"train_loss": tilted, "train_acc": tilted},
                              done=done))
    path = export_vts(data, str(tmp_path / "v_train_loss"), PlotOptions())
    assert path.endswith(".vts")
    header, block = _vts_header_and_blocks(path)
    assert header.get("type") == "StructuredGrid"
    ext = [int(v) for v in header.find("StructuredGrid").get("WholeExtent").split()]
    assert (ext[1] - ext[0] + 1) * (ext[3] - ext[2] + 1) * (ext[5] - ext[4] + 1) == 6 * 4
    arrays = {a.get("Name"): a for a in header.iter("DataArray")}
    assert {"points", "train_loss", "train_acc", "done", "valid"} <= set(arrays)
    pts = block(int(arrays["points"].get("offset")), "<f8").reshape(-1, 3)     # VTK order: x fastest
    xx, yy = np.meshgrid(x, y)
    np.testing.assert_allclose(pts[:, 0], xx.ravel())
    np.testing.assert_allclose(pts[:, 1], yy.ravel())
    expect = tilted(xx, yy).ravel()
    gap = 1 * 6 + 2                                          # point (i=2, j=1)
    np.testing.assert_allclose(np.delete(pts[:, 2], gap), np.delete(expect, gap))
    loss = block(int(arrays["train_loss"].get("offset")), "<f8")
    assert np.isnan(loss[gap]) and np.isfinite(pts[gap, 2])
    assert block(int(arrays["valid"].get("offset")), "u1")[gap] == 0


def test_xdmf_sidecar_points_into_the_h5_with_the_right_dimensions(tmp_path):
    x, y = np.linspace(0.0, 2.0, 6), np.linspace(-1.0, 0.5, 4)
    src = write_surface(str(tmp_path / "s.h5"), x, y, {"train_loss": tilted, "test_loss": tilted})
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    xmf = export_xdmf(load(src), str(out_dir / "s.xmf"))
    root = ET.parse(xmf).getroot()
    grid = root.find("Domain/Grid")
    assert grid.find("Topology").get("TopologyType") == "2DRectMesh"
    assert grid.find("Topology").get("Dimensions") == "6 4"          # stored [i, j]: y is the fastest index
    geo = grid.find("Geometry")
    assert geo.get("GeometryType") == "VXVY"
    vx, vy = geo.findall("DataItem")
    assert (vx.text, vx.get("Dimensions")) == ("../s.h5:/ycoordinates", "4")
    assert (vy.text, vy.get("Dimensions")) == ("../s.h5:/xcoordinates", "6")
    attrs = {a.get("Name"): a.find("DataItem") for a in grid.findall("Attribute")}
    assert set(attrs) == {"train_loss", "test_loss", "done"}
    assert attrs["train_loss"].get("Dimensions") == "6 4" and attrs["train_loss"].text == "../s.h5:/train_loss"
    h5_path, dset = attrs["train_loss"].text.split(":")
    with h5py.File(os.path.join(out_dir, h5_path), "r") as f:
        assert f[dset].shape == (6, 4)
    # The old tool's [j, i] files need no swap: x is their fastest index.
    old = export_xdmf(load(write_legacy(str(tmp_path / "old.h5"), x, y, tilted)), str(tmp_path / "old.xmf"))
    g = ET.parse(old).getroot().find("Domain/Grid")
    assert g.find("Topology").get("Dimensions") == "4 6"
    assert g.find("Geometry/DataItem").text == "old.h5:/xcoordinates"


def test_html_is_self_contained_and_holds_the_data(tmp_path):
    x, y = np.array([-1.0, 0.0, 1.0, 2.0]), np.array([0.0, 0.5, 1.0])
    done = np.ones((4, 3), dtype=bool)
    done[3, 2] = False
    data = load(write_surface(str(tmp_path / "h.h5"), x, y, {"train_loss": lambda a, b: 1.25 + a + 10 * b},
                              done=done))
    path = export_html(data, str(tmp_path / "h.html"), PlotOptions())
    text = open(path, encoding="utf-8").read()
    assert os.path.getsize(path) > 1_000_000                 # plotly.js inlined: opens offline
    assert "Plotly.newPlot" in text and "plotly.js" in text
    z = json.loads(re.search(r'"z":(\[\[.*?\]\])', text).group(1))
    assert z[0][1] == 1.25                                   # z[j][i]: (x=0, y=0)
    assert z[2][3] is None                                   # not done -> hole, not 0
    assert z[2][0] == pytest.approx(1.25 - 1 + 10)


def test_missing_plotly_gives_an_install_hint(surf, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    with pytest.raises(PlotError, match=r"pip install 'distland\[plot\]'"):
        export_html(load(surf), str(tmp_path / "x.html"), PlotOptions())


# ---------------------------------------------------------------------------------------------------- CLI
def _run(argv, capsys):
    parser = argparse.ArgumentParser(prog="distland")
    plot_cli.add_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plot", *argv])
    rc = args.func(args)
    return rc, capsys.readouterr()


def test_cli_writes_named_outputs(surf, tmp_path, capsys):
    out = tmp_path / "plots"
    rc, io = _run([surf, "--out", str(out), "--kinds", "contour,heatmap", "--metric", "test_loss",
                   "--vtk", "--xdmf", "--html"], capsys)
    assert rc == 0, io.err
    names = sorted(os.listdir(out))
    assert names == sorted(["surf_contour_test_loss.png", "surf_heatmap_test_loss.png", "surf_test_loss.vts",
                            "surf.xmf", "surf_test_loss.html"])
    for name in names:
        assert str(out / name) in io.out
    assert_image(str(out / "surf_contour_test_loss.png"))


def test_cli_compares_several_files_and_plots_1d(surf, curve, tmp_path, capsys):
    other = write_surface(str(tmp_path / "other.h5"), X, Y, {"train_loss": tilted})
    rc, io = _run([surf, other, "--kinds", "contourf", "--format", "pdf", "--log", "--vmin", "0.1"], capsys)
    assert rc == 0, io.err
    assert os.path.exists(tmp_path / "compare_surf_other_contourf_train_loss_log.pdf")
    rc, io = _run([curve, "--out", str(tmp_path)], capsys)
    assert rc == 0 and os.path.exists(tmp_path / "curve_1d.png")


def test_cli_errors_are_clear(surf, curve, tmp_path, capsys):
    rc, io = _run([str(tmp_path / "nope.h5")], capsys)
    assert rc == 2 and "no such file" in io.err and "nope.h5" in io.err
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    rc, io = _run([str(junk)], capsys)
    assert rc == 2 and "junk.h5" in io.err
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["weights"] = np.zeros(3)
    rc, io = _run([str(tmp_path / "other.h5")], capsys)
    assert rc == 2 and "not a surface file" in io.err
    empty = write_surface(str(tmp_path / "empty.h5"), X, Y, {"train_loss": paraboloid},
                          done=np.zeros((len(X), len(Y)), dtype=bool))
    rc, io = _run([empty], capsys)
    assert rc == 2 and "no points are done" in io.err
    rc, io = _run([curve, "--kinds", "contour"], capsys)
    assert rc == 2 and "--kinds 1d" in io.err
    rc, io = _run([surf, "--metric", "test_acc"], capsys)
    assert rc == 2 and "test_acc" in io.err
    with pytest.raises(SystemExit):
        _run([surf, "--kinds", "pie"], capsys)


def test_main_takes_an_argument_list(curve, tmp_path, capsys):
    assert cli.main(["plot", curve, "--out", str(tmp_path / "m")]) == 0
    assert os.path.exists(tmp_path / "m" / "curve_1d.png") and "curve_1d.png" in capsys.readouterr().out


def test_cli_module_does_not_import_matplotlib():
    code = "import sys, distland.plot.cli; sys.exit(1 if 'matplotlib' in sys.modules or 'plotly' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_every_2d_kind_has_exactly_one_drawing_function():
    from distland.plot.common import KINDS_2D
    from distland.plot.surface import DRAW_2D

    assert tuple(DRAW_2D) == KINDS_2D
