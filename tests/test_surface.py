"""The surface file: resume after an interruption, refusal of a different job, the job lock, NaN/inf points, the
writer/reader contract, and reading the paper authors' layout."""
from __future__ import annotations

import json
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

from distland import directions as D
from distland.config import config_from_yaml_text
from distland.evaluate import SurfaceEvaluator
from distland.grid import Grid
from distland.quantities.loss import LossQuantity, dataset_names
from distland.surfacefile import (JobLock, SurfaceError, SurfaceSpec, SurfaceWriter, check_existing,
                              read)
from distland.sweep import prepare, run_surface

from conftest import fingerprint, make_model, save_checkpoint, small_config

_EVALUATE = SurfaceEvaluator.evaluate  # the real one, before any test patches it
GRID = ("grid.x=[-1, 1, 4]", "grid.y=[-0.5, 1, 3]")  # 12 points, non-square


def _arrays(path):
    with h5py.File(path, "r") as f:
        out = {k: np.asarray(f[k][()]) for k in ("train_loss", "train_acc", "done", "xcoordinates", "ycoordinates")}
        for a in "xy":
            for k in f[f"directions/{a}"]:
                out[f"directions/{a}/{k}"] = np.asarray(f[f"directions/{a}/{k}"][()])
    return out


def _assert_same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"{k} differs"


class _Counter:
    """Counts (and optionally interrupts) SurfaceEvaluator.evaluate calls."""

    def __init__(self, monkeypatch, fail_after=None):
        self.calls = []
        self.fail_after = fail_after
        original = _EVALUATE
        counter = self

        def evaluate(ev, coeffs, poll=None):
            if counter.fail_after is not None and len(counter.calls) >= counter.fail_after:
                raise KeyboardInterrupt("simulated interruption")
            counter.calls.append(tuple(float(c) for c in coeffs))
            return original(ev, coeffs, poll)

        monkeypatch.setattr(SurfaceEvaluator, "evaluate", evaluate)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "theta.pt", seed=21)


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory, checkpoint):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    summary = run_surface(small_config(out, f"checkpoint={checkpoint}", *GRID))
    assert summary.computed == 12
    return out


# --------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("chunk", [1, 0])
def test_resume_after_interruption_computes_only_missing_points(tmp_path, monkeypatch, checkpoint, reference_file,
                                                              chunk):
    out = tmp_path / "s.h5"
    cfg = small_config(out, f"checkpoint={checkpoint}", *GRID, f"sweep.chunk={chunk}")
    first = _Counter(monkeypatch, fail_after=5)
    with pytest.raises(KeyboardInterrupt):
        run_surface(cfg)
    assert len(first.calls) == 5
    partial = read(str(out))
    n_done = int(partial.done.sum())
    assert 0 < n_done <= 5 and not partial.complete
    if chunk == 1:
        assert n_done == 5  # one point per unit: every finished point was written
    assert np.isnan(partial.metrics["train_loss"][~partial.done]).all()
    grid = Grid(partial.x, partial.y)
    missing = {grid.coords(p) for p in range(grid.size) if not partial.done.reshape(-1)[p]}

    second = _Counter(monkeypatch)
    summary = run_surface(cfg)
    assert len(second.calls) == len(missing) == 12 - n_done
    assert set(second.calls) == missing
    assert summary.computed == 12 - n_done and summary.points == 12
    _assert_same(_arrays(out), _arrays(reference_file))

    third = _Counter(monkeypatch)
    assert run_surface(cfg).computed == 0 and third.calls == []  # a finished job resumes to nothing


def test_resume_of_points_marked_undone(tmp_path, monkeypatch, checkpoint, reference_file):
    out = tmp_path / "s.h5"
    out.write_bytes(reference_file.read_bytes())
    marked = [(0, 0), (1, 2), (3, 1), (3, 2)]
    with h5py.File(out, "r+") as f:
        for i, j in marked:
            f["done"][i, j] = 0
            f["train_loss"][i, j] = np.nan
            f["train_acc"][i, j] = np.nan
    x, y = np.linspace(-1, 1, 4), np.linspace(-0.5, 1, 3)
    counter = _Counter(monkeypatch)
    summary = run_surface(small_config(out, f"checkpoint={checkpoint}", *GRID))
    assert sorted(counter.calls) == sorted((x[i], y[j]) for i, j in marked)
    assert summary.computed == 4
    _assert_same(_arrays(out), _arrays(reference_file))


# --------------------------------------------------------------------------------------------- another job
@pytest.mark.parametrize("change, key", [
    ("grid.x=[-1, 1, 5]", "grid"),
    ("directions.seed=1", "directions"),
    ("directions.norm=layer", "directions"),
    ("data.max_samples=120", "data"),
    ("model_args={width: 8}", "model_args"),
])
def test_a_different_job_is_refused_and_the_file_is_untouched(tmp_path, checkpoint, reference_file, change, key):
    out = tmp_path / "s.h5"
    out.write_bytes(reference_file.read_bytes())
    before = fingerprint(out)
    ckpt = checkpoint
    if key == "model_args":  # a checkpoint of the wider model, so only the job differs
        torch.save(make_model("democnn", seed=1, width=8).state_dict(), tmp_path / "w8.pt")
        ckpt = tmp_path / "w8.pt"
    cfg = small_config(out, f"checkpoint={ckpt}", *GRID, change)
    with pytest.raises(SurfaceError) as info:
        run_surface(cfg)
    msg = str(info.value)
    assert "holds a different job (12 finished points)" in msg
    assert f"{key}: file " in msg.split("differing: ", 1)[1]
    assert "--overwrite" in msg
    assert fingerprint(out) == before


def test_a_different_checkpoint_is_refused_then_overwrite_replaces(tmp_path, reference_file):
    out = tmp_path / "s.h5"
    out.write_bytes(reference_file.read_bytes())
    before = fingerprint(out)
    other = save_checkpoint(tmp_path / "other.pt", seed=22)
    cfg = small_config(out, f"checkpoint={other}", *GRID)
    with pytest.raises(SurfaceError, match="differing: checkpoint_sha256"):
        run_surface(cfg)
    assert fingerprint(out) == before
    summary = run_surface(cfg, overwrite=True)
    assert summary.computed == 12
    data = read(str(out))
    assert data.complete
    assert not np.array_equal(data.metrics["train_loss"], read(str(reference_file)).metrics["train_loss"])
    assert config_from_yaml_text(data.attrs["config"]) == cfg


def test_overwrite_with_a_new_grid(tmp_path, checkpoint, reference_file):
    out = tmp_path / "s.h5"
    out.write_bytes(reference_file.read_bytes())
    run_surface(small_config(out, f"checkpoint={checkpoint}", "grid.x=[0, 1, 2]", "grid.y=null"), overwrite=True)
    data = read(str(out))
    assert data.ndim == 1 and data.shape == (2,) and data.complete


# --------------------------------------------------------------------------------------------- lock
def test_a_second_job_on_a_locked_output_is_refused(tmp_path):
    out = tmp_path / "locked.h5"
    lock = JobLock(str(out))
    lock.acquire()
    try:
        with pytest.raises(SurfaceError, match="another distland job is writing") as info:
            run_surface(small_config(out))
        assert "pid" in str(info.value)
        assert not out.exists()
    finally:
        lock.release()
    assert run_surface(small_config(out)).computed == 9  # released: the job runs


def test_lock_is_released_after_a_failed_run(tmp_path):
    out = tmp_path / "s.h5"
    with pytest.raises(ValueError):
        run_surface(small_config(out, "model=nosuchnet"))
    lock = JobLock(str(out))
    lock.acquire()  # would raise if the failed run still held it
    lock.release()


# --------------------------------------------------------------------------------------------- file contents
def test_file_records_config_and_the_normalized_directions(tmp_path, checkpoint):
    out = tmp_path / "s.h5"
    cfg = small_config(out, f"checkpoint={checkpoint}", "directions.seed=13")
    run_surface(cfg)
    data = read(str(out))
    assert data.layout == "distland"
    assert config_from_yaml_text(data.attrs["config"]) == cfg
    assert data.attrs["seed"] == 13 and data.attrs["ndim"] == 2
    from distland.checkpoint import sha256
    assert data.attrs["checkpoint_sha256"] == sha256(checkpoint)
    assert json.loads(data.attrs["identity"])["grid"] == {"x": [-1.0, 1.0, 3.0], "y": [-1.0, 1.0, 3.0]}
    model = make_model("democnn", seed=0)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    expected = D.make_random(D.reference_weights(model), 13, "filter", "biasbn", 2)
    with h5py.File(out, "r") as f:
        for axis, d in zip("xy", expected):
            assert sorted(f[f"directions/{axis}"]) == sorted(d)
            for k, v in d.items():
                np.testing.assert_array_equal(f[f"directions/{axis}/{k}"][()], v.numpy())


def test_direction_file_from_the_authors_layout_is_used_as_is(tmp_path, checkpoint):
    model = make_model("democnn", seed=0)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    ref = D.reference_weights(model)
    dirs = D.make_random(ref, 77, "layer", "none", 2)
    dfile = tmp_path / "dirs.h5"
    with h5py.File(dfile, "w") as f:
        for name, d in zip(("xdirection", "ydirection"), dirs):
            for i, v in enumerate(d.values()):
                f.create_dataset(f"{name}/{i}", data=v.numpy())
    out = tmp_path / "s.h5"
    run_surface(small_config(out, f"checkpoint={checkpoint}", f"directions.file={dfile}"))
    with h5py.File(out, "r") as f:
        for axis, d in zip("xy", dirs):
            for k, v in d.items():
                np.testing.assert_array_equal(f[f"directions/{axis}/{k}"][()], v.numpy())


def test_prepare_plans_create_then_resume(tmp_path, checkpoint, reference_file):
    out = tmp_path / "s.h5"
    cfg = small_config(out, f"checkpoint={checkpoint}", *GRID)
    plan = prepare(cfg, overwrite=False)
    assert plan.mode == "create" and plan.pending == {"loss": 12} and len(plan.spec.directions) == 2
    assert not out.exists()  # planning writes nothing
    out.write_bytes(reference_file.read_bytes())
    plan = prepare(cfg, overwrite=False)
    assert plan.mode == "resume" and plan.pending == {"loss": 0}
    assert list(plan.spec.directions[0]) == [k for k, _ in make_model().named_parameters()]


# --------------------------------------------------------------------------------------------- NaN / inf
NANMOD = '''
import torch
from torch import nn


class Fragile(nn.Module):
    """Finite loss for |a| < 1.5, +inf loss for 1.5 < |a| < 2.5, NaN beyond, where a = w - 1 moves with α."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.w = nn.Parameter(torch.ones(1, 1))

    def forward(self, x):
        z = self.fc(x.flatten(1))
        a = (self.w - 1.0).abs().reshape(())
        nan = torch.full_like(z, float("nan"))
        # class 0 huge, the others hugely negative: the loss of any other target overflows to +inf
        inf = torch.cat([torch.full_like(z[:, :1], 3e38), torch.full_like(z[:, 1:], -3e38)], 1)
        return torch.where(a > 2.5, nan, torch.where(a > 1.5, inf, z))


def make():
    return Fragile()
'''


def test_nan_and_inf_points_are_stored_done_and_counted(tmp_path, monkeypatch):
    (tmp_path / "distland_fragile_mod.py").write_text(textwrap.dedent(NANMOD))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "distland_fragile_mod", raising=False)
    out = tmp_path / "nan.h5"
    try:
        summary = run_surface(small_config(out, "model=distland_fragile_mod:make", "plugins=[distland_fragile_mod]",
                                           "grid.x=[-3, 3, 7]",
                                           "grid.y=null"))
    finally:
        sys.modules.pop("distland_fragile_mod", None)
    data = read(str(out))
    loss = data.metrics["train_loss"]
    assert data.done.all()
    with h5py.File(out, "r") as f:
        assert f["done"][()].all()
    alpha = np.abs(data.x)
    assert np.isnan(loss[alpha == 3]).all()
    assert np.isposinf(loss[alpha == 2]).all()
    assert np.isfinite(loss[alpha <= 1]).all()
    assert summary.nonfinite == 4
    assert "4 point(s) have NaN/inf loss" in summary.text()
    assert summary.minimum["value"] == pytest.approx(np.min(loss[alpha <= 1]))
    assert summary.minimum["at"]["x"] in (-1.0, 0.0, 1.0)


# --------------------------------------------------------------------------------------------- writer / reader
def _spec(grid, splits=("train",)):
    return SurfaceSpec(grid=grid, quantities=[LossQuantity(splits).layout()], identity={"job": 1},
                       attrs={"config": "model: democnn\n"},
                       directions=[{"w": np.ones((2, 2), np.float32)}])


@pytest.mark.parametrize("shape", [(3, 4), (5,)])
def test_writer_places_points_by_flat_index(tmp_path, shape):
    grid = Grid(np.linspace(-1, 1, shape[0]), None if len(shape) == 1 else np.linspace(0, 2, shape[1]))
    path = str(tmp_path / "w.h5")
    with SurfaceWriter.open(path, _spec(grid), "create", {"io": "serial"}) as w:
        assert w.pending("loss") == list(range(grid.size))
        points = [p for p in range(grid.size) if p % 3 != 1]
        w.write("loss", points, {"train_loss": np.array(points, float) * 10, "train_acc": np.array(points, float)})
        assert w.pending("loss") == [p for p in range(grid.size) if p % 3 == 1]
    data = read(path)
    assert data.shape == shape and data.layout == "distland"
    for p in range(grid.size):
        at = grid.index(p)
        if p % 3 == 1:
            assert not data.done[at] and np.isnan(data.metrics["train_loss"][at])
        else:
            assert data.done[at] and data.metrics["train_loss"][at] == 10 * p and data.metrics["train_acc"][at] == p
    assert data.attrs["io"] == "serial" and data.attrs["distland_layout"] == 1


def test_check_existing_decisions(tmp_path):
    grid = Grid(np.linspace(-1, 1, 3), np.linspace(-1, 1, 3))
    path = tmp_path / "s.h5"
    assert check_existing(str(path), _spec(grid), False) == "create"
    SurfaceWriter.open(str(path), _spec(grid), "create", {}).close()
    assert check_existing(str(path), _spec(grid), False) == "resume"
    other = _spec(grid)
    other.identity = {"job": 2}
    with pytest.raises(SurfaceError, match="differing: job: file 1 vs now 2"):
        check_existing(str(path), other, False)
    assert check_existing(str(path), other, True) == "create"
    with h5py.File(tmp_path / "empty.h5", "w") as f:  # someone else's file with only root attributes: kept
        f.attrs["owner"] = "another tool"
    with pytest.raises(SurfaceError, match="not a distland surface file"):
        check_existing(str(tmp_path / "empty.h5"), _spec(grid), False)
    with h5py.File(tmp_path / "half.h5", "w") as f:  # no creation mark, no layout mark: never guessed at
        f.create_dataset("xcoordinates", data=np.zeros(3))
        f.create_dataset("done", data=np.zeros(3, np.uint8))
    with pytest.raises(SurfaceError, match="not a distland surface file"):
        check_existing(str(tmp_path / "half.h5"), _spec(grid), False)
    with h5py.File(tmp_path / "ours.h5", "w") as f:  # our creation, interrupted before the layout mark
        f.attrs["distland_creating"] = 1
        f.create_dataset("xcoordinates", data=np.zeros(3))
        f.create_dataset("done", data=np.zeros(3, np.uint8))
    assert check_existing(str(tmp_path / "ours.h5"), _spec(grid), False) == "create"
    with h5py.File(tmp_path / "theirs.h5", "w") as f:
        f.create_dataset("xcoordinates", data=np.zeros(3))
        f.create_dataset("train_loss", data=-np.ones(3))
    with pytest.raises(SurfaceError, match="another tool"):
        check_existing(str(tmp_path / "theirs.h5"), _spec(grid), False)
    (tmp_path / "junk.h5").write_bytes(b"junk" * 100)
    with pytest.raises(SurfaceError, match="not a readable HDF5 file"):
        check_existing(str(tmp_path / "junk.h5"), _spec(grid), False)
    assert dataset_names(("train", "test")) == ["train_loss", "train_acc", "test_loss", "test_acc"]


def _loss(x, y):
    return 1.0 + x + 10.0 * y  # distinguishable along each axis


def test_read_the_authors_layout_transposed_with_nan_for_unfinished(tmp_path):
    x, y = np.linspace(-1, 1, 3), np.linspace(0, 3, 4)
    table = np.array([[_loss(xi, yj) for xi in x] for yj in y])  # (ny, nx): L(x_i, y_j) at [j, i]
    table[2, 1] = -1  # unfinished: (x_1, y_2)
    path = tmp_path / "theirs.h5"
    with h5py.File(path, "w") as f:
        f["xcoordinates"], f["ycoordinates"] = x, y
        f["train_loss"] = table
        f["train_acc"] = np.where(table == -1, -1, 50.0)
    data = read(str(path))
    assert data.layout == "loss-landscape" and data.shape == (3, 4)
    assert data.done.sum() == 11 and not data.done[1, 2]
    for i in range(3):
        for j in range(4):
            if (i, j) == (1, 2):
                assert np.isnan(data.metrics["train_loss"][i, j]) and np.isnan(data.metrics["train_acc"][i, j])
            else:
                assert data.metrics["train_loss"][i, j] == _loss(x[i], y[j])


def test_read_the_authors_tool_file_of_a_non_square_grid(tmp_path):
    """What the authors' plot_surface.py really writes: a dataset of shape (nx, ny) filled through
    ``losses.ravel()[k]`` where point k has the coordinates of ``np.meshgrid(x, y)`` raveled, i.e. in the order of
    an (ny, nx) table."""
    x, y = np.linspace(-1, 1, 3), np.linspace(0, 3, 4)
    losses = -np.ones((len(x), len(y)))
    xm, ym = np.meshgrid(x, y)
    for k, (xi, yj) in enumerate(zip(xm.ravel(), ym.ravel())):
        if k != 5:
            losses.ravel()[k] = _loss(xi, yj)
    path = tmp_path / "theirs.h5"
    with h5py.File(path, "w") as f:
        f["xcoordinates"], f["ycoordinates"] = x, y
        f["train_loss"] = losses
    data = read(str(path))
    assert data.shape == (3, 4)
    k5 = (int(np.argwhere(x == xm.ravel()[5])[0, 0]), int(np.argwhere(y == ym.ravel()[5])[0, 0]))
    for i in range(3):
        for j in range(4):
            if (i, j) == k5:
                assert np.isnan(data.metrics["train_loss"][i, j])
            else:
                assert data.metrics["train_loss"][i, j] == _loss(x[i], y[j])


def test_read_the_authors_1d_layout(tmp_path):
    x = np.linspace(-1, 1, 5)
    path = tmp_path / "theirs1d.h5"
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = x
        f["train_loss"] = np.array([3.0, 2.0, -1.0, 2.5, 4.0])
    data = read(str(path))
    assert data.ndim == 1 and data.shape == (5,)
    np.testing.assert_array_equal(data.done, [True, True, False, True, True])
    np.testing.assert_array_equal(data.metrics["train_loss"], [3.0, 2.0, np.nan, 2.5, 4.0])


def test_read_errors(tmp_path):
    with pytest.raises(SurfaceError, match="not found"):
        read(str(tmp_path / "nope.h5"))
    (tmp_path / "junk.h5").write_bytes(b"junk" * 100)
    with pytest.raises(SurfaceError, match="not a readable HDF5"):
        read(str(tmp_path / "junk.h5"))
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(SurfaceError, match="not a surface file"):
        read(str(tmp_path / "empty.h5"))
