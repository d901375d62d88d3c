"""Hessian maps (quantities: [..., hessian]): λmax/λmin at every grid point against eigh of the dense float64
Hessian there, added to a finished loss surface without recomputing the loss, resumed after an interruption, and
refused with one line for a model without ≥ 2-dim weights. (MPI equals serial: tests/test_mpi.py.)"""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from conftest import small_config
from distland.evaluate import SurfaceEvaluator
from distland.quantities.hessian import HessianEvaluator
from distland.surfacefile import read
from distland.sweep import build_reference_model, load_data, run_surface

MODEL = ("model=plugins:bn_mlp", "plugins=[plugins]", "data.max_samples=32")
MAP = ("quantities=[loss, hessian]", "hessian.samples=24")


@pytest.fixture(autouse=True)
def opted_in(monkeypatch):
    monkeypatch.setenv("DISTLAND_PLUGINS", "plugins")


def _no_loss(monkeypatch):
    def refuse(self, coeffs, poll=None):
        raise AssertionError("the loss was recomputed")

    monkeypatch.setattr(SurfaceEvaluator, "evaluate", refuse)


def dense_extremes(cfg, directions, coords):
    """eigh of the dense float64 Hessian of the mean loss over the first 24 train samples, w.r.t. the ≥ 2-dim weights,
    at θ* + Σ c_k d_k (eval mode), computed independently of distland's operator."""
    model, _ = build_reference_model(cfg)
    model = model.double().eval()
    x, y = load_data(cfg)["train"]
    x, y = x[:24].double(), y[:24]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for c, d in zip(coords, directions):
        for k, v in d.items():
            if state[k].is_floating_point():
                state[k] += c * torch.as_tensor(v, dtype=torch.float64)
    names = [k for k, p in model.named_parameters() if p.dim() >= 2]
    shapes = [state[k].shape for k in names]
    sizes = [state[k].numel() for k in names]

    def loss(flat):
        sub = {k: t.view(s) for k, t, s in zip(names, flat.split(sizes), shapes)}
        return nn.functional.cross_entropy(functional_call(model, {**state, **sub}, (x,)), y)

    dense = torch.autograd.functional.hessian(loss, torch.cat([state[k].reshape(-1) for k in names]),
                                              vectorize=True)
    evals = torch.linalg.eigvalsh(dense)
    return float(evals[-1]), float(evals[0])


def test_map_values_equal_eigh_of_the_dense_hessian_at_every_point(tmp_path):
    out = tmp_path / "m.h5"
    cfg = small_config(out, *MODEL, *MAP, "hessian.map_tol=1e-4", "hessian.max_iter=400")
    run_surface(cfg)
    data = read(str(out))
    assert data.masks["hessian_done"].all() and data.masks["done"].all()
    lmax, lmin = data.metrics["max_eig"], data.metrics["min_eig"]
    assert lmin.min() < 0 < lmax.min()   # a non-convex map, so both ends are tested
    with h5py.File(out, "r") as f:
        directions = [{k: f[f"directions/{a}/{k}"][()] for k in f[f"directions/{a}"]} for a in "xy"]
    for i, xv in enumerate(data.x):
        for j, yv in enumerate(data.y):
            ref_max, ref_min = dense_extremes(cfg, directions, (xv, yv))
            scale = max(abs(ref_max), abs(ref_min))
            assert abs(lmax[i, j] - ref_max) <= 1e-3 * scale, (i, j, lmax[i, j], ref_max)
            assert abs(lmin[i, j] - ref_min) <= 1e-3 * scale, (i, j, lmin[i, j], ref_min)
    with h5py.File(out, "r") as f:
        assert f["hessian_hvps"].dtype == np.int32 and (f["hessian_hvps"][()] > 0).all()
        assert f["hessian_converged"][()].all() and f["max_eig"].attrs["done_mask"] == "hessian_done"


def test_a_map_joins_a_loss_surface_without_recomputing_the_loss_and_resumes_exactly(tmp_path, monkeypatch):
    full = tmp_path / "full.h5"
    run_surface(small_config(full, *MODEL, *MAP))
    reference = read(str(full))
    assert (reference.metrics["hessian_hvps"] < 200).all()   # the authors' 1e-2 converges in few products

    out = tmp_path / "s.h5"
    run_surface(small_config(out, *MODEL))
    loss = read(str(out)).metrics["train_loss"]
    _no_loss(monkeypatch)
    calls = {"n": 0}
    real = HessianEvaluator.evaluate

    def crash_after_four(self, points, poll=None):
        calls["n"] += 1
        if calls["n"] > 4:
            raise RuntimeError("injected crash")
        return real(self, points, poll)

    monkeypatch.setattr(HessianEvaluator, "evaluate", crash_after_four)
    with pytest.raises(RuntimeError, match="injected crash"):
        run_surface(small_config(out, *MODEL, *MAP, "sweep.chunk=1"))
    partial = read(str(out))
    missing = ~partial.masks["hessian_done"]
    assert missing.sum() == 5 and np.isnan(partial.metrics["max_eig"][missing]).all()
    monkeypatch.setattr(HessianEvaluator, "evaluate", real)
    summary = run_surface(small_config(out, *MODEL, *MAP, "sweep.chunk=1"))
    assert summary.computed == 5
    data = read(str(out))
    np.testing.assert_array_equal(data.metrics["train_loss"], loss)
    for k in ("max_eig", "min_eig", "hessian_hvps"):
        np.testing.assert_array_equal(data.metrics[k], reference.metrics[k], err_msg=k)


def test_a_non_finite_point_is_stored_as_nan_and_done(tmp_path, monkeypatch):
    out = tmp_path / "n.h5"
    real = HessianEvaluator.__init__

    def init(self, q, ctx):
        real(self, q, ctx)
        good, set_point, at = self._extremes, self.mover.set_point, {}

        def moved(coords):
            at["x"] = coords[0]
            set_point(coords)

        def extremes(matvec, dim, *args, **kwargs):   # at x = 1 every product is NaN
            return good((lambda v: matvec(v) * float("nan")) if at["x"] > 0.5 else matvec, dim, *args, **kwargs)

        self.mover.set_point, self._extremes = moved, extremes

    monkeypatch.setattr(HessianEvaluator, "__init__", init)
    run_surface(small_config(out, *MODEL, *MAP, "grid.y=[0, 0, 1]", "grid.x=[0, 1, 2]"))
    data = read(str(out))
    assert data.masks["hessian_done"].all()
    assert np.isfinite(data.metrics["max_eig"][0]).all() and np.isnan(data.metrics["max_eig"][1]).all()
    assert np.isnan(data.metrics["min_eig"][1]).all()


def test_a_model_without_two_dim_weights_is_refused_in_one_line_before_writing(tmp_path, capsys):
    from conftest import small_config_dict, write_yaml
    from distland import cli

    out = tmp_path / "bad.h5"
    path = write_yaml(tmp_path / "bad.yaml", small_config_dict(out, model="plugins:scale_only", plugins=["plugins"],
                                                               quantities=["loss", "hessian"]))
    assert cli.main(["surface", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distland: error:") and "hessian.params: all" in err and "\n" not in err, err
    assert not out.exists()


def test_plots_and_info_of_a_map(tmp_path):
    from distland.info import describe_surface
    from distland import cli

    def plot_main(args):
        return cli.main(["plot", *args])

    two, one = tmp_path / "two.h5", tmp_path / "one.h5"
    run_surface(small_config(two, *MODEL, *MAP))
    run_surface(small_config(one, *MODEL, *MAP, "grid.y=null", "grid.x=[-1, 1, 5]"))
    out = tmp_path / "plots"
    assert plot_main([str(two), "--out", str(out), "--kinds", "heatmap"]) == 0
    assert plot_main([str(two), "--out", str(out), "--kinds", "convexity,contour", "--metric", "min_eig"]) == 0
    assert plot_main([str(one), "--out", str(out), "--metric", "max_eig"]) == 0
    assert plot_main([str(one), "--out", str(out)]) == 0   # 1-D default: loss/accuracy curves plus convexity
    names = sorted(p.name for p in out.iterdir())
    assert names == ["one_1d.png", "one_1d_max_eig.png", "one_convexity_ratio.png", "two_contour_min_eig.png",
                     "two_convexity_ratio.png", "two_heatmap_train_loss.png"], names
    # A loss-only surface has no map: one line, exit 2.
    loss_only = tmp_path / "loss.h5"
    run_surface(small_config(loss_only, *MODEL))
    assert plot_main([str(loss_only), "--out", str(out), "--kinds", "convexity"]) == 2

    data = read(str(two))
    ratio = np.abs(data.metrics["min_eig"] / data.metrics["max_eig"])
    text = describe_surface(str(two))
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("hessian     "))
    assert f"λmax {data.metrics['max_eig'][1, 1]:.6g}" in line and "at θ*" in line
    assert f"on {100 * (ratio < 0.1).mean():.3g}% of 9 points" in line and "max_eig: min" in text
