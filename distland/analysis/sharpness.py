"""Sharpness numbers of a loss surface L(α, β) (or L(α) in 1-D) sampled on a grid.

Coordinates are the surface's own axes: with filter-normalized directions (Li et al. 2018, §4) one unit along an
axis is a step of one filter norm, so the numbers below compare across networks; with other normalizations they are
in the directions' units. Let p = (α, β), L_c the loss at the centre c, and τ the basin threshold.

Point classes. A grid point is *valid* when it is done and its loss is finite; *diverged* when done with a NaN/inf
loss; *pending* when not done (no done array: NaN means pending). Invalid points are excluded from every number and
counted (``n_valid``, ``n_diverged``, ``n_pending``).

- **Centre** c (``center_loss``, ``center_x``/``center_y``, ``center_interpolated``). If (0, 0) is a grid point
  (to 1e-9 of the axis span) c = (0, 0) and L_c is its value. Otherwise, if (0, 0) lies inside the grid and the
  corners of its cell are valid, L_c is the bilinear (1-D: linear) interpolation there and c = (0, 0). Otherwise c
  is the valid grid point nearest to (0, 0). Every number below is measured from this c.
- **Radius** r (``max_increase``, ``mean_increase``, ``radius_points``): over valid points with ‖p − c‖₂ ≤ r,
  max(L − L_c) and mean(L − L_c). Invalid points inside the disc are counted in ``radius_excluded``.
- **Quadratic fit** (``fit_*``, ``grad_*``, ``hess_*``): least squares of L(p) ≈ c₀ + gᵀ(p − c) + ½(p − c)ᵀH(p − c)
  over the valid points with ‖p − c‖ ≤ r_fit. r_fit defaults to r and grows to the distance of the 9th (1-D: 3rd)
  nearest valid point when fewer lie inside (a 3×3 stencil at least), and further, doubling the point count,
  while the points cannot determine the quadratic (e.g. only two grid lines near an off-grid centre). Coordinates
  are scaled by r_fit before solving, for conditioning. Reported: H_xx, H_yy, H_xy, the eigenvalues
  λ_min ≤ λ_max of H, its trace, and the mean curvature tr(H)/2 (the mean principal curvature of the graph at a
  critical point, g = 0); the fitted gradient g = (``grad_x``, ``grad_y``), ``fit_loss`` = c₀ and ``fit_rmse``.
  1-D: ``curvature`` = H_xx = L''(c). A rank-deficient fit gives NaN. On a quadratic surface the fit is exact.
- **Basin** at τ (``width_*``, ``basin_*``): along each axis, the line through c parallel to it (values between two
  grid lines are interpolated linearly) is walked outwards from c while L − L_c ≤ τ; the edge is located by linear
  interpolation between the last point inside and the first point outside, so for L = x² the width is 2√τ up to
  O(h²). ``width_x`` = hi − lo with ends ``width_x_lo``/``width_x_hi``; ``width_x_open`` = 1 when the walk ended at
  the grid edge or at an invalid point (the width is then a lower bound). In 2-D, the basin region is the
  4-connected set of valid grid points with L − L_c ≤ τ that contains the corner(s) of c's cell; ``basin_area`` =
  Σ w_i w_j · Δα · Δβ over its points, with trapezoid weights (w = ½ on the grid's edge rows/columns, 1 inside, so
  the whole grid has exactly its true area), ``basin_points`` their number, ``basin_area_fraction`` = area / grid
  area, ``basin_radius`` = √(area / π) (the radius of a disc of equal area), ``basin_open`` = 1 when the region
  touches the grid edge or a pending point.
- **Barrier** (1-D interpolation surfaces, ``config.directions.kind == "interp"``): with L(0), L(1) read or linearly
  interpolated at α = 0 and 1, barrier = max over α ∈ [0, 1] of L(α) − [(1 − α)L(0) + αL(1)] over valid grid points
  and both ends (so it is ≥ 0); ``barrier_alpha`` is where. A diverged point in [0, 1] makes it inf. This is the
  loss barrier of Entezari et al. 2022 ("The Role of Permutation Invariance in Linear Mode Connectivity of Neural
  Networks", ICLR), measured above the chord between the end points.
- **Error barrier** (the same surfaces, when the metric has an accuracy companion, ``train_loss`` → ``train_acc``):
  Frankle et al. 2020 ("Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML): with the error
  E = 100 − accuracy (percent), error_barrier = max over α ∈ [0, 1] of E(α) − ½[E(0) + E(1)], measured above the
  mean of the end points' errors (so it is ≥ ½|E(0) − E(1)|); ``error_barrier_alpha`` is where. Two networks are
  linearly mode-connected in their sense when it is within noise (they use 2 percentage points).
- **Topology** (``topology.*``): minima, persistence and the centre's basin, defined in :mod:`.topology`.
- **K ≥ 3 axes**: the centre (at (0, …, 0); ``center_z``, …), the radius numbers and the topology only; the fit,
  widths and basin area are 1-D/2-D numbers and are left out.
"""
from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

Report = Dict[str, float]
PREFIX = "sharpness."


# ----------------------------------------------------------------------------------------------- grid helpers
def classify(values: np.ndarray, done: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks (valid, diverged, pending) of a grid of losses, as defined in the module docstring."""
    values = np.asarray(values, dtype=np.float64)
    done = ~np.isnan(values) if done is None else np.broadcast_to(np.asarray(done, dtype=bool), values.shape)
    finite = np.isfinite(values)
    return done & finite, done & ~finite, ~done


def _tol(axis: np.ndarray) -> float:
    span = float(np.ptp(axis)) if axis.size > 1 else 0.0
    return 1e-9 * (span or 1.0)


def _bracket(axis: np.ndarray, t: float) -> Optional[List[Tuple[int, float]]]:
    # (index, weight) pairs that linearly interpolate a sorted axis at t; None when t lies outside it.
    hit = np.flatnonzero(np.abs(axis - t) <= _tol(axis))
    if hit.size:
        return [(int(hit[0]), 1.0)]
    if axis.size < 2 or t < axis[0] or t > axis[-1]:
        return None
    j = int(np.searchsorted(axis, t))
    w = (t - axis[j - 1]) / (axis[j] - axis[j - 1])
    return [(j - 1, 1.0 - w), (j, w)]


def _interpolate(axes: Sequence[np.ndarray], values: np.ndarray, valid: np.ndarray,
                 point: Sequence[float]) -> float:
    # Multilinear interpolation; NaN if the point is off the grid or a corner with weight > 0 is invalid.
    brackets = [_bracket(a, t) for a, t in zip(axes, point)]
    if any(b is None for b in brackets):
        return math.nan
    total = 0.0
    for combo in itertools.product(*brackets):
        idx = tuple(i for i, _ in combo)
        if not valid[idx]:
            return math.nan
        total += math.prod(w for _, w in combo) * float(values[idx])
    return total


def _axes(x: np.ndarray, y: Optional[np.ndarray]) -> List[np.ndarray]:
    return [np.asarray(x, dtype=np.float64)] + ([] if y is None else [np.asarray(y, dtype=np.float64)])


def _points(axes: Sequence[np.ndarray]) -> np.ndarray:
    # (N, d) coordinates in the C order of values.reshape(-1).
    return np.stack([m.reshape(-1) for m in np.meshgrid(*axes, indexing="ij")], axis=1)


# ----------------------------------------------------------------------------------------------- the numbers
def center_loss(x: np.ndarray, y: Optional[np.ndarray], values: np.ndarray,
                done: Optional[np.ndarray] = None, more: Sequence[np.ndarray] = ()
                ) -> Tuple[float, Tuple[float, ...], bool]:
    """(L_c, c, interpolated): the loss at the grid point (0, 0), interpolated there, or at the nearest valid point.
    ``more``: the axes after y of a K-D grid (the origin is then (0, …, 0))."""
    axes, values = _axes(x, y) + [np.asarray(a, dtype=np.float64) for a in more], np.asarray(values, dtype=np.float64)
    valid, _, _ = classify(values, done)
    origin = (0.0,) * len(axes)
    loss = _interpolate(axes, values, valid, origin)
    if not math.isnan(loss):
        brackets = [_bracket(a, 0.0) for a in axes]
        return loss, origin, any(len(b) == 2 for b in brackets)
    if not valid.any():
        return math.nan, (math.nan,) * len(axes), False
    dist2 = (_points(axes) ** 2).sum(axis=1)
    dist2[~valid.reshape(-1)] = np.inf
    idx = np.unravel_index(int(np.argmin(dist2)), values.shape)
    return float(values[idx]), tuple(float(a[i]) for a, i in zip(axes, idx)), False


def radius_increase(x: np.ndarray, y: Optional[np.ndarray], values: np.ndarray, done: Optional[np.ndarray],
                    center: Sequence[float], loss_c: float, radius: float, more: Sequence[np.ndarray] = ()) -> Report:
    """Max and mean of L − L_c over valid points within ``radius`` of ``center``; invalid ones are counted."""
    axes, values = _axes(x, y) + [np.asarray(a, dtype=np.float64) for a in more], np.asarray(values, dtype=np.float64)
    valid = classify(values, done)[0].reshape(-1)
    dist = np.linalg.norm(_points(axes) - np.asarray(center), axis=1)
    inside = dist <= radius * (1 + 1e-9) + 1e-300   # a point exactly on the circle counts despite rounding
    inc = values.reshape(-1)[inside & valid] - loss_c
    return {"max_increase": float(inc.max()) if inc.size else math.nan,
            "mean_increase": float(inc.mean()) if inc.size else math.nan,
            "radius_points": float(inc.size), "radius_excluded": float((inside & ~valid).sum())}


@dataclass
class QuadraticFit:
    """L(p) ≈ c0 + gᵀ(p − center) + ½(p − center)ᵀ H (p − center), fitted on ``n`` points with residual ``rmse``."""

    c0: float
    g: np.ndarray
    H: np.ndarray
    rmse: float
    n: int


def fit_quadratic(points: np.ndarray, values: np.ndarray, center: Sequence[float],
                  scale: float = 1.0) -> QuadraticFit:
    """Least-squares quadratic in d dimensions; NaN coefficients when the points cannot determine it."""
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    values = np.asarray(values, dtype=np.float64)
    n, d = points.shape
    u = (points - np.asarray(center)) / scale   # unit-scale coordinates keep the normal matrix well conditioned
    pairs = list(itertools.combinations(range(d), 2))
    cols = [np.ones(n)] + [u[:, i] for i in range(d)] + [0.5 * u[:, i] ** 2 for i in range(d)]
    cols += [u[:, i] * u[:, j] for i, j in pairs]
    A = np.stack(cols, axis=1)
    nan = QuadraticFit(math.nan, np.full(d, math.nan), np.full((d, d), math.nan), math.nan, n)
    if n < A.shape[1]:
        return nan
    coef, _, rank, _ = np.linalg.lstsq(A, values, rcond=None)
    if rank < A.shape[1]:
        return nan
    H = np.diag(coef[1 + d:1 + 2 * d])
    for k, (i, j) in enumerate(pairs):
        H[i, j] = H[j, i] = coef[1 + 2 * d + k]
    rmse = float(np.sqrt(np.mean((A @ coef - values) ** 2)))
    return QuadraticFit(float(coef[0]), coef[1:1 + d] / scale, H / scale ** 2, rmse, n)


def curvature(x: np.ndarray, y: Optional[np.ndarray], values: np.ndarray, done: Optional[np.ndarray],
              center: Sequence[float], fit_radius: float) -> Report:
    """The quadratic fit around ``center`` (see the module docstring), as report entries."""
    axes, values = _axes(x, y), np.asarray(values, dtype=np.float64)
    d = len(axes)
    valid = classify(values, done)[0].reshape(-1)
    pts, vals = _points(axes)[valid], values.reshape(-1)[valid]
    dist = np.linalg.norm(pts - np.asarray(center), axis=1)
    ranked = np.sort(dist)
    k = 3 if d == 1 else 9
    while True:
        # Widen the disc (doubling the point count) until the points determine a quadratic, e.g. when only two
        # grid lines pass within r_fit of an off-grid centre.
        r = max(fit_radius, float(ranked[min(k, ranked.size) - 1])) if ranked.size else fit_radius
        sel = dist <= r * (1 + 1e-9) + 1e-300
        fit = fit_quadratic(pts[sel], vals[sel], center, r if r > 0 else 1.0)
        if not math.isnan(fit.c0) or k >= ranked.size:
            break
        k *= 2
    out: Report = {"fit_radius": r, "fit_points": float(fit.n), "fit_rmse": fit.rmse, "fit_loss": fit.c0,
                   "grad_x": float(fit.g[0]), "hess_xx": float(fit.H[0, 0])}
    if d == 1:
        out["curvature"] = float(fit.H[0, 0])
        return out
    eig = np.linalg.eigvalsh(fit.H) if np.isfinite(fit.H).all() else np.full(2, math.nan)
    out.update(grad_y=float(fit.g[1]), hess_yy=float(fit.H[1, 1]), hess_xy=float(fit.H[0, 1]),
               hess_eig_min=float(eig[0]), hess_eig_max=float(eig[1]), hess_trace=float(np.trace(fit.H)),
               mean_curvature=float(np.trace(fit.H)) / 2)
    return out


def axis_width(coords: np.ndarray, profile: np.ndarray, valid: np.ndarray, center: float, loss_c: float,
               threshold: float) -> Tuple[float, float, bool]:
    """(lo, hi, open) of the interval around ``center`` on a 1-D profile where L − L_c ≤ threshold."""
    coords, profile = np.asarray(coords, dtype=np.float64), np.asarray(profile, dtype=np.float64)
    tol = _tol(coords)
    right = [i for i in np.argsort(coords) if coords[i] > center + tol]
    left = [i for i in np.argsort(coords)[::-1] if coords[i] < center - tol]
    ends = [_walk(order, coords, profile, valid, center, loss_c, loss_c + threshold) for order in (left, right)]
    return ends[0][0], ends[1][0], ends[0][1] or ends[1][1]


def _walk(order: Sequence[int], coords: np.ndarray, profile: np.ndarray, valid: np.ndarray, center: float,
          loss_c: float, level: float) -> Tuple[float, bool]:
    prev_x, prev_l = center, loss_c
    for i in order:
        if not valid[i]:
            return prev_x, True
        if profile[i] <= level:
            prev_x, prev_l = float(coords[i]), float(profile[i])
            continue
        # The loss crosses `level` between prev and i: place the edge by linear interpolation.
        return prev_x + (level - prev_l) / (profile[i] - prev_l) * (coords[i] - prev_x), False
    return prev_x, True


def basin_region(x: np.ndarray, y: np.ndarray, values: np.ndarray, done: Optional[np.ndarray],
                 center: Sequence[float], loss_c: float, threshold: float) -> Report:
    """Size of the 4-connected region with L − L_c ≤ threshold that contains the centre's cell corners."""
    x, y, values = np.asarray(x, float), np.asarray(y, float), np.asarray(values, dtype=np.float64)
    valid, _, pending = classify(values, done)
    with np.errstate(invalid="ignore"):
        inside = valid & (values - loss_c <= threshold)
    bx, by = _bracket(x, center[0]), _bracket(y, center[1])
    seeds = [(i, j) for i, _ in (bx or []) for j, _ in (by or []) if inside[i, j]]
    seen = np.zeros(values.shape, dtype=bool)
    queue = deque(seeds)
    for s in seeds:
        seen[s] = True
    nx, ny = values.shape
    count, weight, open_ = 0, 0.0, False
    while queue:   # breadth-first flood fill; grids are at most ~10⁶ points
        i, j = queue.popleft()
        count += 1
        weight += (0.5 if i in (0, nx - 1) else 1.0) * (0.5 if j in (0, ny - 1) else 1.0)
        if i in (0, nx - 1) or j in (0, ny - 1):
            open_ = True
        for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
            if 0 <= a < nx and 0 <= b < ny:
                if inside[a, b] and not seen[a, b]:
                    seen[a, b] = True
                    queue.append((a, b))
                elif pending[a, b]:
                    open_ = True
    if nx < 2 or ny < 2:
        return {"basin_points": float(count), "basin_area": math.nan, "basin_area_fraction": math.nan,
                "basin_radius": math.nan, "basin_open": float(open_)}
    area = weight * (np.ptp(x) / (nx - 1)) * (np.ptp(y) / (ny - 1))
    return {"basin_points": float(count), "basin_area": area, "basin_area_fraction": area / (np.ptp(x) * np.ptp(y)),
            "basin_radius": math.sqrt(area / math.pi), "basin_open": float(open_)}


def lmc_barrier(alpha: np.ndarray, values: np.ndarray, done: Optional[np.ndarray] = None) -> Report:
    """Linear-mode-connectivity barrier max_{α∈[0,1]} L(α) − [(1−α)L(0) + αL(1)] of a 1-D interpolation curve."""
    alpha, values = np.asarray(alpha, dtype=np.float64), np.asarray(values, dtype=np.float64)
    valid, diverged, pending = classify(values, done)
    l0 = _interpolate([alpha], values, valid, (0.0,))
    l1 = _interpolate([alpha], values, valid, (1.0,))
    tol = _tol(alpha)
    on_path = (alpha >= -tol) & (alpha <= 1 + tol)
    out: Report = {"barrier": math.nan, "barrier_alpha": math.nan, "barrier_loss_0": l0, "barrier_loss_1": l1,
                   "barrier_excluded": float((on_path & pending).sum())}
    if math.isnan(l0) or math.isnan(l1):
        return out
    if (on_path & diverged).any():
        out.update(barrier=math.inf, barrier_alpha=float(alpha[on_path & diverged][0]))
        return out
    a, v = alpha[on_path & valid], values[on_path & valid]
    excess = v - ((1 - a) * l0 + a * l1)
    if excess.size and excess.max() > 0:
        k = int(np.argmax(excess))
        out.update(barrier=float(excess[k]), barrier_alpha=float(a[k]))
    else:   # the chord's ends are on the curve, so the barrier is never below 0
        out.update(barrier=0.0, barrier_alpha=0.0)
    return out


def lmc_error_barrier(alpha: np.ndarray, accuracy: np.ndarray, done: Optional[np.ndarray] = None) -> Report:
    """Frankle et al. (2020)'s error barrier max_{α∈[0,1]} E(α) − ½[E(0) + E(1)] with E = 100 − accuracy (%)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    error = 100.0 - np.asarray(accuracy, dtype=np.float64)
    valid, _, pending = classify(error, done)
    e0 = _interpolate([alpha], error, valid, (0.0,))
    e1 = _interpolate([alpha], error, valid, (1.0,))
    tol = _tol(alpha)
    on_path = (alpha >= -tol) & (alpha <= 1 + tol) & valid
    out: Report = {"error_barrier": math.nan, "error_barrier_alpha": math.nan, "error_barrier_0": e0,
                   "error_barrier_1": e1, "error_barrier_excluded": float((pending & (alpha >= -tol)
                                                                           & (alpha <= 1 + tol)).sum())}
    if math.isnan(e0) or math.isnan(e1):
        return out
    # Both ends take part (read or interpolated there), so the barrier is never below ½|E(0) − E(1)|.
    a = np.concatenate([[0.0, 1.0], alpha[on_path]])
    e = np.concatenate([[e0, e1], error[on_path]])
    k = int(np.argmax(e))
    out.update(error_barrier=float(e[k] - 0.5 * (e0 + e1)), error_barrier_alpha=float(a[k]))
    return out


# ----------------------------------------------------------------------------------------------- the report
def sharpness_report(data: Any, metric: str = "train_loss", radius: float = 0.25, threshold: float = 0.1,
                     fit_radius: Optional[float] = None) -> Report:
    """All numbers of the module docstring for one metric of a :class:`distland.surfacefile.SurfaceData`."""
    if metric not in data.metrics:
        raise KeyError(f"surface {getattr(data, 'path', '')!r} has no metric {metric!r}; "
                       f"it has {', '.join(sorted(data.metrics)) or 'none'}")
    if radius < 0 or threshold < 0:
        raise ValueError(f"radius ({radius}) and threshold ({threshold}) must be >= 0")
    x = np.asarray(data.x, dtype=np.float64)
    y = None if data.y is None else np.asarray(data.y, dtype=np.float64)
    more = [np.asarray(a, dtype=np.float64) for a in getattr(data, "more", ())]   # K-D: the axes after y
    values = np.asarray(data.metrics[metric], dtype=np.float64)
    shape = (x.size,) if y is None else (x.size, y.size) + tuple(a.size for a in more)
    if values.shape != shape:
        raise ValueError(f"metric {metric!r} has shape {values.shape}, the grid is {shape}")
    done = getattr(data, "done", None)
    done = None if done is None else np.asarray(done, dtype=bool).reshape(shape)
    valid, diverged, pending = classify(values, done)
    report: Report = {"n_points": float(values.size), "n_valid": float(valid.sum()),
                      "n_diverged": float(diverged.sum()), "n_pending": float(pending.sum()),
                      "radius": float(radius), "threshold": float(threshold)}
    loss_c, c, interpolated = center_loss(x, y, values, done, more)
    report.update(center_loss=loss_c, center_x=c[0], center_interpolated=float(interpolated))
    if y is not None:
        report["center_y"] = c[1]
    from . import topology   # minima, basins and persistence (docs/topology.md), under the "topology." prefix

    if more:
        # K ≥ 3 axes: the centre, the radius numbers and the topology (all N-D); the quadratic fit, the axis
        # widths and the basin area are defined on 1-D and 2-D surfaces only, so they are left out, not faked.
        from ..grid import axis_name

        report.update({f"center_{axis_name(k + 2)}": c[k + 2] for k in range(len(more))})
        if not math.isnan(loss_c):
            report.update(radius_increase(x, y, values, done, c, loss_c, radius, more))
        report.update({topology.PREFIX + k: v
                       for k, v in topology.topology_numbers(values, _axes(x, y) + more, done).items()})
        return report
    if not math.isnan(loss_c):
        report.update(radius_increase(x, y, values, done, c, loss_c, radius))
        report.update(curvature(x, y, values, done, c, radius if fit_radius is None else fit_radius))
        report.update(_widths(x, y, values, valid, c, loss_c, threshold))
        if y is not None:
            report.update(basin_region(x, y, values, done, c, loss_c, threshold))
    if y is None and _kind(data) == "interp":
        report.update(lmc_barrier(x, values, done))
        acc = f"{metric[:-len('_loss')]}_acc" if metric.endswith("_loss") else ""
        if acc in data.metrics:
            report.update(lmc_error_barrier(x, np.asarray(data.metrics[acc], dtype=np.float64).reshape(shape),
                                            done))
    report.update({topology.PREFIX + k: v for k, v in topology.topology_numbers(values, _axes(x, y), done).items()})
    from . import convexity   # a Hessian map's λmax at θ* and convex fraction, under the "hessian." prefix

    report.update({convexity.PREFIX + k: v for k, v in convexity.convexity_numbers(data).items()})
    return report


def _widths(x: np.ndarray, y: Optional[np.ndarray], values: np.ndarray, valid: np.ndarray, c: Sequence[float],
            loss_c: float, threshold: float) -> Report:
    # A 2-D profile through c is read off the grid line at c (or interpolated between the two lines around it).
    out: Report = {}
    if y is None:
        profiles = {"x": (x, values, valid, c[0])}
    else:
        profiles = {"x": (x, *_line(values, valid, _bracket(y, c[1]), axis=1), c[0]),
                    "y": (y, *_line(values, valid, _bracket(x, c[0]), axis=0), c[1])}
    for name, (coords, prof, ok, centre) in profiles.items():
        lo, hi, open_ = axis_width(coords, prof, ok, centre, loss_c, threshold)
        out.update({f"width_{name}": hi - lo, f"width_{name}_lo": lo, f"width_{name}_hi": hi,
                    f"width_{name}_open": float(open_)})
    return out


def _line(values: np.ndarray, valid: np.ndarray, bracket: Optional[List[Tuple[int, float]]],
          axis: int) -> Tuple[np.ndarray, np.ndarray]:
    if bracket is None:   # cannot happen for a centre from center_loss; kept so misuse gives NaN, not a crash
        n = values.shape[1 - axis]
        return np.full(n, math.nan), np.zeros(n, dtype=bool)
    prof = sum(w * np.take(values, i, axis=axis) for i, w in bracket)
    ok = np.logical_and.reduce([np.take(valid, i, axis=axis) for i, _ in bracket])
    return np.where(ok, prof, math.nan), ok


def _kind(data: Any) -> str:
    config = getattr(data, "config", None) or {}
    directions = config.get("directions") if isinstance(config, dict) else getattr(config, "directions", None)
    if isinstance(directions, dict):
        return str(directions.get("kind", ""))
    return str(getattr(directions, "kind", ""))


def store_report(path: str, report: Report, metric: Optional[str] = None) -> None:
    """Write ``sharpness.<name>`` attributes on the file's root, replacing any from an earlier report (stale
    numbers from other settings must go)."""
    from ..surfacefile import set_attrs

    set_attrs(path, report_attrs(report, metric), replace_prefix=PREFIX)


def report_attrs(report: Report, metric: Optional[str] = None) -> Dict[str, Any]:
    """The ``sharpness.<name>`` attributes of ``report`` (what :func:`store_report` writes)."""
    attrs: Dict[str, Any] = {PREFIX + name: float(value) for name, value in report.items()}
    if metric is not None:
        attrs[PREFIX + "metric"] = metric
    return attrs


def read_report(attrs: Dict[str, Any]) -> Report:
    """The ``sharpness.*`` entries of an attribute mapping, prefix removed (the metric name is dropped)."""
    return {k[len(PREFIX):]: float(v) for k, v in attrs.items()
            if k.startswith(PREFIX) and k != PREFIX + "metric"}


def format_report(report: Report, metric: str = "") -> str:
    """A few human-readable lines; entries missing from ``report`` are skipped."""
    r = report.get

    def g(key: str) -> str:
        return f"{r(key, math.nan):.6g}"

    def flag(key: str, text: str) -> str:
        return f" ({text})" if r(key, 0.0) else ""

    two_d = "center_y" in report
    lines = [f"sharpness{' of ' + metric if metric else ''}: {int(r('n_points', 0))} points, "
             f"{int(r('n_valid', 0))} valid, {int(r('n_diverged', 0))} diverged, {int(r('n_pending', 0))} pending"]
    from ..grid import axis_names

    names = [n for n in axis_names(64) if f"center_{n}" in report] if two_d else ["x"]
    where = f"({', '.join(g(f'center_{n}') for n in names)})" if two_d else f"{g('center_x')}"
    lines.append(f"  centre      L = {g('center_loss')} at {where}{flag('center_interpolated', 'interpolated')}")
    if "max_increase" in report:
        lines.append(f"  radius {g('radius')}  max ΔL = {g('max_increase')}, mean ΔL = {g('mean_increase')} "
                     f"over {int(r('radius_points'))} points")
    if "hess_xx" in report:
        head = f"  quadratic   fit radius {g('fit_radius')}, {int(r('fit_points'))} points, rmse {g('fit_rmse')}: "
        if two_d:
            lines.append(head + f"H_xx = {g('hess_xx')}, H_yy = {g('hess_yy')}, H_xy = {g('hess_xy')}")
            lines.append(f"              eigenvalues [{g('hess_eig_min')}, {g('hess_eig_max')}], "
                         f"trace {g('hess_trace')}, mean curvature {g('mean_curvature')}")
        else:
            lines.append(head + f"L'' = {g('curvature')}")
    for axis in ("x", "y"):
        if f"width_{axis}" in report:
            lines.append(f"  basin τ={g('threshold')}  width along {axis} = {g(f'width_{axis}')} "
                         f"[{g(f'width_{axis}_lo')}, {g(f'width_{axis}_hi')}]"
                         f"{flag(f'width_{axis}_open', 'lower bound: reached the grid edge or an invalid point')}")
    if "basin_area" in report:
        lines.append(f"  basin area  {g('basin_area')} ({100 * r('basin_area_fraction'):.3g}% of the grid), "
                     f"equivalent radius {g('basin_radius')}{flag('basin_open', 'lower bound: touches the edge')}")
    if "barrier" in report:
        lines.append(f"  barrier     {g('barrier')} at α = {g('barrier_alpha')} "
                     f"(L(0) = {g('barrier_loss_0')}, L(1) = {g('barrier_loss_1')}; "
                     "loss above the chord, Entezari et al. 2022)")
    if "error_barrier" in report:
        lines.append(f"  error barrier {g('error_barrier')} points at α = {g('error_barrier_alpha')} "
                     f"(E(0) = {g('error_barrier_0')}%, E(1) = {g('error_barrier_1')}%; error above the ends' mean, "
                     "Frankle et al. 2020)")
    from .topology import PREFIX as TOPOLOGY, format_topology

    lines.extend(format_topology(report, TOPOLOGY))
    from .convexity import format_convexity

    lines.extend(format_convexity(report))
    return "\n".join(lines)
