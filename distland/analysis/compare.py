"""Side-by-side numbers of several surface files, roughness of a 2-D surface, and claim verdicts.

``distland info A.h5 B.h5 ...`` prints :func:`table`; ``distland reproduce`` prints it per claim with
:func:`verdict`. Numbers come from the file alone (stored sharpness and convergence attributes, or computed now).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import convergence
from .sharpness import center_loss, fit_quadratic, read_report, sharpness_report


def roughness(x: np.ndarray, y: np.ndarray, values: np.ndarray, done: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Roughness / non-convexity of a 2-D surface (the numbers of bench/PAPER_CLAIMS.md, claim 2).

    At every interior grid point the 2×2 Hessian is estimated by central finite differences (L_xx, L_yy from
    3-point stencils, L_xy from the 4 diagonal neighbours), eigenvalues λ_min ≤ λ_max:
    - ``rho_mean``: mean of ρ = max(0, −λ_min) / max(|λ_min|, |λ_max|) ∈ [0, 1], the share of the strongest local
      curvature that points down (0 where locally convex); a 2-D stand-in for the paper's |λ_min/λ_max| map (§6);
    - ``nonconvex_frac``: the share of interior points with λ_min < −tol (tol = 1e-3 · median max|λ|);
    - ``quad_resid``: RMS residual of one quadratic fitted to the whole grid over the grid's loss range;
    - ``extra_minima``: interior strict local minima (below all 8 neighbours), the global one excluded.
    NaN when the grid has no interior point whose 3×3 stencil is valid.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    L = np.asarray(values, float)
    ok = np.isfinite(L) & (np.ones_like(L, bool) if done is None else np.asarray(done, bool))
    out: Dict[str, float] = {"rho_mean": math.nan, "nonconvex_frac": math.nan, "extra_minima": math.nan,
                             "quad_resid": math.nan}
    if x.size < 3 or y.size < 3:
        return out
    hx, hy = x[1] - x[0], y[1] - y[0]
    c = L[1:-1, 1:-1]
    lxx = (L[2:, 1:-1] - 2 * c + L[:-2, 1:-1]) / hx ** 2
    lyy = (L[1:-1, 2:] - 2 * c + L[1:-1, :-2]) / hy ** 2
    lxy = (L[2:, 2:] - L[2:, :-2] - L[:-2, 2:] + L[:-2, :-2]) / (4 * hx * hy)
    stencil = np.ones_like(c, dtype=bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            stencil &= ok[1 + di:ok.shape[0] - 1 + di, 1 + dj:ok.shape[1] - 1 + dj]
    with np.errstate(invalid="ignore"):
        half, disc = (lxx + lyy) / 2, np.sqrt(((lxx - lyy) / 2) ** 2 + lxy ** 2)
        lmin, lmax = half - disc, half + disc
        big = np.maximum(np.abs(lmin), np.abs(lmax))
    if stencil.any():
        tol = 1e-3 * float(np.median(big[stencil]))
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = np.where(big > tol, np.clip(-lmin, 0, None) / np.where(big > 0, big, 1.0), 0.0)
        out["rho_mean"] = float(rho[stencil].mean())
        out["nonconvex_frac"] = float((lmin[stencil] < -tol).mean())
        is_min = stencil.copy()
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if di or dj:
                    is_min &= c < L[1 + di:L.shape[0] - 1 + di, 1 + dj:L.shape[1] - 1 + dj]
        gmin = np.unravel_index(int(np.argmin(np.where(ok, L, np.inf))), L.shape)
        inside = 0 < gmin[0] < L.shape[0] - 1 and 0 < gmin[1] < L.shape[1] - 1 and bool(is_min[gmin[0] - 1,
                                                                                               gmin[1] - 1])
        out["extra_minima"] = float(is_min.sum() - (1 if inside else 0))
    pts = np.stack([m.reshape(-1) for m in np.meshgrid(x, y, indexing="ij")], axis=1)[ok.reshape(-1)]
    vals = L.reshape(-1)[ok.reshape(-1)]
    span = float(vals.max() - vals.min()) if vals.size else math.nan
    if vals.size:
        fit = fit_quadratic(pts, vals, (0.0, 0.0), 1.0)
        out["quad_resid"] = fit.rmse / span if span > 0 else math.nan
    return out


def numbers(data: Any, metric: str = "train_loss") -> Dict[str, float]:
    """Every number the table shows for one :class:`~distland.surfacefile.SurfaceData`: sharpness (stored when it was
    stored for ``metric``, else computed), convergence at θ*, test accuracy at the centre, roughness (2-D)."""
    stored = read_report(data.attrs) if str(data.attrs.get("sharpness.metric", "")) == metric else {}
    out: Dict[str, float] = dict(stored or (sharpness_report(data, metric) if metric in data.metrics else {}))
    for k, v in convergence.read(data.attrs).items():
        out["conv_" + k] = v
    for split in ("train", "test"):
        if f"{split}_acc" in data.metrics:
            out[f"{split}_acc_centre"] = center_loss(data.x, data.y, data.metrics[f"{split}_acc"], data.done,
                                                     getattr(data, "more", ()))[0]
    if data.y is not None and not getattr(data, "more", ()) and metric in data.metrics:   # roughness is 2-D
        out.update(roughness(data.x, data.y, data.metrics[metric], data.done))
    return out


# (label, key, which way means "sharper/rougher/worse": +1 larger, -1 smaller, 0 neither)
ROWS: List[Tuple[str, str, int]] = [
    ("train accuracy at θ* (%)", "conv_train_acc", 0),
    ("test accuracy at θ* (%)", "test_acc_centre", 0),
    ("train loss at θ*", "conv_train_loss", 0),
    ("θ* a minimizer?", "conv_minimizer", 0),
    ("‖θ_w‖ (filter-normalized tensors)", "conv_weight_norm", 0),
    ("centre loss L_c", "center_loss", 0),
    ("mean ΔL within r", "mean_increase", +1),
    ("max ΔL within r", "max_increase", +1),
    ("1-D L'' (quadratic fit)", "curvature", +1),
    ("2-D mean curvature tr(H)/2", "mean_curvature", +1),
    ("2-D λ_min(H)", "hess_eig_min", +1),
    ("2-D λ_max(H)", "hess_eig_max", +1),
    ("basin width x (τ)", "width_x", -1),
    ("basin width y (τ)", "width_y", -1),
    ("basin area (τ)", "basin_area", -1),
    ("barrier (interpolation)", "barrier", 0),
    ("mean ρ = max(0,−λmin)/max|λ|", "rho_mean", +1),
    ("fraction of points with λmin < 0", "nonconvex_frac", +1),
    ("extra strict local minima", "extra_minima", +1),
]


def fmt(v: Optional[float], key: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if key == "conv_minimizer":
        return "yes" if v else "NO"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4g}" if v == 0 or 1e-3 <= abs(v) < 1e5 else f"{v:.3e}"


def table(columns: Sequence[Tuple[str, Mapping[str, float]]]) -> str:
    """A text table, one column per (name, numbers), one row per :data:`ROWS` entry that any column has."""
    rows = [(label, key) for label, key, _ in ROWS if any(key in nums for _, nums in columns)]
    head = ["number"] + [name for name, _ in columns]
    body = [[label] + [fmt(nums.get(key), key) for _, nums in columns] for label, key in rows]
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in body])


def grid_note(columns: Sequence[Tuple[str, Any]]) -> List[str]:
    """Caveats on the numbers: basin areas that are a handful of grid cells, non-filter-normalized axes."""
    notes = []
    for name, data in columns:
        cfg = data.config if isinstance(data.config, dict) else {}
        d = cfg.get("directions") or {}
        if d.get("kind") == "file" or (d.get("kind") == "random" and d.get("norm") not in (None, "filter")):
            notes.append(f"{name}: axes are not filter-normalized ({d.get('kind')}, norm {d.get('norm')}): its "
                         "sharpness numbers are in other units and do not compare with filter-normalized files")
        if data.y is not None and len(data.x) > 1:
            cell = (data.x[1] - data.x[0]) * (data.y[1] - data.y[0])
            area = float(data.attrs.get("sharpness.basin_area", math.nan))
            if math.isfinite(area) and area <= 9 * cell:
                notes.append(f"{name}: the basin covers ≤ 9 grid cells (area {area:.3g}, cell {cell:.3g}): the "
                             "basin area and widths are grid-limited; refine the grid to compare them")
    return notes


def verdict(claim: str, less: Tuple[str, Mapping[str, float]], more: Tuple[str, Mapping[str, float]],
            key: str) -> Tuple[str, bool]:
    """One verdict line: does ``less``'s number ``key`` lie below ``more``'s? Flags centres that are not
    minimizers (the comparison then describes slopes, not minima)."""
    a, b = less[1].get(key, math.nan), more[1].get(key, math.nan)
    holds = bool(a < b)
    word = "agrees" if holds else ("n/a" if math.isnan(a) or math.isnan(b) else "disagrees")
    line = f"[{word:>9}] {claim}: {key} {less[0]} {fmt(a)} vs {more[0]} {fmt(b)}"
    bad = [name for name, nums in (less, more) if nums.get("conv_minimizer", 1.0) == 0.0]
    if bad:
        line += f" — caution: θ* of {', '.join(bad)} is not a minimizer"
    return line, holds

