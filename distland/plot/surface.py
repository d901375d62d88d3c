"""Matplotlib figures of surface files: 1-D curves, contours, filled contours, heat maps, 3-D surfaces, comparisons.

Figures are built with :class:`matplotlib.figure.Figure` directly, never pyplot: no global state, no GUI backend, and
any number of figures can be made in one process without leaking.
"""
from __future__ import annotations

import math
import textwrap
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib import colors, ticker
from matplotlib.figure import Figure

from .common import (KINDS_2D, METRICS, PlotError, PlotOptions, choose_levels, describe, interp_ends, level_note,
                     metric_label,
                     minimizer_warning, model_name, pick_metric, plane, stem, title, transform_scalar, value_range,
                     values)
from .trajectory import ProjectedPath, overlay_trajectory
from ..slicing import axis_labels

CMAP = "viridis"


def _formatter(log: bool) -> ticker.Formatter:
    """Ticks and contour labels in data units, also when the values drawn are log10 of them."""
    if log:
        return ticker.FuncFormatter(lambda v, _pos=None: f"{10.0 ** v:.3g}")
    return ticker.FuncFormatter(lambda v, _pos=None: f"{v:.3g}")


def _check_2d(data: Any, kind: str) -> None:
    if kind not in KINDS_2D:
        raise PlotError(f"unknown 2-D plot kind {kind!r}; choose from {', '.join(KINDS_2D)}")
    if data.y is None:
        raise PlotError(f"{data.path} is a 1-D surface: plot it with --kinds 1d, not {kind}")
    if len(data.x) < 2 or len(data.y) < 2:
        raise PlotError(f"{data.path}: a {kind} plot needs at least 2 points along x and y, "
                        f"got {len(data.x)}×{len(data.y)}")


def _extend(z: np.ma.MaskedArray, lo: float, hi: float) -> str:
    """Which ends of a filled contour must extend, so values beyond [lo, hi] are coloured, not left as gaps."""
    below, above = bool((z < lo).any()), bool((z > hi).any())
    return {(False, False): "neither", (True, False): "min", (False, True): "max"}.get((below, above), "both")


def colour_norm(levels: np.ndarray) -> colors.Normalize:
    """Linear over the levels' range when they are evenly spaced; else piecewise linear through them, so each
    band between two levels gets an equal share of the colour map."""
    steps = np.diff(levels)
    if np.allclose(steps, steps[0], rtol=1e-6, atol=0):
        return colors.Normalize(vmin=levels[0], vmax=levels[-1])
    share = np.linspace(0.0, 1.0, len(levels))
    return colors.FuncNorm((lambda v: np.interp(v, levels, share), lambda u: np.interp(u, share, levels)),
                           vmin=levels[0], vmax=levels[-1])


def _contour(ax: Any, x: np.ndarray, y: np.ndarray, z: Any, levels: np.ndarray, norm: Any, opts: PlotOptions) -> Any:
    m = ax.contour(x, y, z, levels=levels, cmap=CMAP, norm=norm, linewidths=1.0)
    if len(m.levels):
        ax.clabel(m, m.levels[::2], inline=True, fontsize=7, fmt=_formatter(opts.log))
    return m


def _contourf(ax: Any, x: np.ndarray, y: np.ndarray, z: Any, levels: np.ndarray, norm: Any, opts: PlotOptions
              ) -> Any:
    return ax.contourf(x, y, z, levels=levels, cmap=CMAP, norm=norm,
                       extend=_extend(z, float(levels[0]), float(levels[-1])))


def _heatmap(ax: Any, x: np.ndarray, y: np.ndarray, z: Any, levels: np.ndarray, norm: Any, opts: PlotOptions) -> Any:
    # 'nearest' centres each cell on its grid point, so cell (i, j) shows exactly the value at (x_i, y_j).
    return ax.pcolormesh(x, y, z, shading="nearest", cmap=CMAP, norm=norm)


def _surface3d(ax: Any, x: np.ndarray, y: np.ndarray, z: Any, levels: np.ndarray, norm: Any, opts: PlotOptions
               ) -> Any:
    lo, hi = float(levels[0]), float(levels[-1])
    top = transform_scalar(opts.zmax, opts.log, "zmax")
    top = hi if top is None else top
    # Heights are clipped so one diverged corner cannot squash the basin flat; gaps stay NaN (holes).
    heights = np.minimum(z.filled(np.nan), top)
    xx, yy = np.meshgrid(x, y)
    m = ax.plot_surface(xx, yy, heights, cmap=CMAP, norm=norm, rstride=1, cstride=1, linewidth=0,
                        antialiased=False)
    bottom = min(lo, float(np.nanmin(heights)))
    ax.set_zlim(bottom, max(top, bottom + 1e-9))     # a --zmax below the data must not invert the axis
    ax.zaxis.set_major_formatter(_formatter(opts.log))
    return m


# The 2-D kinds (common.KINDS_2D), each a function (ax, x, y, z, levels, norm, opts) -> colour mappable.
DRAW_2D: Dict[str, Callable[..., Any]] = {"contour": _contour, "contourf": _contourf, "heatmap": _heatmap,
                                          "surface3d": _surface3d}


def draw_2d(ax: Any, data: Any, kind: str, metric: str, opts: PlotOptions, levels: np.ndarray) -> Any:
    """Draw one 2-D panel on ``ax`` (a 3-D axes for ``surface3d``) and return its colour mappable.

    ``levels`` (from :func:`~distland.plot.common.choose_levels`, in plotting space) fix the contours and the
    colour scale; passing the same to several panels is what gives a comparison one shared scale.
    """
    _check_2d(data, kind)
    x, y = np.asarray(data.x, dtype=np.float64), np.asarray(data.y, dtype=np.float64)
    z = plane(data, metric, opts.log)               # (ny, nx), masked gaps
    if z.count() == 0:
        raise PlotError(f"{data.path}: no finite {metric} values to draw")
    m = DRAW_2D[kind](ax, x, y, z, levels, colour_norm(levels), opts)
    if kind != "surface3d":
        ax.set_xlim(x.min(), x.max())
        ax.set_ylim(y.min(), y.max())
    for axis in (ax.xaxis, ax.yaxis):       # few ticks: side-by-side panels are narrow
        axis.set_major_locator(ticker.MaxNLocator(5))
    names = axis_labels(data)   # a plane of a K-D surface names its own axes (x, z at fixed y)
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    return m


def _axes(fig: Figure, kind: str, *pos: Any) -> Any:
    return fig.add_subplot(*pos, projection="3d" if kind == "surface3d" else None)


def _colorbar(fig: Figure, mappable: Any, ax: Any, metric: str, opts: PlotOptions, levels: np.ndarray) -> None:
    cb = fig.colorbar(mappable, ax=ax, shrink=0.8, label=metric_label(metric, opts.log))
    if type(mappable.norm) is not colors.Normalize:
        # Uneven levels: ticks at (some of) the levels themselves, where a value locator would crowd one end.
        cb.set_ticks(levels[::max(1, len(levels) // 8)])
    cb.formatter = _formatter(opts.log)
    cb.update_ticks()


def plot_2d(data: Any, kind: str, opts: PlotOptions, trajectory: Optional[ProjectedPath] = None) -> Figure:
    """One 2-D plot of one surface file, optionally with a trajectory over it (planar kinds only)."""
    _check_2d(data, kind)
    metric = pick_metric(data, opts.metric)
    levels = choose_levels([values(data, metric, opts.log)], opts, f"{data.path} {metric}")
    fig = Figure(figsize=(7.0, 5.6), layout="constrained")
    ax = _axes(fig, kind, 1, 1, 1)
    m = draw_2d(ax, data, kind, metric, opts, levels)
    if trajectory is not None:
        if kind == "surface3d":
            raise PlotError("a trajectory can be drawn on contour, contourf or heatmap plots, not surface3d")
        overlay_trajectory(ax, trajectory)
    _colorbar(fig, m, ax, metric, opts, levels)
    fig.suptitle(title(data, metric, opts.log), fontsize=10)
    fig.supxlabel(_note([values(data, metric, opts.log)], levels, opts, kind), fontsize=7)
    return fig


def _note(arrays: Sequence[np.ndarray], levels: np.ndarray, opts: PlotOptions, kind: str) -> str:
    if kind == "surface3d" and opts.zmax is not None:
        top = transform_scalar(opts.zmax, opts.log, "zmax")
        levels = np.append(levels[levels < top], top)
    return "\n".join(textwrap.wrap(level_note(arrays, levels, opts, kind), 110))


def _draw_1d(ax: Any, data: Any, opts: PlotOptions, group: Sequence[Any] = ()) -> Optional[Any]:
    """Loss on ``ax`` and accuracy on a twin axis, train solid and test dashed; gaps where not done or diverged."""
    x = np.asarray(data.x, dtype=np.float64)
    wanted = [opts.metric] if opts.metric else [m for m in METRICS if m in data.metrics]
    if opts.metric:
        pick_metric(data, opts.metric)      # a clear error when the file lacks it
    losses = [m for m in wanted if not m.endswith(("_acc", "_err"))]
    accs = [m for m in wanted if m.endswith(("_acc", "_err"))]
    handles: List[Any] = []
    acc_ax = ax.twinx() if accs and losses else ax
    for target, names, color in ((ax, losses, "C0"), (acc_ax, accs, "C1")):
        for name in names:
            v = values(data, name, False)   # log is an axis scale here, not a transform
            style = "--" if name.startswith("test") else "-"
            handles += target.plot(x, v, style, color=color, marker="." if len(x) <= 60 else None, label=name)
    if losses:
        label = "loss" if all(n.endswith("_loss") for n in losses) else ", ".join(losses)   # e.g. max_eig
        ax.set_ylabel(label + (" (log scale)" if opts.log else ""))
        if opts.log:
            ax.set_yscale("log")
        _limit_1d(ax, group or [data], losses, opts)
    if accs:
        acc_ax.set_ylabel("error (%)" if all(m.endswith("_err") for m in accs) else "accuracy (%)")
        if not losses:
            _limit_1d(acc_ax, group or [data], accs, opts)
    ax.set_xlabel(axis_labels(data)[0])
    ends = interp_ends(data)
    if ends is not None:
        # Which model sits where: the curve alone does not say which end is which.
        for at, name in zip((0.0, 1.0), ends):
            ax.axvline(at, color="grey", linestyle=":", linewidth=0.8)
            ax.annotate(f"{'θ' if at == 0 else 'θ′'}: {name}", (at, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(2, -10), textcoords="offset points", fontsize=7, color="dimgrey")
        ax.set_xlabel("α  (θ(α) = (1−α)·θ + α·θ′)")
    if opts.xlim is not None:
        ax.set_xlim(*opts.xlim)
    ax.legend(handles=handles, loc="best", fontsize=8)
    return acc_ax if acc_ax is not ax else None


def _limit_1d(ax: Any, datas: Sequence[Any], names: Sequence[str], opts: PlotOptions) -> None:
    """Apply --vmin/--vmax, or cut off outliers (a diverged end would otherwise flatten the curve). The range comes
    from every file of a comparison (``datas``), so panels sharing the axis agree on it."""
    arrays = [values(d, n, opts.log) for d in datas for n in names if n in d.metrics]
    lo, hi = value_range(arrays, opts, ", ".join(d.path for d in datas))
    top = max(float(np.nanmax(a)) if np.isfinite(a).any() else -math.inf for a in arrays)
    if opts.vmin is None and opts.vmax is None and hi >= top:
        return                              # no outliers and no user bounds: matplotlib's own margins are best
    pad = 0.03 * (hi - lo)
    lo, hi = lo - (pad if opts.vmin is None else 0), hi + (pad if opts.vmax is None else 0)
    ax.set_ylim(*((10.0 ** lo, 10.0 ** hi) if opts.log else (lo, hi)))


def plot_1d(data: Any, opts: PlotOptions) -> Figure:
    """A 1-D surface: loss and accuracy curves on twin axes."""
    if data.y is not None:
        raise PlotError(f"{data.path} is a 2-D surface: use --kinds contour, contourf, heatmap or surface3d")
    fig = Figure(figsize=(7.0, 4.8), layout="constrained")
    _draw_1d(fig.add_subplot(1, 1, 1), data, opts)
    fig.suptitle(title(data, opts.metric, opts.log), fontsize=10)
    return fig


def _grid_shape(n: int) -> Tuple[int, int]:
    cols = min(n, 4)
    return math.ceil(n / cols), cols


def plot_compare(datas: Sequence[Any], kind: str, opts: PlotOptions) -> Figure:
    """One figure, a panel per surface file, all on the same colour scale and levels (one shared colorbar)."""
    if len(datas) < 2:
        raise PlotError("a comparison needs at least two surface files")
    dims = {d.ndim for d in datas}
    if len(dims) > 1:
        raise PlotError("cannot compare 1-D and 2-D surfaces in one figure: " +
                        ", ".join(f"{d.path} ({d.ndim}-D)" for d in datas))
    rows, cols = _grid_shape(len(datas))
    if dims == {1}:
        if kind != "1d":
            raise PlotError(f"these surfaces are 1-D: compare them with --kinds 1d, not {kind}")
        fig = Figure(figsize=(4.6 * cols, 3.8 * rows), layout="constrained")
        first, first_acc = None, None
        for k, d in enumerate(datas):
            ax = fig.add_subplot(rows, cols, k + 1, sharey=first)
            first = first or ax
            acc = _draw_1d(ax, d, opts, datas)
            if acc is not None:             # accuracy axes shared too, or equal curves would look different
                first_acc = first_acc or acc
                if acc is not first_acc:
                    acc.sharey(first_acc)
            warn = minimizer_warning(d)
            ax.set_title(f"{stem(d.path)}: {model_name(d)}" + (f"\n{warn}" if warn else ""), fontsize=9)
        fig.suptitle("comparison on shared axes", fontsize=10)
        return fig
    metric = opts.metric or pick_metric(datas[0], None)
    for d in datas:
        pick_metric(d, metric)
    levels = choose_levels([values(d, metric, opts.log) for d in datas], opts, ", ".join(d.path for d in datas))
    fig = Figure(figsize=(4.4 * cols + 1.2, 3.9 * rows), layout="constrained")
    axes, mappables = [], []
    for k, d in enumerate(datas):
        ax = _axes(fig, kind, rows, cols, k + 1)
        mappables.append(draw_2d(ax, d, kind, metric, opts, levels))
        warn = minimizer_warning(d)
        ax.set_title("\n".join([f"{stem(d.path)}: {model_name(d)}", *textwrap.wrap(describe(d), 55)]
                                + ([warn] if warn else [])), fontsize=8)
        axes.append(ax)
    _colorbar(fig, mappables[0], axes, metric, opts, levels)
    fig.suptitle(f"{metric_label(metric, opts.log)} — shared colour scale", fontsize=10)
    fig.supxlabel(_note([values(d, metric, opts.log) for d in datas], levels, opts, kind), fontsize=7)
    return fig


def save(fig: Figure, path: str, dpi: int = 150) -> str:
    """Write ``fig`` (format from the extension) and release it."""
    fig.savefig(path, dpi=dpi)
    fig.clear()
    return path


__all__ = ["plot_1d", "plot_2d", "plot_compare", "draw_2d", "save"]
