"""The science around a surface: convergence at θ*, BatchNorm variances in interpolations, NaN-aware accuracy
plots, the side-by-side table, `distland reproduce`, and the shipped config sets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import plain_loss, save_checkpoint, small_config, write_yaml

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------- convergence
def test_untrained_centre_is_reported_as_not_a_minimizer(tmp_path, capsys):
    from distland.info import describe_surface
    from distland.surfacefile import read
    from distland.sweep import run_surface

    out = tmp_path / "init.h5"
    summary = run_surface(small_config(out))          # no checkpoint: θ* is the initialization
    text = summary.text()
    assert "NOT a minimizer" in text and "train accuracy" in text
    attrs = read(str(out)).attrs
    assert attrs["convergence.minimizer"] == 0.0
    assert attrs["convergence.train_acc"] < 50 and attrs["convergence.grad_norm"] > 0
    assert "NOT a minimizer" in describe_surface(str(out))


def test_convergence_measure_matches_plain_torch_and_leaves_the_model_alone(digits_train):
    from distland.analysis.convergence import is_minimizer, measure
    from conftest import make_model

    x, y = digits_train
    model = make_model(seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rep = measure(model, x, y, batch_size=32)
    loss, acc = plain_loss(model, x, y)
    assert rep["train_loss"] == pytest.approx(loss, rel=1e-5) and rep["train_acc"] == pytest.approx(acc)
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grad = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters()))
    assert rep["grad_norm"] == pytest.approx(float(grad), rel=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert is_minimizer({"train_acc": 100.0, "descent": 0.01})[0]
    assert not is_minimizer({"train_acc": 100.0, "descent": 0.2})[0]
    assert not is_minimizer({"train_acc": 90.0, "descent": 0.0})[0]


# --------------------------------------------------------------------------------------------- interpolation
def test_interpolation_beyond_one_stays_finite_and_exact_at_both_ends(tmp_path, digits_train):
    from distland.surfacefile import read
    from distland.sweep import run_surface
    from conftest import make_model

    a = save_checkpoint(tmp_path / "a.pt", seed=1)
    target = make_model(seed=2)
    with torch.no_grad():      # variances far below θ*'s: a linear mix goes negative soon after α = 1
        for m in target.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.mul_(0.05)
    b = tmp_path / "b.pt"
    torch.save(target.state_dict(), b)
    out = tmp_path / "interp.h5"
    run_surface(small_config(out, f"checkpoint={a}", "directions.kind=interp", f"directions.target={b}",
                             "directions.type=states", "grid.x=[-0.5, 1.5, 5]", "grid.y=null"))
    data = read(str(out))
    loss = data.metrics["train_loss"]
    assert np.isfinite(loss).all()                          # a linear variance is negative at α = 1.5
    x, y = digits_train
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    for i, alpha in ((1, 0.0), (3, 1.0), (4, 1.5), (2, 0.5)):
        model = make_model()
        state = {}
        for k, v in sa.items():
            if not v.is_floating_point():
                state[k] = v
            elif k.endswith("running_var"):
                state[k] = (v.double() ** (1 - alpha) * sb[k].double() ** alpha).float()   # geometric
            else:
                state[k] = ((1 - alpha) * v.double() + alpha * sb[k].double()).float()
        model.load_state_dict(state)
        assert loss[i] == pytest.approx(plain_loss(model, x, y)[0], rel=1e-5), alpha
    assert "states" in data.config["directions"]["type"]


def test_accuracy_is_not_drawn_where_the_loss_is_nan():
    from types import SimpleNamespace

    from distland.plot.common import values

    data = SimpleNamespace(metrics={"train_loss": np.array([0.1, np.nan, 0.3]),
                                    "train_acc": np.array([99.0, 10.0, 98.0])}, done=np.ones(3, bool))
    acc = values(data, "train_acc", False)
    assert np.isnan(acc[1]) and acc[0] == 99.0 and acc[2] == 98.0


# --------------------------------------------------------------------------------------------- tables
def test_info_compares_several_files_with_one_environment_banner(tmp_path, capsys):
    from distland.cli import main
    from distland.sweep import run_surface

    a = save_checkpoint(tmp_path / "a.pt", seed=1)
    paths = []
    for name, extra in (("p", ()), ("q", (f"checkpoint={a}",))):
        paths.append(str(tmp_path / f"{name}.h5"))
        run_surface(small_config(Path(paths[-1]), *extra))
    capsys.readouterr()
    assert main(["info", *paths]) == 0
    text = capsys.readouterr().out
    assert text.count("distland ") - text.count("distland_version") >= 1
    assert text.count("torch ") == 1
    header = next(line for line in text.splitlines() if line.startswith("number"))
    assert "p" in header.split() and "q" in header.split()
    assert "mean ρ" in text and "θ* a minimizer?" in text


def test_roughness_is_zero_on_a_bowl_and_positive_on_a_saddle():
    from distland.analysis.compare import roughness

    g = np.linspace(-1, 1, 9)
    X, Y = np.meshgrid(g, g, indexing="ij")
    assert roughness(g, g, X ** 2 + Y ** 2)["rho_mean"] == pytest.approx(0.0)
    saddle = roughness(g, g, X ** 2 - Y ** 2)
    assert saddle["rho_mean"] == pytest.approx(1.0) and saddle["nonconvex_frac"] == 1.0


# --------------------------------------------------------------------------------------------- reproduce
def _tiny_set(root: Path) -> Path:
    cfgs = root / "set"
    (cfgs / "train").mkdir(parents=True)
    for name, batch in (("small", 16), ("large", 128)):
        write_yaml(cfgs / "train" / f"{name}.yaml", {
            "model": "democnn", "data": {"name": "digits", "max_samples": 96}, "batch_size": batch, "epochs": 1,
            "lr_milestones": [], "augment": False, "save_every": 0, "num_threads": 1,
            "out_dir": str(root / "runs" / name)})
        write_yaml(cfgs / f"{name}.yaml", {
            "model": "democnn", "checkpoint": str(root / "runs" / name / "final.pt"),
            "data": {"name": "digits", "max_samples": 96}, "grid": {"x": [-1, 1, 3], "y": [-1, 1, 3]},
            "engine": {"threads": 1, "device": "cpu"}, "sweep": {"progress": False},
            "output": str(root / "surfaces" / f"{name}.h5")})
    write_yaml(cfgs / "claims.yaml", {"claims": [
        {"claim": "small is flatter", "less": "small.yaml", "more": "large.yaml", "number": "mean_increase"}]})
    return cfgs


def test_reproduce_trains_computes_compares_and_resumes(tmp_path):
    from distland.reproduce import reproduce

    cfgs = _tiny_set(tmp_path)
    text = reproduce(str(cfgs), plot=True, figures=str(tmp_path / "fig"))
    assert (tmp_path / "runs" / "small" / "final.pt").exists() and (tmp_path / "surfaces" / "large.h5").exists()
    assert "small is flatter" in text and ("agrees" in text or "disagrees" in text)
    assert list((tmp_path / "fig").glob("compare_small_large_contour*.png"))
    stamp = (tmp_path / "runs" / "small" / "final.pt").stat().st_mtime_ns
    again = reproduce(str(cfgs), plot=False)       # everything exists: nothing is trained again
    assert (tmp_path / "runs" / "small" / "final.pt").stat().st_mtime_ns == stamp
    assert again.splitlines()[-1] == text.splitlines()[-1]


def test_reproduce_names_a_claim_file_that_is_not_in_the_set(tmp_path):
    from distland.reproduce import ReproduceError, load_set

    cfgs = _tiny_set(tmp_path)
    write_yaml(cfgs / "claims.yaml", {"claims": [{"claim": "c", "less": "small.yaml", "more": "nope.yaml",
                                                   "number": "mean_increase"}]})
    with pytest.raises(ReproduceError, match="nope.yaml"):
        load_set(str(cfgs))


# --------------------------------------------------------------------------------------------- shipped configs
@pytest.mark.parametrize("folder", ["configs/small", "configs/paper"])
def test_shipped_configs_load_and_every_checkpoint_has_a_training_config(folder):
    from distland.reproduce import load_set, trainers

    configs, manifest = load_set(str(ROOT / folder))
    made = {str(Path(k)) for k in trainers(str(ROOT / folder))}
    for name, cfg in configs.items():
        needed = [cfg.checkpoint] + ([cfg.directions.target] if cfg.directions.kind == "interp" else [])
        assert all(str(Path(c)) in made for c in needed if c), name


def test_small_batch_configs_train_to_convergence_on_both_batches():
    from distland.config import load
    from distland.train import TrainConfig

    for b in ("sb", "lb"):
        for wd in ("wd0", "wd5e-4"):
            cfg = load(TrainConfig, ROOT / "configs/small/train" / f"democnn_{b}_{wd}.yaml")
            assert cfg.epochs == 100 and cfg.lr_milestones == [50, 75, 90]
    from distland.config import load_config

    assert load_config(ROOT / "configs/small/democnn_sb_wd0_1d.yaml").data.split == "both"


# --------------------------------------------------------------------------------------------- pictures, frictions
def test_trajectory_on_other_directions_is_refused_and_on_its_own_accepted(tmp_path):
    import h5py

    from distland.plot.cli import plot_files
    from distland.plot.common import PlotError, PlotOptions
    from distland.sweep import run_surface

    out = tmp_path / "s.h5"
    run_surface(small_config(out))
    traj = tmp_path / "traj.h5"
    with h5py.File(out, "r") as fs, h5py.File(traj, "w") as ft:
        for axis in ("x", "y"):
            for k, v in fs[f"directions/{axis}"].items():
                ft[f"directions/{axis}/{k}"] = np.asarray(v) * (1.0 if axis == "x" else 2.0)   # y differs
        ft["trajectory/coords"] = np.zeros((3, 2))
        ft["trajectory/labels"] = np.arange(3)
    with pytest.raises(PlotError, match="other directions"):
        plot_files([str(out)], PlotOptions(), kinds=["contour"], trajectory=str(traj), out=str(tmp_path))
    with h5py.File(out, "r") as fs, h5py.File(traj, "a") as ft:
        for k, v in fs["directions/y"].items():
            ft[f"directions/y/{k}"][...] = np.asarray(v)
    assert plot_files([str(out)], PlotOptions(), kinds=["contour"], trajectory=str(traj), out=str(tmp_path))


def test_a_figure_states_its_levels_and_clip(tmp_path):
    from types import SimpleNamespace

    from distland.plot.common import PlotOptions, choose_levels, level_note

    v = np.r_[np.linspace(0, 1, 99), 500.0]         # one diverged point far above the rest
    levels = choose_levels([v], PlotOptions(), "t")
    note = level_note([v], levels, PlotOptions(), "surface3d")
    assert "heights clipped at" in note and "95th percentile" in note and "500" in note
    even = level_note([np.linspace(0, 1, 50)], np.linspace(0, 1, 11), PlotOptions(), "contour")
    assert "every 0.1" in even and "clipped" not in even


def test_model_data_channel_mismatch_names_in_channels(tmp_path):
    from distland.sweep import run_surface

    with pytest.raises(ValueError, match=r"model_args.in_channels=1"):
        run_surface(small_config(tmp_path / "r.h5", "model=resnet20", "data.max_samples=8"))


def test_trajectory_hint_grid_holds_the_origin():
    from distland.analysis.trajectory import _grid_through_origin

    lo, hi, n = _grid_through_origin(-0.37, 2.91)
    axis = np.linspace(lo, hi, n)
    assert lo <= -0.37 and hi >= 2.91 and np.min(np.abs(axis)) < 1e-9


@pytest.mark.mpi
def test_reproduce_under_mpirun_two_ranks(tmp_path):
    import subprocess
    import sys

    import h5py
    from test_mpi import _env, _need

    cfgs = _tiny_set(tmp_path)
    env = _env()
    env["PYTHONPATH"] = str(ROOT) + ":" + env["PYTHONPATH"]
    res = subprocess.run([_need("mpirun"), "-np", "2", sys.executable, "-m", "distland", "reproduce", str(cfgs),
                          "--no-plot"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("small is flatter") == 1          # rank 0 reports, once
    for name in ("small", "large"):
        with h5py.File(tmp_path / "surfaces" / f"{name}.h5", "r") as f:
            assert f["done"][()].all() and f.attrs["nranks"] == 2
