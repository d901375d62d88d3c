"""Options a reproduction of the paper needs (issue 11 §2): a plane through three models, per-axis direction
settings and an interpolation x axis with a random y axis, trajectory projection onto given directions, data
subsets and raw CIFAR-10, and the plot options (error metric, x-limits, contour step, upsampled export)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from distland import directions as D
from distland.config import ConfigError

from conftest import make_model, plain_loss, save_checkpoint, small_config


# --------------------------------------------------------------------------------------------- plane
def _plane_files(tmp_path):
    return [save_checkpoint(tmp_path / f"m{i}.pt", seed=i) for i in (1, 2, 3)]


def test_plane_through_three_models_is_exact_at_its_corners(tmp_path, digits_train):
    from distland.surfacefile import read
    from distland.sweep import run_surface

    a, b, c = _plane_files(tmp_path)
    out = tmp_path / "plane.h5"
    cfg = small_config(out, f"checkpoint={a}", "directions.kind=plane", f"directions.target={b}",
                       f"directions.target2={c}", "grid.x=[0, 1, 2]", "grid.y=[0, 1, 2]")
    assert cfg.directions.resolved_type() == "states"   # the end points' BatchNorm statistics come along
    run_surface(cfg)
    data = read(str(out))
    loss = data.metrics["train_loss"]
    x, y = digits_train
    for (i, j), ckpt in (((0, 0), a), ((1, 0), b), ((0, 1), c)):
        model = make_model()
        model.load_state_dict(torch.load(ckpt, weights_only=True))
        assert loss[i, j] == pytest.approx(plain_loss(model, x, y)[0], rel=1e-5), (i, j)
    # the directions are exactly θ′ − θ and θ″ − θ (BatchNorm running statistics included)
    sa, sb, sc = (torch.load(p, weights_only=True) for p in (a, b, c))
    stored = D.load_file(out, {k: v for k, v in sa.items()}, 2)
    key = next(k for k in sa if k.endswith("running_mean"))
    np.testing.assert_allclose(stored[0][key].numpy(), (sb[key] - sa[key]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(stored[1][key].numpy(), (sc[key] - sa[key]).numpy(), rtol=1e-6)


def test_plane_identity_names_both_targets(tmp_path):
    from distland.sweep import prepare

    a, b, c = _plane_files(tmp_path)
    base = [f"checkpoint={a}", "directions.kind=plane", f"directions.target={b}", "grid.x=[0, 1, 2]",
            "grid.y=[0, 1, 2]"]
    one = prepare(small_config(tmp_path / "p.h5", *base, f"directions.target2={c}"), False).spec.identity
    two = prepare(small_config(tmp_path / "p.h5", *base, f"directions.target2={a}"), False).spec.identity
    assert one["directions"]["target2"] and one["directions"]["target2"] != two["directions"]["target2"]
    assert one["directions"]["bn_variance"] == "geometric"


def test_plane_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="target2"):
        small_config(tmp_path / "p.h5", "directions.kind=plane", "directions.target=a.pt")
    with pytest.raises(ConfigError, match="2-D"):
        small_config(tmp_path / "p.h5", "directions.kind=plane", "directions.target=a.pt",
                     "directions.target2=b.pt", "grid.y=null")
    with pytest.raises(ConfigError, match="plane. only"):
        small_config(tmp_path / "p.h5", "directions.target2=b.pt")


def test_plane_default_grid_has_the_three_models_on_it():
    from distland.config import config_from_mapping
    from distland.grid import Grid

    cfg = config_from_mapping({"directions": {"kind": "plane", "target": "b.pt", "target2": "c.pt"}})
    grid = Grid.from_config(cfg.grid)
    assert 0.0 in grid.x and 1.0 in grid.x and 0.0 in grid.y and 1.0 in grid.y


# --------------------------------------------------------------------------------------------- per-axis settings
@pytest.fixture(scope="module")
def reference():
    return D.reference_weights(make_model("democnn", seed=3), "weights")


def test_y_axis_norm_and_ignore_override_x(reference):
    same = D.make_random(reference, 0, "filter", "biasbn", 2)
    mixed = D.make_random(reference, 0, "filter", "biasbn", 2, ynorm="layer", yignore="none")
    for key in reference:
        assert torch.equal(mixed[0][key], same[0][key])           # x untouched
    conv = next(k for k, v in reference.items() if v.dim() == 4)
    bias = next(k for k, v in reference.items() if v.dim() == 1)
    # layer norm on y: the whole tensor has θ's norm, the filters do not each have their filter's norm
    assert float(mixed[1][conv].double().norm()) == pytest.approx(float(reference[conv].double().norm()), rel=1e-6)
    assert not torch.allclose(mixed[1][conv], same[1][conv])
    assert torch.count_nonzero(same[1][bias]) == 0 and torch.count_nonzero(mixed[1][bias]) > 0
    # the same draws: y under layer norm is parallel to y under filter norm tensor by tensor
    a, b = mixed[1][conv].double().reshape(-1), same[1][conv].double().reshape(-1)
    assert float(a @ b / (a.norm() * b.norm())) > 0.5


def test_y_axis_settings_in_the_config(tmp_path):
    cfg = small_config(tmp_path / "s.h5", "directions.ynorm=layer", "directions.yignore=none")
    assert cfg.directions.axis(0) == ("filter", "biasbn") and cfg.directions.axis(1) == ("layer", "none")
    with pytest.raises(ConfigError, match="directions.ynorm"):
        small_config(tmp_path / "s.h5", "directions.ynorm=bogus")


def test_interpolation_x_with_random_y(tmp_path, digits_train):
    from distland.surfacefile import read
    from distland.sweep import run_surface

    a, b = save_checkpoint(tmp_path / "a.pt", seed=1), save_checkpoint(tmp_path / "b.pt", seed=2)
    out = tmp_path / "iy.h5"
    run_surface(small_config(out, f"checkpoint={a}", "directions.kind=interp", f"directions.target={b}",
                             "directions.ynorm=layer", "grid.x=[0, 1, 2]", "grid.y=[-1, 1, 3]"))
    data = read(str(out))
    assert data.metrics["train_loss"].shape == (2, 3)
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    stored = [{k: v.numpy() for k, v in d.items()} for d in D.load_file(out, sa, 2)]
    conv = next(k for k, v in sa.items() if v.dim() == 4)
    np.testing.assert_allclose(stored[0][conv], (sb[conv] - sa[conv]).numpy(), rtol=1e-6)
    y = stored[1][conv]
    assert np.linalg.norm(y) == pytest.approx(float(sa[conv].double().norm()), rel=1e-5)   # layer-normalized
    model = make_model()
    model.load_state_dict(torch.load(b, weights_only=True))
    x, t = digits_train
    assert data.metrics["train_loss"][1, 1] == pytest.approx(plain_loss(model, x, t)[0], rel=1e-5)  # (1, 0) = θ′


# --------------------------------------------------------------------------------------------- data
def test_split_index_takes_the_authors_contiguous_chunk_and_subset_is_seeded():
    from distland.data import select

    x = torch.arange(23.0).reshape(23, 1)
    y = torch.arange(23)
    cx, cy = select(x, y, chunk=[2, 5])                 # m = 23 // 5 = 4: samples 8..11
    assert cy.tolist() == [8, 9, 10, 11] and cx[:, 0].tolist() == [8.0, 9.0, 10.0, 11.0]
    a = select(x, y, subset=7, seed=3)[1]
    assert a.tolist() == select(x, y, subset=7, seed=3)[1].tolist()       # reproducible
    assert a.tolist() != select(x, y, subset=7, seed=4)[1].tolist()       # the seed matters
    assert len(set(a.tolist())) == 7 and a.tolist() == sorted(a.tolist())
    with pytest.raises(ValueError, match="data.subset"):
        select(x, y, subset=30)


def test_data_subset_and_split_index_enter_the_identity(tmp_path):
    from distland.sweep import prepare

    out = tmp_path / "d.h5"
    plain = prepare(small_config(out, "data.max_samples=0"), False).spec.identity["data"]
    sub = prepare(small_config(out, "data.max_samples=0", "data.subset=40", "data.subset_seed=5"),
                  False).spec.identity["data"]
    chunk = prepare(small_config(out, "data.max_samples=0", "data.split_index=[1, 4]"), False).spec.identity["data"]
    assert "subset" not in plain and "split_index" not in plain   # files made before these keys still resume
    assert sub["subset"] == 40 and sub["subset_seed"] == 5 and sub["digest"] != plain["digest"]
    assert chunk["split_index"] == [1, 4] and chunk["digest"] not in (plain["digest"], sub["digest"])
    with pytest.raises(ConfigError, match="split_index"):
        small_config(out, "data.split_index=[4, 4]")


def test_raw_cifar10_is_only_scaled_to_unit_range(tmp_path):
    from distland.data import load_split

    try:
        import fakecifar as fc
    except ImportError:  # pragma: no cover - run from the repository root
        from tests import fakecifar as fc
    folder = fc.write_fake_cifar(str(tmp_path / "release"), 4, 4)
    raw, labels = load_split("cifar10", "test", root=folder, normalize=False)
    data, _ = fc.fake_batch(fc.TEST, 4)
    np.testing.assert_allclose(raw.numpy(), data.reshape(-1, 3, 32, 32).astype(np.float32) / 255, rtol=1e-6)
    normalized, _ = load_split("cifar10", "test", root=folder)
    assert not torch.allclose(raw, normalized) and float(raw.min()) >= 0 and float(raw.max()) <= 1


# --------------------------------------------------------------------------------------------- plots
def _plot_helpers():
    import matplotlib

    matplotlib.use("Agg")
    import test_plot

    return test_plot


def test_error_metric_and_any_dataset_can_be_plotted(tmp_path, capsys):
    from distland.plot.common import load, values

    tp = _plot_helpers()
    x, y = np.linspace(-1, 1, 5), np.linspace(-1, 1, 4)
    path = tp.write_surface(str(tmp_path / "s.h5"), x, y, {"train_loss": tp.paraboloid,
                                                            "train_acc": lambda a, b: 90 - 5 * a ** 2,
                                                            "grad_norm": tp.tilted})
    data = load(path)
    np.testing.assert_allclose(values(data, "train_err", False), 100 - values(data, "train_acc", False))
    rc, io = tp._run([path, "--metric", "train_err", "--kinds", "contour", "--out", str(tmp_path / "o")], capsys)
    assert rc == 0 and "s_contour_train_err.png" in io.out
    rc, io = tp._run([path, "--metric", "grad_norm", "--kinds", "heatmap", "--out", str(tmp_path / "o")], capsys)
    assert rc == 0 and "s_heatmap_grad_norm.png" in io.out
    rc, io = tp._run([path, "--metric", "nope"], capsys)
    assert rc == 2 and "nope" in io.err and "grad_norm" in io.err


def test_vlevel_gives_contours_every_step_from_vmin():
    from distland.plot import PlotOptions
    from distland.plot.common import choose_levels

    z = np.linspace(0.0, 3.0, 50)
    levels = choose_levels([z], PlotOptions(vmin=0.1, vmax=3.0, vlevel=0.5))
    np.testing.assert_allclose(levels, [0.1, 0.6, 1.1, 1.6, 2.1, 2.6, 3.0])
    auto = choose_levels([z], PlotOptions(vlevel=0.25))
    assert np.allclose(np.diff(auto), 0.25) and auto[0] <= 0.0 and auto[-1] >= 3.0


def test_xlim_limits_a_1d_plot(tmp_path, capsys):
    from distland.plot import PlotOptions
    from distland.plot.common import load
    from distland.plot.surface import plot_1d

    tp = _plot_helpers()
    xs = np.linspace(-0.5, 1.5, 21)
    path = tp.write_surface(str(tmp_path / "c.h5"), xs, None, {"train_loss": lambda a, _: 0.1 + a ** 2,
                                                                "train_acc": lambda a, _: 99 - a ** 2})
    fig = plot_1d(load(path), PlotOptions(xlim=(0.0, 1.0)))
    assert fig.axes[0].get_xlim() == (0.0, 1.0)
    rc, io = tp._run([path, "--xlim", "0", "1", "--metric", "train_err", "--out", str(tmp_path / "o")], capsys)
    assert rc == 0 and "c_1d_train_err.png" in io.out
    rc, io = tp._run([path, "--xlim", "1", "0"], capsys)
    assert rc == 2 and "--xlim" in io.err


def test_upsampled_vts_keeps_computed_points_and_gaps(tmp_path):
    from distland.plot import PlotOptions
    from distland.plot.common import load
    from distland.plot.export import export_vts, upsample

    # A cubic is reproduced exactly by the cubic spline between the computed points.
    x, y = np.linspace(0.0, 3.0, 4), np.linspace(-1.0, 1.0, 5)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    fine_axes, out = upsample([x, y], {"f": xx ** 3 - yy ** 2}, 3)
    assert len(fine_axes[0]) == 10 and len(fine_axes[1]) == 13
    fx, fy = np.meshgrid(*fine_axes, indexing="ij")
    np.testing.assert_allclose(out["f"], fx ** 3 - fy ** 2, atol=1e-9)
    # a gap spreads to the fine points of the cells around it, never further
    tp = _plot_helpers()
    done = np.ones((4, 5), dtype=bool)
    done[1, 2] = False
    data = load(tp.write_surface(str(tmp_path / "u.h5"), x, y, {"train_loss": tp.tilted}, done=done))
    path = export_vts(data, str(tmp_path / "u"), PlotOptions(upsample=3))
    header, block = tp._vts_header_and_blocks(path)
    arrays = {a.get("Name"): a for a in header.iter("DataArray")}
    loss = block(int(arrays["train_loss"].get("offset")), "<f8").reshape(13, 10)   # VTK order: x fastest
    assert np.isnan(loss[6, 3])                                       # the computed gap (i=1, j=2)
    assert np.isnan(loss[4, 1]) and np.isnan(loss[8, 5])              # inside its neighbouring cells
    assert np.isfinite(loss[0, 0]) and np.isfinite(loss[12, 9]) and np.isfinite(loss[6, 9])
    np.testing.assert_allclose(loss[::3, ::3][np.isfinite(loss[::3, ::3])],
                               tp.tilted(*np.meshgrid(x, y))[np.isfinite(loss[::3, ::3])])


# --------------------------------------------------------------------------------------------- trajectory
def test_trajectory_projected_onto_a_surfaces_directions_overlays_it(tmp_path, capsys):
    from distland.analysis import trajectory as T
    from distland.cli import main
    from distland.sweep import run_surface

    final = save_checkpoint(tmp_path / "final.pt", seed=1)
    out = tmp_path / "s.h5"
    run_surface(small_config(out, f"checkpoint={final}", "directions.ynorm=layer"))
    ref = torch.load(final, weights_only=True)
    dx, dy = D.load_file(out, D.reference_weights(make_model(), "weights"), 2)
    run = tmp_path / "ckpts"
    run.mkdir()
    truth = [(0.8, -0.6), (0.5, -0.2), (0.1, 0.05)]
    for epoch, (a, b) in zip((1, 5, 10), truth):   # θ_k = θ* + a d_x + b d_y exactly
        state = {k: (v + a * dx[k] + b * dy[k]) if k in dx else v.clone() for k, v in ref.items()}
        torch.save(state, run / f"model_{epoch}.pt")
    traj_path = tmp_path / "traj.h5"
    assert main(["trajectory", str(run), "--final", str(final), "--dir-file", str(out), "--out", str(traj_path),
                 "--model", "democnn"]) == 0
    assert "no PCA" in capsys.readouterr().out
    import h5py

    with h5py.File(traj_path, "r") as f:
        coords = f["trajectory/coords"][()]
        assert f.attrs["projected_on"] == str(out)
    np.testing.assert_allclose(coords, np.array(truth), atol=1e-5)
    # the surface's plot accepts it (same directions), and a path-only plot is drawn from the file alone
    assert main(["plot", str(out), "--trajectory", str(traj_path), "--kinds", "contour",
                 "--out", str(tmp_path / "p")]) == 0
    assert main(["plot", str(traj_path), "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "traj_path.png").is_file() and "traj_path.png" in capsys.readouterr().out
    # projections onto another surface's directions are still refused over this one
    other = tmp_path / "o.h5"
    run_surface(small_config(other, f"checkpoint={final}", "directions.seed=7"))
    assert main(["plot", str(other), "--trajectory", str(traj_path), "--kinds", "contour",
                 "--out", str(tmp_path / "p")]) == 2
    with pytest.raises(Exception, match="not found"):
        T.project_onto(str(run), str(final), str(tmp_path / "missing.h5"))


def test_trajectory_projection_reads_the_authors_direction_files(tmp_path):
    import h5py

    from distland.analysis import trajectory as T

    final = save_checkpoint(tmp_path / "final.pt", seed=1)
    ref = torch.load(final, weights_only=True)
    keys = [k for k, _ in make_model().named_parameters()]
    gen = torch.Generator().manual_seed(0)
    dx = {k: torch.randn(ref[k].shape, generator=gen) for k in keys}
    dy = {k: torch.randn(ref[k].shape, generator=gen) for k in keys}
    legacy = tmp_path / "dirs.h5"
    with h5py.File(legacy, "w") as f:   # the authors' layout: xdirection/0..k-1 in parameter order
        for name, d in (("xdirection", dx), ("ydirection", dy)):
            for i, k in enumerate(keys):
                f[f"{name}/{i}"] = d[k].numpy()
    run = tmp_path / "ckpts"
    run.mkdir()
    torch.save({k: (v + 0.3 * dx[k] - 0.7 * dy[k]) if k in dx else v for k, v in ref.items()}, run / "m_2.pt")
    traj = T.project_onto(str(run), str(final), str(legacy), model=make_model())
    np.testing.assert_allclose(traj.coords, [[0.3, -0.7]], atol=1e-6)
    assert traj.residual[0] < 1e-5 and traj.projected_on == str(legacy)


def test_python_api_plots_the_error_and_a_step_of_levels(tmp_path):
    import distland

    tp = _plot_helpers()
    path = tp.write_surface(str(tmp_path / "a.h5"), np.linspace(-1, 1, 5), np.linspace(-1, 1, 4),
                            {"train_loss": tp.paraboloid, "train_acc": lambda a, b: 90 - 5 * a ** 2})
    fig = distland.read(path).plot("contour", metric="train_err", vlevel=1.0)
    assert "train_err" in fig.axes[0].get_title() + fig.get_suptitle()
