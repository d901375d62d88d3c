"""Sharpness numbers on analytic surfaces whose answers are known in closed form."""
from __future__ import annotations

import math
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from distland.analysis.sharpness import (axis_width, center_loss, fit_quadratic, format_report, lmc_barrier,
                                         lmc_error_barrier, read_report, sharpness_report, store_report)


def surface(x, y, fn, kind="random", done=None):
    """A stand-in for distland.surfacefile.SurfaceData holding ``train_loss`` = fn(x, y) on the grid."""
    x = np.asarray(x, float)
    if y is None:
        values = fn(x)
    else:
        y = np.asarray(y, float)
        values = fn(x[:, None], y[None, :])
    values = np.asarray(values, float)
    done = np.ones(values.shape, bool) if done is None else done
    return SimpleNamespace(x=x, y=y, metrics={"train_loss": values}, done=done, attrs={},
                           config={"directions": {"kind": kind}}, path="test.h5", ndim=1 if y is None else 2)


def test_paraboloid_curvature_on_non_square_grid():
    a, b = 1.5, 0.5
    data = surface(np.linspace(-1, 1, 41), np.linspace(-0.8, 0.8, 33), lambda x, y: a * x ** 2 + b * y ** 2)
    r = sharpness_report(data, radius=0.25)
    assert r["center_loss"] == pytest.approx(0.0, abs=1e-12)
    assert r["center_interpolated"] == 0.0
    assert r["hess_xx"] == pytest.approx(2 * a, abs=1e-6)
    assert r["hess_yy"] == pytest.approx(2 * b, abs=1e-6)
    assert r["hess_xy"] == pytest.approx(0.0, abs=1e-6)
    assert (r["hess_eig_min"], r["hess_eig_max"]) == pytest.approx((2 * b, 2 * a), abs=1e-6)
    assert r["hess_trace"] == pytest.approx(2 * (a + b), abs=1e-6)
    assert r["mean_curvature"] == pytest.approx(a + b, abs=1e-6)
    assert abs(r["grad_x"]) < 1e-6 and abs(r["grad_y"]) < 1e-6 and r["fit_rmse"] < 1e-9
    # The largest increase in the disc of radius 0.25 is on the stiff axis, at the grid point (±0.25, 0).
    assert r["max_increase"] == pytest.approx(a * 0.25 ** 2, abs=1e-12)
    xx, yy = np.meshgrid(data.x, data.y, indexing="ij")
    disc = np.hypot(xx, yy) <= 0.25 + 1e-12
    assert r["mean_increase"] == pytest.approx(data.metrics["train_loss"][disc].mean(), abs=1e-12)
    assert r["radius_points"] == disc.sum()


def test_cross_term_and_fit_radius():
    data = surface(np.linspace(-1, 1, 21), np.linspace(-1, 1, 21), lambda x, y: x ** 2 + 0.5 * x * y + 2 * y ** 2 + 3)
    r = sharpness_report(data, fit_radius=0.6)
    H = np.array([[2.0, 0.5], [0.5, 4.0]])
    assert (r["hess_xx"], r["hess_yy"], r["hess_xy"]) == pytest.approx((2.0, 4.0, 0.5), abs=1e-6)
    assert (r["hess_eig_min"], r["hess_eig_max"]) == pytest.approx(tuple(np.linalg.eigvalsh(H)), abs=1e-6)
    assert r["fit_radius"] == 0.6 and r["fit_loss"] == pytest.approx(3.0, abs=1e-9)


def test_fit_radius_grows_to_a_stencil():
    # Grid step 0.1 > radius 0.05: the fit must still use a 3×3 stencil rather than fail.
    data = surface(np.linspace(-1, 1, 21), np.linspace(-1, 1, 21), lambda x, y: 2 * x ** 2 + y ** 2)
    r = sharpness_report(data, radius=0.05)
    assert r["fit_points"] >= 9 and r["fit_radius"] >= 0.1
    assert r["hess_xx"] == pytest.approx(4.0, abs=1e-6)


def test_one_d_curvature_and_basin_width():
    x = np.linspace(-1, 1, 201)
    data = surface(x, None, lambda x: x ** 2)
    for tau in (0.25, 0.04):
        r = sharpness_report(data, threshold=tau)
        assert r["width_x"] == pytest.approx(2 * math.sqrt(tau), abs=x[1] - x[0])
        assert r["width_x_lo"] == pytest.approx(-math.sqrt(tau), abs=x[1] - x[0])
        assert r["width_x_open"] == 0.0
    assert r["curvature"] == pytest.approx(2.0, abs=1e-6)
    assert "barrier" not in r and "center_y" not in r and "basin_area" not in r
    tilted = sharpness_report(surface(x, None, lambda x: 3 * x ** 2 + x))
    assert tilted["curvature"] == pytest.approx(6.0, abs=1e-6) and tilted["grad_x"] == pytest.approx(1.0, abs=1e-6)


def test_basin_that_leaves_the_grid_is_a_lower_bound():
    r = sharpness_report(surface(np.linspace(-1, 1, 21), None, lambda x: 0.1 * x ** 2), threshold=1.0)
    assert r["width_x"] == pytest.approx(2.0) and r["width_x_open"] == 1.0


def test_two_d_basin_area():
    x = np.linspace(-1, 1, 101)
    tau = 0.25
    r = sharpness_report(surface(x, x, lambda x, y: x ** 2 + y ** 2), threshold=tau)
    h = x[1] - x[0]
    assert r["width_x"] == pytest.approx(2 * math.sqrt(tau), abs=h)
    assert r["width_y"] == pytest.approx(2 * math.sqrt(tau), abs=h)
    assert r["basin_radius"] == pytest.approx(math.sqrt(tau), abs=h)
    assert r["basin_area_fraction"] == pytest.approx(math.pi * tau / 4, rel=0.05)
    assert r["basin_open"] == 0.0
    # A basin larger than the grid covers exactly the grid's area, as a lower bound.
    whole = sharpness_report(surface(x, np.linspace(0, 0.5, 11), lambda x, y: 0 * x + 0 * y), threshold=tau)
    assert whole["basin_area"] == pytest.approx(2 * 0.5) and whole["basin_area_fraction"] == pytest.approx(1.0)
    assert whole["basin_open"] == 1.0 and whole["basin_points"] == 101 * 11


def test_basin_is_the_connected_component_only():
    # A second, equally deep well at x = 0.8 lies below the threshold too, but is not connected to the centre.
    x = np.linspace(-1, 1, 81)
    tau = 0.05
    data = surface(x, x, lambda x, y: np.minimum(x ** 2, 20 * (x - 0.8) ** 2) + y ** 2)
    r = sharpness_report(data, threshold=tau)
    assert r["width_x_hi"] == pytest.approx(math.sqrt(tau), abs=x[1] - x[0])
    assert r["basin_radius"] == pytest.approx(math.sqrt(tau), abs=x[1] - x[0])
    assert r["basin_points"] < (data.metrics["train_loss"] <= tau).sum()


def test_invalid_points_are_excluded_and_counted():
    x, y = np.linspace(-1, 1, 21), np.linspace(-1, 1, 21)
    data = surface(x, y, lambda x, y: x ** 2 + 2 * y ** 2)
    loss, done = data.metrics["train_loss"], data.done
    loss[11, 10] = np.nan          # pending, right next to the centre
    done[11, 10] = False
    loss[9, 9] = np.inf            # diverged
    loss[8, 10] = np.nan           # diverged with NaN (done)
    loss[0, 0] = np.nan            # pending
    done[0, 0] = False
    r = sharpness_report(data, radius=0.25)
    assert (r["n_valid"], r["n_diverged"], r["n_pending"]) == (441 - 4, 2, 2)
    assert r["radius_excluded"] == 3
    assert r["hess_xx"] == pytest.approx(2.0, abs=1e-6) and r["hess_yy"] == pytest.approx(4.0, abs=1e-6)
    assert math.isfinite(r["max_increase"]) and math.isfinite(r["mean_increase"])
    # The walk along +x stops at the pending neighbour: a lower bound.
    assert r["width_x_open"] == 1.0 and r["width_x_hi"] == pytest.approx(0.0)
    text = format_report(r)
    assert "pending" in text and "lower bound" in text


def test_pending_centre_falls_back_to_nearest_valid_point():
    x = np.linspace(-1, 1, 21)
    data = surface(x, x, lambda x, y: x ** 2 + y ** 2 + 1)
    data.metrics["train_loss"][10, 10] = np.nan
    data.done[10, 10] = False
    loss, c, interpolated = center_loss(data.x, data.y, data.metrics["train_loss"], data.done)
    assert not interpolated and math.hypot(*c) == pytest.approx(0.1)
    assert loss == pytest.approx(1.01)


def test_off_centre_grid_without_zero():
    a, b = 1.0, 3.0
    x, y = np.linspace(-0.95, 1.05, 21), np.linspace(-0.5, 1.1, 9)   # neither axis holds 0
    data = surface(x, y, lambda x, y: a * x ** 2 + b * y ** 2 + 1)
    r = sharpness_report(data)
    assert r["center_interpolated"] == 1.0 and (r["center_x"], r["center_y"]) == (0.0, 0.0)
    # Bilinear interpolation at the middle of a cell averages the four corners.
    assert r["center_loss"] == pytest.approx(1 + a * 0.05 ** 2 + b * 0.1 ** 2, abs=1e-12)
    assert (r["hess_xx"], r["hess_yy"]) == pytest.approx((2 * a, 2 * b), abs=1e-6)
    assert r["fit_loss"] == pytest.approx(1.0, abs=1e-9)


def test_grid_away_from_origin_uses_nearest_point():
    x = np.linspace(0.5, 1.5, 11)
    r = sharpness_report(surface(x, x, lambda x, y: (x - 1) ** 2 + (y - 1) ** 2))
    assert (r["center_x"], r["center_y"], r["center_interpolated"]) == (0.5, 0.5, 0.0)
    assert r["hess_xx"] == pytest.approx(2.0, abs=1e-6)


def test_barrier_of_known_curve():
    h = 0.7

    def curve(a):
        return 1 + a + 4 * h * a * (1 - a) * ((a >= 0) & (a <= 1))

    r = sharpness_report(surface(np.linspace(-0.5, 1.5, 41), None, curve, kind="interp"))
    assert r["barrier"] == pytest.approx(h, abs=1e-12) and r["barrier_alpha"] == pytest.approx(0.5)
    assert (r["barrier_loss_0"], r["barrier_loss_1"]) == pytest.approx((1.0, 2.0))
    # Ends between grid points are interpolated linearly (the curve is linear outside [0, 1]).
    off = lmc_barrier(np.linspace(-0.55, 1.45, 41), curve(np.linspace(-0.55, 1.45, 41)))
    assert off["barrier_loss_0"] == pytest.approx(1.0, abs=0.05 * 4 * h)
    assert off["barrier"] == pytest.approx(h, abs=0.05 * 4 * h)
    # A convex curve has no barrier; a diverged point on the path an infinite one.
    assert lmc_barrier(np.linspace(0, 1, 11), np.linspace(0, 1, 11) ** 2)["barrier"] == 0.0
    bad = curve(np.linspace(-0.5, 1.5, 41))
    bad[20] = np.inf
    assert lmc_barrier(np.linspace(-0.5, 1.5, 41), bad, np.ones(41, bool))["barrier"] == math.inf


def test_pure_helpers():
    fit = fit_quadratic(np.array([[0.0], [1.0], [2.0]]), np.array([1.0, 2.0, 5.0]), [0.0])
    assert fit.H[0, 0] == pytest.approx(2.0) and fit.g[0] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(fit_quadratic(np.array([[0.0], [1.0]]), np.array([1.0, 2.0]), [0.0]).H[0, 0])
    lo, hi, open_ = axis_width(np.array([-1.0, 0.0, 1.0]), np.array([1.0, 0.0, 1.0]), np.ones(3, bool), 0.0, 0.0, 0.5)
    assert (lo, hi, open_) == (-0.5, 0.5, False)


def test_store_read_and_format(tmp_path):
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        f.attrs["other"] = 1
    data = surface(np.linspace(-1, 1, 11), np.linspace(-1, 1, 11), lambda x, y: x ** 2 + y ** 2)
    report = sharpness_report(data)
    store_report(str(path), report, metric="train_loss")
    store_report(str(path), {"center_loss": 2.0})   # a second report replaces the first one entirely
    with h5py.File(path, "r") as f:
        assert f.attrs["other"] == 1
        assert read_report(dict(f.attrs)) == {"center_loss": 2.0}
    text = format_report(report, "train_loss")
    assert "H_xx" in text and "basin" in text and "train_loss" in text
    with pytest.raises(KeyError, match="test_acc"):
        sharpness_report(data, metric="test_acc")


def test_error_barrier_of_frankle_et_al():
    """E(α) = 100 − accuracy: the barrier is max E(α) − ½[E(0) + E(1)] over α ∈ [0, 1] (Frankle et al. 2020), reported
    beside the loss barrier for interpolation surfaces that hold the accuracy."""
    alpha = np.linspace(-0.5, 1.5, 41)
    inside = (alpha >= 0) & (alpha <= 1)
    error = 8 + 4 * alpha + 30 * np.sin(np.pi * alpha) * inside   # E(0) = 8, E(1) = 12, peak near α = 0.5
    r = lmc_error_barrier(alpha, 100 - error)
    peak = np.argmax(np.where(inside, error, -np.inf))
    assert (r["error_barrier_0"], r["error_barrier_1"]) == pytest.approx((8.0, 12.0))
    assert r["error_barrier"] == pytest.approx(error[peak] - 10.0) and r["error_barrier_alpha"] == alpha[peak]
    # No bump: the worse end sets it, ½|E(0) − E(1)|, unlike the loss barrier above the chord (0 here).
    flat = lmc_error_barrier(alpha, 100 - (8 + 4 * alpha))
    assert flat["error_barrier"] == pytest.approx(2.0) and flat["error_barrier_alpha"] == 1.0
    data = surface(alpha, None, lambda a: 1 + a, kind="interp")
    data.metrics["train_acc"] = 100 - error
    report = sharpness_report(data)
    assert report["error_barrier"] == pytest.approx(r["error_barrier"]) and report["barrier"] == pytest.approx(0.0)
    text = format_report(report)
    assert "Frankle et al. 2020" in text and "Entezari et al. 2022" in text
    assert "error_barrier" not in sharpness_report(surface(alpha, None, lambda a: 1 + a, kind="random"))
