"""The Python API: distland.surface / interpolate / trajectory / read, the Surface result, the same pipeline as the
CLI (bit-identical numbers), the caller's model never modified, in-memory results, resume, and mpirun."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import distland
from distland import cli
from distland.config import ConfigError
from distland.data import load_split
from distland.surfacefile import SurfaceError

from conftest import SAMPLES, make_model, save_checkpoint, small_config_dict, write_yaml

GRID = {"x": [-1, 1, 3], "y": [-1, 1, 3]}
FAST = {"engine": {"threads": 1, "device": "cpu"}, "progress": False}


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))


def _state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(model: nn.Module, saved: dict) -> bool:
    now = model.state_dict()
    return now.keys() == saved.keys() and all(torch.equal(now[k], saved[k]) for k in saved)


@pytest.fixture(scope="module")
def digits():
    return load_split("digits", "train", SAMPLES)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Temporary files of this test alone (so 'nothing left behind' can be checked)."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


@pytest.fixture(scope="module")
def computed(digits):
    """One small in-memory surface shared by the tests of the Surface object."""
    return distland.surface(_mlp(), {"train": digits, "test": (digits[0][:60], digits[1][:60])}, grid=GRID, **FAST)


# ------------------------------------------------------------------------------------------------ the pipeline
def test_api_and_cli_give_bit_identical_surfaces(tmp_path, digits, capsys):
    ckpt = save_checkpoint(tmp_path / "ckpt.pt")
    out = tmp_path / "cli.h5"
    assert cli.main(["surface", str(write_yaml(tmp_path / "job.yaml",
                                               small_config_dict(out, checkpoint=str(ckpt))))]) == 0
    with h5py.File(out, "r") as f:
        want = {k: f[k][()] for k in ("train_loss", "train_acc")}
        want_dirs = {k: f[f"directions/x/{k}"][()] for k in f["directions/x"]}
    model = make_model("democnn")  # the same weights as the checkpoint, built in memory
    model.load_state_dict(torch.load(ckpt))
    got = distland.surface(model, digits, grid=GRID, **FAST)
    by_name = distland.surface("democnn", {"name": "digits", "max_samples": SAMPLES}, checkpoint=str(ckpt),
                               grid=GRID, **FAST)
    for s in (got, by_name):
        assert s.complete and s.path is None
        for k, v in want.items():
            assert np.array_equal(s[k], v), k   # bit-identical, not close
    saved = tmp_path / "api.h5"
    distland.surface(model, digits, grid=GRID, output=saved, **FAST)
    with h5py.File(saved, "r") as f:
        assert all(np.array_equal(f[f"directions/x/{k}"][()], v) for k, v in want_dirs.items())
        assert f.attrs["checkpoint_sha256"].startswith("state-sha256-")


def test_a_model_importable_from_nowhere_is_evaluated_and_left_untouched(digits, private_tmp):
    class Local(nn.Module):   # defined here: no module:function could name it
        def __init__(self) -> None:
            super().__init__()
            self.body = _mlp(3)

        def forward(self, x):
            return self.body(x)

    model = Local().train()   # train mode: a forward on it would move its BatchNorm statistics
    saved = _state(model)
    s = distland.surface(model, digits, grid={"x": [-1, 1, 5], "y": None}, **FAST)
    assert s.ndim == 1 and s.complete and np.isfinite(s.train_loss).all()
    assert _same_state(model, saved) and model.training
    with torch.no_grad():   # θ* is the middle point: the model's own loss there
        logits = model.eval()(digits[0])
    expected = nn.functional.cross_entropy(logits.double(), digits[1]).item()
    assert s.train_loss[2] == pytest.approx(expected, rel=1e-6)
    assert "<in-memory Local>" in repr(s)


class Boom(nn.Module):
    """Fails after ``limit`` forward calls over all its copies (a class counter: deep copies share it)."""

    calls = 0
    limit = 10 ** 9
    error: type = RuntimeError

    def __init__(self) -> None:
        super().__init__()
        self.body = _mlp(5)

    def forward(self, x):
        type(self).calls += 1
        if type(self).calls > type(self).limit:
            raise type(self).error("boom inside the evaluation")
        return self.body(x)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_the_model_is_unchanged_after_an_error_inside_the_evaluation(digits, private_tmp, monkeypatch, error):
    model = Boom()
    saved = _state(model)
    monkeypatch.setattr(Boom, "calls", 0)
    monkeypatch.setattr(Boom, "limit", 4)   # past the pre-flight check, in the middle of the sweep
    monkeypatch.setattr(Boom, "error", error)
    with pytest.raises(error, match="boom"):
        distland.surface(model, digits, grid=GRID, **FAST)
    assert Boom.calls > 4   # it really failed inside the sweep
    assert _same_state(model, saved)
    assert os.listdir(private_tmp) == []   # the in-memory job's temporary file is gone too


def test_output_none_writes_nothing(digits, private_tmp, tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    s = distland.surface(_mlp(), digits, grid=GRID, **FAST)
    assert s.complete and s.path is None and "in memory" in repr(s)
    assert os.listdir(work) == [] and os.listdir(private_tmp) == []
    assert str(private_tmp) not in s.summary


def test_resume_from_a_file_after_an_interruption(digits, tmp_path, monkeypatch):
    out = tmp_path / "resume.h5"
    model = Boom()
    settings = dict(grid={"x": [-1, 1, 4], "y": [-1, 1, 3]}, output=out, sweep={"chunk": 1}, **FAST)
    monkeypatch.setattr(Boom, "calls", 0)
    monkeypatch.setattr(Boom, "limit", 6)
    monkeypatch.setattr(Boom, "error", KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        distland.surface(model, digits, **settings)
    partial = distland.read(out)
    assert 0 < partial.done.sum() < 12
    monkeypatch.setattr(Boom, "limit", 10 ** 9)
    resumed = distland.surface(model, digits, **settings)   # e.g. after a kernel restart: the same call again
    assert resumed.complete and f"computed {12 - int(partial.done.sum())} point(s)" in resumed.summary
    fresh = distland.surface(model, digits, grid=settings["grid"], **FAST)
    assert np.array_equal(resumed.train_loss, fresh.train_loss)
    assert np.array_equal(resumed.train_loss[partial.done], partial.train_loss[partial.done])
    other = Boom()
    with torch.no_grad():
        other.body[1].weight.add_(0.01)   # other weights: the file holds a different job
    with pytest.raises(SurfaceError, match="holds a different job"):
        distland.surface(other, digits, **settings)
    with pytest.raises(SurfaceError, match="holds a different job"):   # other data, same weights
        distland.surface(model, (digits[0][:100], digits[1][:100]), **settings)


def test_interpolation_between_two_in_memory_models(digits):
    a, b = _mlp(1).eval(), _mlp(2).eval()
    saved = _state(b)
    s = distland.interpolate(a, b, digits, grid={"x": [0, 1, 3]}, **FAST)
    assert s.ndim == 1 and s.config["directions"]["kind"] == "interp" and _same_state(b, saved)
    for alpha, model in ((0, a), (2, b)):   # the end points are the two models
        with torch.no_grad():
            logits = model(digits[0])
        assert s.train_loss[alpha] == pytest.approx(
            nn.functional.cross_entropy(logits.double(), digits[1]).item(), rel=1e-6)
    report = s.sharpness()
    assert "barrier" in report   # the linear-mode-connectivity barrier of an interpolation
    same = distland.surface(a, digits, grid={"x": [0, 1, 3]}, directions={"kind": "interp", "target": b}, **FAST)
    assert np.array_equal(same.train_loss, s.train_loss)


def test_settings_are_checked_like_the_yaml(digits):
    with pytest.raises(ConfigError, match="unknown config key engine.devcie; valid keys in engine"):
        distland.surface(_mlp(), digits, engine={"devcie": "cpu"})
    with pytest.raises(ConfigError, match="grid.x: num must be an integer"):
        distland.surface(_mlp(), digits, grid={"x": [-1, 1, 2.5]})
    with pytest.raises(ConfigError, match="checkpoint applies to a model given by name"):
        distland.surface(_mlp(), digits, checkpoint="x.pt")
    with pytest.raises(ValueError, match=r"\(150, 1, 8, 8\) inputs but \(10,\) targets"):
        distland.surface(_mlp(), (digits[0], digits[1][:10]), grid=GRID, **FAST)
    with pytest.raises(TypeError, match="data must be"):
        distland.surface(_mlp(), 3.0)


# ------------------------------------------------------------------------------------------------ the result
def test_surface_arrays_xarray_numpy_and_repr(computed):
    s = computed
    assert s.shape == (3, 3) and s.train_loss.shape == (3, 3) and s["test_acc"].shape == (3, 3)
    assert set(s.quantities) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    arrays = s.to_numpy()
    assert np.array_equal(arrays["x"], [-1, 0, 1]) and arrays["done"].all()
    arrays["train_loss"][0, 0] = -5   # a copy
    assert s.train_loss[0, 0] != -5
    ds = s.to_xarray()
    assert ds["train_loss"].dims == ("x", "y")
    assert float(ds["train_loss"].sel(x=1.0, y=-1.0)) == s.train_loss[2, 0]   # [i, j] ↔ (x_i, y_j)
    text = repr(s)
    assert "2-D 3×3" in text and "9/9 points done (100%)" in text and "seed 0" in text and "in memory" in text


def test_plot_returns_figures_without_pyplot(computed):
    from matplotlib.figure import Figure

    had_pyplot = "matplotlib.pyplot" in sys.modules
    fig = computed.plot()
    assert isinstance(fig, Figure) and fig.axes
    figs = computed.plot(["heatmap", "surface3d"], metric="test_loss", log=True)
    assert len(figs) == 2 and all(isinstance(f, Figure) for f in figs)
    own = Figure()
    ax = own.add_subplot(1, 1, 1)
    assert computed.plot("contourf", ax=ax) is own and ax.collections
    with pytest.raises(ValueError, match="has no 'nonsense'"):
        computed.plot(metric="nonsense")
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot


def test_sharpness_is_a_plain_dict(computed):
    report = computed.sharpness()
    assert isinstance(report, dict) and all(type(v) is float for v in report.values())
    assert report["center_loss"] == pytest.approx(computed.train_loss[1, 1])
    assert computed.sharpness("test_loss")["center_loss"] == pytest.approx(computed.test_loss[1, 1])


def test_read_the_authors_layout(tmp_path):
    x, y = np.linspace(-1, 1, 3), np.linspace(0, 3, 4)
    table = np.array([[1.0 + xi + 10.0 * yj for xi in x] for yj in y])   # (ny, nx): L(x_i, y_j) at [j, i]
    table[2, 1] = -1   # unfinished (x_1, y_2)
    path = tmp_path / "theirs.h5"
    with h5py.File(path, "w") as f:
        f["xcoordinates"], f["ycoordinates"], f["train_loss"] = x, y, table
    s = distland.read(path)
    assert s.shape == (3, 4) and s.path == str(path) and s.done.sum() == 11
    assert s.train_loss[2, 3] == 1.0 + x[2] + 10.0 * y[3] and np.isnan(s.train_loss[1, 2])
    assert "the paper authors' layout" in repr(s) and "11/12 points done" in repr(s)
    assert isinstance(s.plot("contour").axes, list)


def test_trajectory_directions_and_overlay(tmp_path, digits):
    run = tmp_path / "run"
    run.mkdir()
    model = _mlp(7)
    for epoch in range(1, 5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        torch.save(model.state_dict(), run / f"epoch{epoch}.pt")
    traj = distland.trajectory(run, run / "epoch4.pt", output=tmp_path / "traj.h5", model=_mlp(7))
    assert traj.coords.shape == (4, 2) and 0 < traj.pca.ratio.sum() <= 1 + 1e-9
    s = distland.surface(model, digits, grid=GRID, directions={"kind": "file", "file": str(tmp_path / "traj.h5")},
                         **FAST)
    assert s.complete and s.config["directions"]["kind"] == "file"
    assert s.plot("contour", trajectory=tmp_path / "traj.h5").axes


def test_progress_bar_and_switch(digits, capfd):
    distland.surface(_mlp(), digits, grid=GRID, engine=FAST["engine"], progress=True)
    assert "distland loss" in capfd.readouterr().err   # tqdm's bar (installed by the test extras)
    distland.surface(_mlp(), digits, grid=GRID, **FAST)
    assert capfd.readouterr().err == ""


def test_import_distland_is_light():
    code = ("import sys, distland; assert not {'torch', 'h5py', 'mpi4py'} & set(sys.modules), sys.modules.keys(); "
            "import distland.surfacefile; assert distland.surface.__module__ == 'distland.api'; "
            "print(distland.read.__module__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "distland.api"


# ------------------------------------------------------------------------------------------------ mpirun
SCRIPT = """
import sys, numpy as np, torch
from torch import nn
import distland
from distland.data import load_split

torch.manual_seed(0)   # every rank builds the same weights
model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
data = load_split("digits", "train", 64)
result = distland.surface(model, data, grid={"x": [-1, 1, 5], "y": [-1, 1, 3]}, output=OUTPUT,
                          engine={"threads": 1, "device": "cpu"}, progress=False)
rank = int(__import__("os").environ["OMPI_COMM_WORLD_RANK"])
print(f"rank {rank}: {type(result).__name__}" + ("" if result is None else f" nranks {result.attrs['nranks']}"))
if result is not None:
    np.save(sys.argv[1], result.train_loss)
"""


@pytest.mark.mpi
def test_mpirun_rank0_gets_the_surface_others_none(tmp_path):
    """Results kept in memory under mpirun (rank 0 gathers them; a file output runs as the CLI's MPI tests)."""
    from test_mpi import _env, _need

    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(SCRIPT).replace("OUTPUT", "None"))
    r = subprocess.run([_need("mpirun"), "-np", "2", sys.executable, str(script), str(tmp_path / "loss.npy")],
                       env=_env(), capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "rank 0: Surface nranks 2" in r.stdout and "rank 1: NoneType" in r.stdout
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    serial = distland.surface(model, load_split("digits", "train", 64), grid={"x": [-1, 1, 5], "y": [-1, 1, 3]},
                              **FAST)
    assert np.array_equal(np.load(tmp_path / "loss.npy"), serial.train_loss)
    assert sorted(os.listdir(tmp_path)) == ["job.py", "loss.npy"]   # nothing written but what the script saved


def test_the_notebook_example_runs(tmp_path):
    """docs/notebook_example.py, cell by cell as a script: trains, interpolates, draws a surface, resumes a file."""
    example = Path(__file__).resolve().parent.parent / "docs" / "notebook_example.py"
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join([str(example.parent.parent),
                                                                          os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, str(example)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    made = tmp_path / "distland-example"
    assert {"interpolation.png", "contour.png", "surface3d.png", "surface.h5"} <= set(os.listdir(made))
    assert "computed 0 point(s)" in r.stdout   # the second call resumed a finished file
    assert "<distland.Surface 1-D 31" in r.stdout and "<distland.Surface 2-D 11×11" in r.stdout
