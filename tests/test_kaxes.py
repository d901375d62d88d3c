"""Landscapes with K >= 3 axes: the grid and its index contract, the rank-K file, random directions per axis, the
sweep (serial, resumed, under mpirun), planes cut by ``--slice``, volume exports and the K-D sharpness report."""
from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest
import torch

from distland import directions as D
from distland import slicing
from distland.analysis.sharpness import sharpness_report
from distland.config import ConfigError
from distland.data import load_split
from distland.evaluate import SurfaceEvaluator
from distland.grid import Grid, axis_names
from distland.cli import main as cli_main
from distland.quantities.loss import LossQuantity
from distland.surfacefile import SurfaceData, SurfaceSpec, SurfaceWriter, read
from distland.sweep import run_surface

from conftest import SAMPLES, make_model, perturbed, plain_loss, save_checkpoint, small_config

_EVALUATE = SurfaceEvaluator.evaluate
GRID3 = ("grid.x=[-1, 1, 3]", "grid.y=[-0.5, 1, 4]", "grid.z=[-0.5, 0.5, 5]")   # 60 points, z holds 0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "theta.pt", seed=5)


@pytest.fixture(scope="module")
def volume(tmp_path_factory, checkpoint):
    out = tmp_path_factory.mktemp("vol") / "vol.h5"
    summary = run_surface(small_config(out, f"checkpoint={checkpoint}", *GRID3))
    assert summary.computed == 60 and summary.grid == (3, 4, 5)
    return out


# ------------------------------------------------------------------------------------------------ the grid
def test_grid_flat_index_is_c_order_over_k_axes():
    axes = [np.linspace(-1, 1, 3), np.linspace(0, 3, 4), np.linspace(-2, 2, 5), np.array([7.0, 8.0])]
    grid = Grid(axes[0], axes[1], tuple(axes[2:]))
    assert grid.ndim == 4 and grid.shape == (3, 4, 5, 2) and grid.size == 120 and grid.run == 2
    assert grid.names == ["x", "y", "z", "axis4"] == axis_names(4)
    for p in (0, 1, 17, 59, 119):
        idx = grid.index(p)
        assert idx == tuple(int(i) for i in np.unravel_index(p, grid.shape))
        assert grid.coords(p) == tuple(float(a[i]) for a, i in zip(axes, idx))
    # 1-D and 2-D are what they always were
    g2 = Grid(np.arange(3.0), np.arange(4.0))
    assert g2.index(7) == (1, 3) and g2.run == 4 and Grid(np.arange(5.0)).index(4) == (4,)


def test_grid_config_axes_and_their_errors(tmp_path):
    cfg = small_config(tmp_path / "a.h5", *GRID3, "grid.more=[[0, 1, 2]]")
    assert Grid.from_config(cfg.grid).shape == (3, 4, 5, 2)
    with pytest.raises(ConfigError, match="grid.z needs grid.y"):
        small_config(tmp_path / "a.h5", "grid.y=null", "grid.z=[-1, 1, 3]")
    with pytest.raises(ConfigError, match="set grid.z"):
        small_config(tmp_path / "a.h5", "grid.more=[[0, 1, 2]]")
    with pytest.raises(ConfigError, match=r"grid.z: num must be"):
        small_config(tmp_path / "a.h5", "grid.z=[-1, 1, 0]")


def test_writer_places_k_d_points_and_reader_returns_them(tmp_path):
    grid = Grid(np.linspace(-1, 1, 3), np.linspace(0, 2, 4), (np.linspace(5, 6, 5), np.array([0.0, 1.0])))
    spec = SurfaceSpec(grid=grid, quantities=[LossQuantity(("train",)).layout()], identity={"job": 1},
                       attrs={"config": "model: democnn\n"},
                       directions=[{"w": np.full((2, 2), k, np.float32)} for k in range(4)])
    path = str(tmp_path / "w.h5")
    points = [p for p in range(grid.size) if p % 7 not in (2, 3)]   # runs broken across rows and planes
    with SurfaceWriter.open(path, spec, "create", {"io": "serial"}) as w:
        for chunk in np.array_split(np.array(points), 9):
            w.write("loss", chunk.tolist(), {"train_loss": chunk * 10.0, "train_acc": chunk * 1.0})
        assert w.pending("loss") == [p for p in range(grid.size) if p % 7 in (2, 3)]
    with h5py.File(path, "r") as f:
        assert f["train_loss"].shape == grid.shape and f["done"].shape == grid.shape
        for name, a in zip(grid.names, grid.axes):
            np.testing.assert_array_equal(f[f"{name}coordinates"][()], a)
            assert f[f"directions/{name}/w"][0, 0] == grid.names.index(name)
    data = read(path)
    assert data.ndim == 4 and data.shape == grid.shape and data.names == grid.names
    for p in range(grid.size):
        idx = grid.index(p)
        if p in points:
            assert data.done[idx] and data.metrics["train_loss"][idx] == 10.0 * p
        else:
            assert not data.done[idx] and np.isnan(data.metrics["train_loss"][idx])


# ------------------------------------------------------------------------------------------------ the sweep
def test_3d_surface_equals_point_by_point_recomputation(volume, checkpoint):
    data = read(str(volume))
    assert data.complete and data.shape == (3, 4, 5)
    with h5py.File(volume, "r") as f:
        dirs = [{k: torch.from_numpy(f[f"directions/{a}/{k}"][()]) for k in f[f"directions/{a}"]} for a in "xyz"]
    state = torch.load(checkpoint)

    def at_theta():   # θ* with its BatchNorm statistics
        model = make_model("democnn")
        model.load_state_dict(state)
        return model

    theta = D.reference_weights(at_theta(), "weights")
    x, y = load_split("digits", "train", SAMPLES)
    for i, j, k in [(0, 0, 0), (2, 3, 4), (1, 2, 3), (0, 3, 1), (2, 0, 2)]:
        coeffs = (data.x[i], data.y[j], data.more[0][k])
        loss, acc = plain_loss(perturbed(at_theta(), theta, dirs, coeffs), x, y)
        assert data.metrics["train_loss"][i, j, k] == pytest.approx(loss, rel=1e-5), (i, j, k)
        assert data.metrics["train_acc"][i, j, k] == pytest.approx(acc, abs=1e-9)
    # the summary's minimum names all three coordinates; the z-direction is used (planes differ)
    assert not np.allclose(data.metrics["train_loss"][:, :, 0], data.metrics["train_loss"][:, :, 4])


def test_first_two_axes_are_the_2d_jobs_and_z0_plane_is_the_2d_surface(tmp_path, volume, checkpoint):
    flat = tmp_path / "flat.h5"
    run_surface(small_config(flat, f"checkpoint={checkpoint}", *GRID3[:2]))
    with h5py.File(volume, "r") as f3, h5py.File(flat, "r") as f2:
        assert "zcoordinates" not in f2 and f2["train_loss"].shape == (3, 4)
        for a in "xy":
            assert sorted(f3[f"directions/{a}"]) == sorted(f2[f"directions/{a}"])
            for k in f2[f"directions/{a}"]:
                assert f3[f"directions/{a}/{k}"][()].tobytes() == f2[f"directions/{a}/{k}"][()].tobytes()
        z = {k: f3[f"directions/z/{k}"][()] for k in f3["directions/z"]}
        assert any(np.abs(z[k] - f3[f"directions/x/{k}"][()]).max() > 0 for k in z)   # a third, new direction
    model = make_model("democnn")
    made = D.make_random(D.reference_weights(model), 0, "filter", "biasbn", 3)
    two = D.make_random(D.reference_weights(model), 0, "filter", "biasbn", 2)
    assert all(torch.equal(made[a][k], two[a][k]) for a in (0, 1) for k in two[0])
    plane = slicing.take(read(str(volume)), {"z": "0"})
    np.testing.assert_allclose(plane.metrics["train_loss"], read(str(flat)).metrics["train_loss"], rtol=1e-12)


def test_3d_resume_after_interruption(tmp_path, monkeypatch, volume, checkpoint):
    out = tmp_path / "r.h5"
    cfg = small_config(out, f"checkpoint={checkpoint}", *GRID3, "sweep.chunk=1")
    calls = []

    def evaluate(ev, coeffs, poll=None):
        if len(calls) >= 23:
            raise KeyboardInterrupt("simulated interruption")
        calls.append(tuple(coeffs))
        return _EVALUATE(ev, coeffs, poll)

    monkeypatch.setattr(SurfaceEvaluator, "evaluate", evaluate)
    with pytest.raises(KeyboardInterrupt):
        run_surface(cfg)
    assert int(read(str(out)).done.sum()) == 23
    calls.clear()
    monkeypatch.setattr(SurfaceEvaluator, "evaluate", _EVALUATE)
    summary = run_surface(cfg)
    assert summary.computed == 37
    with h5py.File(out, "r") as a, h5py.File(volume, "r") as b:
        keys = ["train_loss", "train_acc", "done", "zcoordinates"] + [f"directions/z/{k}" for k in b["directions/z"]]
        for k in keys:
            assert a[k][()].tobytes() == b[k][()].tobytes(), k
    # a 3-D file is not resumed as another grid
    from distland.surfacefile import SurfaceError

    with pytest.raises(SurfaceError, match="different job"):
        run_surface(small_config(out, f"checkpoint={checkpoint}", *GRID3[:2], "grid.z=[-0.5, 0.5, 3]"))


@pytest.mark.mpi
def test_3d_under_mpirun_equals_serial(tmp_path):
    from test_mpi import arrays, assert_same, run, write_config

    grid = {"x": [-1.0, 1.0, 3], "y": [-0.5, 1.0, 3], "z": [-1.0, 1.0, 4]}
    serial, parallel = write_config(tmp_path, "serial", grid=grid), write_config(tmp_path, "np2", grid=grid)
    r = run(0, serial)
    assert r.returncode == 0, r.stderr
    r = run(2, parallel)
    assert r.returncode == 0, r.stderr
    a, b = arrays(tmp_path / "serial.h5"), arrays(tmp_path / "np2.h5")
    assert a["train_loss"].shape == (3, 3, 4)
    assert_same(b, a)
    with h5py.File(tmp_path / "np2.h5", "r") as f:
        assert f.attrs["io"] == "mpio" and "directions/z" in f


# ------------------------------------------------------------------------------------------------ slicing
def test_slices_are_the_planes_and_lines_of_the_volume(volume):
    data = read(str(volume))
    v = data.metrics["train_loss"]
    default = slicing.take(data)          # z at the point nearest 0
    assert default.ndim == 2 and default.section == {"z": 0.0} and default.labels == ("x", "y")
    np.testing.assert_array_equal(default.metrics["train_loss"], v[:, :, 2])
    xz = slicing.take(data, slicing.parse("y=@1"))
    assert xz.labels == ("x", "z") and xz.section == {"y": data.y[1]}
    np.testing.assert_array_equal(xz.metrics["train_loss"], v[:, 1, :])
    np.testing.assert_array_equal(xz.x, data.x)
    np.testing.assert_array_equal(xz.y, data.more[0])
    line = slicing.take(data, slicing.parse("x=1,z=@-1"))
    assert line.ndim == 1 and line.labels == ("y",)
    np.testing.assert_array_equal(line.metrics["train_loss"], v[2, :, 4])
    for text, match in [("w=0", "has axes x, y, z"), ("z=0.3", "nearest is 0.25"), ("z=@9", "5 points"),
                        ("z", "AXIS=COORDINATE"), ("x=0,y=0,z=0", "leave one or two")]:
        with pytest.raises(slicing.SliceError, match=match):
            slicing.take(data, slicing.parse(text))


def test_plot_cli_slices_and_exports_a_volume(tmp_path, volume, capsys):
    out = tmp_path / "plots"
    assert cli_main(["plot", str(volume), "--out", str(out), "--slice", "y=@1", "--kinds", "contour,persistence",
                      "--vtk", "--xdmf"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"vol_y{read(str(volume)).y[1]:g}_contour_train_loss.png",
                            f"vol_y{read(str(volume)).y[1]:g}_persistence_train_loss.png",
                            "vol_train_loss.vti", "vol.xmf"])
    data = read(str(volume))
    # the .vti is XML with base64 arrays, x fastest; decoded it is the volume
    image = ET.parse(out / "vol_train_loss.vti").getroot().find("ImageData")
    assert image.get("WholeExtent") == "0 2 0 3 0 4"
    assert [float(s) for s in image.get("Origin").split()] == [-1.0, -0.5, -0.5]
    assert np.allclose([float(s) for s in image.get("Spacing").split()], [1.0, 0.5, 0.25])
    arrays = {a.get("Name"): a for a in image.iter("DataArray")}
    raw = base64.b64decode(arrays["train_loss"].text)
    assert int(np.frombuffer(raw[:4], "<u4")[0]) == 60 * 8
    got = np.frombuffer(raw[4:], "<f8").reshape(5, 4, 3).transpose(2, 1, 0)
    np.testing.assert_array_equal(got, data.metrics["train_loss"])
    assert set(arrays) >= {"train_loss", "train_acc", "done", "valid"}
    # the .xmf references the file's rank-3 datasets with matching dimensions
    xgrid = ET.parse(out / "vol.xmf").getroot().find("Domain/Grid")
    assert xgrid.find("Topology").get("TopologyType") == "3DRectMesh"
    assert xgrid.find("Topology").get("Dimensions") == "3 4 5"
    refs = [d.text.split(":/")[1] for d in xgrid.iter("DataItem")]
    assert refs[:3] == ["zcoordinates", "ycoordinates", "xcoordinates"] and "train_loss" in refs
    with h5py.File(volume, "r") as f:
        for d in xgrid.iter("DataItem"):
            assert tuple(int(n) for n in d.get("Dimensions").split()) == f[d.text.split(":/")[1]].shape
    # a bad slice is one line and exit 2, nothing written
    assert cli_main(["plot", str(volume), "--out", str(tmp_path / "none"), "--slice", "q=0"]) == 2
    assert "has axes x, y, z" in capsys.readouterr().err and not (tmp_path / "none").exists()


# ------------------------------------------------------------------------------------------------ topology
def _wells(axes, centres, depths, width=0.15):
    mesh = np.meshgrid(*axes, indexing="ij")
    v = np.zeros(mesh[0].shape)
    for c, d in zip(centres, depths):
        v -= d * np.exp(-sum((m - ci) ** 2 for m, ci in zip(mesh, c)) / (2 * width ** 2))
    return v


def test_sharpness_report_of_a_volume_has_topology_and_no_2d_only_numbers(volume):
    axes = [np.linspace(-1, 1, 21)] * 3
    v = _wells(axes, [(0, 0, 0), (0.6, -0.6, 0.5), (-0.6, 0.5, -0.5)], [1.0, 0.5, 0.3])
    data = SurfaceData("wells.h5", axes[0], axes[1], {"train_loss": v}, np.ones(v.shape, bool), {}, {},
                       more=(axes[2],))
    r = sharpness_report(data, "train_loss")
    assert r["topology.n_minima"] == 3 and r["topology.n_minima_10pct"] == 3
    assert r["center_loss"] == pytest.approx(v[10, 10, 10]) and r["center_z"] == 0.0
    assert r["topology.n_components"] == 1
    deepest = sorted([v.min(), v[16, 4, 15], v[4, 15, 5]])
    assert r["topology.loss_min"] == pytest.approx(deepest[0])
    assert not any(k.startswith(("hess_", "width_", "basin_", "fit_", "curvature")) for k in r)
    # and the finished 3-D job stored its topology numbers
    attrs = read(str(volume)).attrs
    assert "sharpness.topology.n_minima" in attrs and "sharpness.center_z" in attrs
    assert "sharpness.hess_xx" not in attrs


def test_python_api_reads_slices_and_plots_a_volume(volume):
    import distland

    s = distland.read(str(volume))
    assert s.ndim == 3 and list(s.to_xarray().train_loss.dims) == ["x", "y", "z"]
    assert sorted(s.to_numpy()) == ["done", "train_acc", "train_loss", "x", "y", "z"]
    xz = s.slice(y="@1")
    assert xz.data.labels == ("x", "z") and xz.shape == (3, 5)
    np.testing.assert_array_equal(xz["train_loss"], s["train_loss"][:, 1, :])
    fig = s.plot("heatmap")   # the (x, y) plane at z = 0
    assert [a.get_ylabel() for a in fig.axes][0] == "y" and "z = 0" in fig._suptitle.get_text()
    assert xz.plot("contour").axes[0].get_ylabel() == "z"
