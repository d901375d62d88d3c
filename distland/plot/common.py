"""What every plot and export shares: loading with clear errors, options, masking, colour range and titles.

Nothing here imports matplotlib or plotly, so the CLI can import it while ``distland --help`` stays fast.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

METRICS: Tuple[str, ...] = ("train_loss", "train_acc", "test_loss", "test_acc")
# A Hessian map's (quantities: [hessian]) eigenvalues and |λmin/λmax| ("convexity", derived when a file is loaded).
HESSIAN_METRICS: Tuple[str, ...] = ("max_eig", "min_eig", "convexity")
KINDS_2D: Tuple[str, ...] = ("contour", "contourf", "heatmap", "surface3d")
KINDS: Tuple[str, ...] = KINDS_2D + ("1d",)
DEFAULT_LEVELS = 20


class PlotError(ValueError):
    """A problem with the user's input (file, metric, option); the message says what and where."""


@dataclass
class PlotOptions:
    """How to draw: which metric, scale, colour range, contour count and 3-D height clip.

    ``vmin``, ``vmax`` and ``zmax`` are in data units (loss, percent) even with ``log``.
    """

    metric: Optional[str] = None     # None: train_loss when present, else the first metric the file has
    log: bool = False
    vmin: Optional[float] = None
    vmax: Optional[float] = None
    levels: Optional[int] = None     # None: DEFAULT_LEVELS
    zmax: Optional[float] = None     # clip surface heights (3-D plot, VTK, HTML) at this value
    fmt: str = "png"
    dpi: int = 150
    xlim: Optional[Tuple[float, float]] = None   # 1-D plots: the x range shown (the authors' --xmin/--xmax)
    vlevel: Optional[float] = None   # contour spacing as a step in plotting units (the authors' --vlevel)
    upsample: int = 1                # the VTK export: K× finer grid, interpolated (see export.upsample)

    @property
    def n_levels(self) -> int:
        return DEFAULT_LEVELS if self.levels is None else self.levels


def load(path: str) -> Any:
    """Read a surface file through :func:`distland.surfacefile.read`, turning every failure into a :class:`PlotError`."""
    from distland.surfacefile import read   # h5py is not needed for `distland --help`

    if not os.path.exists(path):
        raise PlotError(f"no such file: {path}")
    if os.path.isdir(path):
        raise PlotError(f"{path} is a directory, not a surface file")
    try:
        data = read(path)
    except PlotError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        # The reader's own errors already name the file and say why; others need the context.
        msg = str(e) if os.path.basename(path) in str(e) else f"{path} is not a surface file: {e}"
        raise PlotError(msg) from e
    if not data.metrics:
        raise PlotError(f"{path} is not a surface file: it has none of {', '.join(METRICS)}")
    if not np.any(data.done):
        raise PlotError(f"{path}: no points are done yet; nothing to plot")
    add_datasets(data)
    add_errors(data)
    add_convexity(data)
    return data


def add_convexity(data: Any) -> Any:
    """Add ``convexity`` = |min_eig / max_eig| (the paper's Fig. 7 ratio) when the file holds a Hessian map."""
    if "max_eig" in data.metrics and "min_eig" in data.metrics:
        with np.errstate(divide="ignore", invalid="ignore"):
            data.metrics["convexity"] = np.abs(data.metrics["min_eig"] / data.metrics["max_eig"])
    return data


def add_datasets(data: Any) -> Any:
    """Every other numeric dataset of the grid's shape in the file (e.g. one a script or another tool added)
    becomes a metric, so ``--metric`` can draw it; the file's ``done`` mask applies, as to the loss."""
    import h5py

    shape = tuple(data.done.shape)
    skip = {"xcoordinates", "ycoordinates", "done"} | set(getattr(data, "masks", {}) or {})
    try:
        with h5py.File(data.path, "r", locking=False) as f:
            for name, ds in f.items():
                if (name in data.metrics or name in skip or not isinstance(ds, h5py.Dataset)
                        or ds.dtype.kind not in "fiu" or ds.size != int(np.prod(shape))):
                    continue
                v = np.asarray(ds[()], dtype=np.float64)
                if data.layout != "distland" and len(shape) == 2:
                    v = v.reshape(shape[1], shape[0]).T   # the authors' files store [j, i]
                if v.shape != shape:
                    continue
                data.metrics[name] = np.where(data.done, v, np.nan)
    except OSError:
        pass   # a file the reader accepted but h5py cannot reopen: keep what was read
    return data


def add_errors(data: Any) -> Any:
    """Add ``<split>_err`` = 100 − ``<split>_acc`` (the error in percent, the authors' ``train_err``) for every
    accuracy the file holds, unless the file has a dataset of that name itself."""
    for name in list(data.metrics):
        if name.endswith("_acc"):
            err = name[:-len("_acc")] + "_err"
            if err not in data.metrics:
                data.metrics[err] = 100.0 - np.asarray(data.metrics[name], dtype=np.float64)
    return data


def pick_metric(data: Any, metric: Optional[str]) -> str:
    """The metric to draw: the requested one (checked) or train_loss / the first present."""
    if metric is not None:
        if metric not in data.metrics:
            raise PlotError(f"{data.path} has no {metric!r}; it has {', '.join(sorted(data.metrics))}")
        return metric
    for name in METRICS:
        if name in data.metrics:
            return name
    return sorted(data.metrics)[0]


def transform(values: np.ndarray, log: bool) -> np.ndarray:
    """Values in plotting space: log10 with non-positive values made NaN when ``log``."""
    values = np.asarray(values, dtype=np.float64)
    if not log:
        return values.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, np.log10(np.where(values > 0, values, 1.0)), np.nan)


def transform_scalar(value: Optional[float], log: bool, name: str) -> Optional[float]:
    """A user bound (vmin, vmax, zmax) in plotting space."""
    if value is None or not log:
        return value
    if value <= 0:
        raise PlotError(f"--{name} {value} cannot be used with --log: it must be > 0")
    return math.log10(value)


def values(data: Any, metric: str, log: bool) -> np.ndarray:
    """The metric in [i, j] layout and plotting space, NaN wherever not done or not finite."""
    v = transform(data.metrics[metric], log)
    v[~np.asarray(data.done, dtype=bool)] = np.nan
    v[~np.isfinite(v)] = np.nan
    loss = metric[:-len("_acc")] + "_loss" if metric.endswith(("_acc", "_err")) else ""
    if loss in data.metrics:
        # Where the loss is NaN/inf the model produced no numbers; its "accuracy" (argmax of NaN logits = class 0,
        # about 10%) would draw a cliff that is not there.
        v[~np.isfinite(np.asarray(data.metrics[loss], dtype=np.float64))] = np.nan
    return v


def plane(data: Any, metric: str, log: bool) -> np.ma.MaskedArray:
    """The 2-D metric as matplotlib wants it: ``Z[j, i]`` for ``X = x``, ``Y = y``, gaps masked (never 0)."""
    v = values(data, metric, log)
    return np.ma.masked_invalid(v.T)


def _finite(arrays: Sequence[np.ndarray]) -> np.ndarray:
    flat = np.concatenate([np.ma.filled(np.ma.asarray(a, dtype=np.float64), np.nan).ravel() for a in arrays])
    return flat[np.isfinite(flat)]


def value_range(arrays: Sequence[np.ndarray], opts: PlotOptions, where: str = "") -> Tuple[float, float]:
    """Colour / level range in plotting space, shared by all ``arrays`` (already transformed, NaN = gap).

    The top defaults to the largest finite value unless that is an outlier far above the 95th percentile (a
    diverged corner at 1e6 would flatten every contour into one colour), in which case the 95th percentile wins.
    """
    finite = _finite(arrays)
    if finite.size == 0:
        raise PlotError(f"{where or 'surface'}: no finite values to plot (every point done so far diverged)")
    lo = transform_scalar(opts.vmin, opts.log, "vmin")
    hi = transform_scalar(opts.vmax, opts.log, "vmax")
    if lo is None:
        lo = float(finite.min())
    if hi is None:
        top, q95 = float(finite.max()), float(np.quantile(finite, 0.95))
        hi = q95 if top - lo > 4.0 * (q95 - lo) and q95 > lo else top
    if not lo < hi:
        if opts.vmin is not None and opts.vmax is not None:
            raise PlotError(f"--vmin {opts.vmin} must be below --vmax {opts.vmax}")
        # A flat surface, or a user bound beyond the data: open a small window, keeping the user's bound.
        pad = 0.05 * max(abs(lo), abs(hi)) or 0.5
        if opts.vmin is not None:
            hi = lo + 2 * pad
        elif opts.vmax is not None:
            lo = hi - 2 * pad
        else:
            lo, hi = lo - pad, hi + pad
    # Bounds the user did not set are widened to a multiple of a round step, so the levels are round numbers.
    step = nice_step(lo, hi, opts.n_levels)
    if opts.vmin is None:
        lo = math.floor(lo / step + 1e-9) * step
    if opts.vmax is None:
        hi = math.ceil(hi / step - 1e-9) * step
    return lo, hi


def nice_step(lo: float, hi: float, n: int) -> float:
    """The smallest step of the form {1, 2, 2.5, 5} × 10^k that spans [lo, hi] in at most ``n - 1`` steps."""
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    return next(s * mag for s in (1.0, 2.0, 2.5, 5.0, 10.0) if s * mag >= raw * (1 - 1e-9))


def contour_levels(lo: float, hi: float, n: int) -> np.ndarray:
    """About ``n`` contour levels from ``lo`` to ``hi``.

    Round-numbered when both ends sit on a round step (automatic bounds do), else evenly spaced with the ends kept
    exactly, so user bounds are respected.
    """
    if n < 2:
        raise PlotError(f"--levels must be at least 2, got {n}")
    step = nice_step(lo, hi, n)
    k, first = (hi - lo) / step, lo / step
    if abs(k - round(k)) < 1e-6 and abs(first - round(first)) < 1e-6:
        return (round(first) + np.arange(round(k) + 1)) * step
    return np.linspace(lo, hi, n)


SKEWED = 0.25   # median in the bottom quarter of the range: a flat basin inside steep walls


def choose_levels(arrays: Sequence[np.ndarray], opts: PlotOptions, where: str = "") -> np.ndarray:
    """Contour levels (and colour boundaries) for ``arrays`` in plotting space, shared by all of them.

    Evenly spaced round numbers, except for a typical loss landscape (a flat basin inside steep walls, most values
    near the bottom of the range) when no bounds are given: then the levels follow the quantiles of the finite
    values, so the basin gets as many contours as the walls instead of one. The ends are always ``value_range``.

    The test is made on the pooled values and on each array alone, as a single-file plot of it makes it: a
    comparison uses quantile levels whenever one of its files gets them on its own, so a basin drawn with
    contours alone is never left blank beside a partner whose values dominate the pooled median.
    """
    lo, hi = value_range(arrays, opts, where)
    if opts.vlevel is not None:
        return step_levels(lo, hi, opts.vlevel)
    n = opts.n_levels
    if n < 2:
        raise PlotError(f"--levels must be at least 2, got {n}")
    inside = _finite(arrays)
    inside = inside[(inside >= lo) & (inside <= hi)]
    pooled = bool(inside.size) and float(np.median(inside)) - lo < SKEWED * (hi - lo)
    if opts.vmin is None and opts.vmax is None and inside.size and (
            pooled or any(_skewed(a, opts, where) for a in arrays)):
        interior = [float(f"{q:.2g}") for q in np.quantile(inside, np.linspace(0, 1, n))[1:-1]]
        levels = np.unique([lo, *(q for q in interior if lo < q < hi), hi])
        if len(levels) >= max(3, n // 2):
            return levels
    return contour_levels(lo, hi, n)


def step_levels(lo: float, hi: float, step: float) -> np.ndarray:
    """Contour levels ``lo, lo + step, lo + 2·step, …`` (as the authors' ``--vlevel``: ``arange(vmin, vmax,
    vlevel)``), in plotting units (log10 units with ``--log``), and ``hi`` so colours span the whole range."""
    if not (step > 0 and math.isfinite(step)):
        raise PlotError(f"--vlevel must be a positive number, got {step}")
    if (hi - lo) / step > 1000:
        raise PlotError(f"--vlevel {step} gives {int((hi - lo) / step)} levels over [{lo:g}, {hi:g}]; "
                        "use a larger step")
    levels = lo + step * np.arange(int(math.floor((hi - lo) / step + 1e-9)) + 1)
    return levels if levels[-1] >= hi - 1e-9 * max(1.0, abs(hi)) else np.append(levels, hi)


def _skewed(array: np.ndarray, opts: PlotOptions, where: str) -> bool:
    """Whether one array, plotted alone, is a flat basin inside steep walls (median in the bottom quarter)."""
    finite = _finite([array])
    if finite.size == 0:
        return False                        # a file with nothing finite yet has no basin to resolve
    lo, hi = value_range([array], opts, where)
    inside = finite[(finite >= lo) & (finite <= hi)]
    return bool(inside.size) and float(np.median(inside)) - lo < SKEWED * (hi - lo)


def level_note(arrays: Sequence[np.ndarray], levels: np.ndarray, opts: PlotOptions, kind: str) -> str:
    """What a reader must know about the levels: how they are spaced and what lies beyond them (values in
    plotting space; the text in data units)."""
    unit = (lambda v: f"{10.0 ** v:.3g}") if opts.log else (lambda v: f"{v:.3g}")
    steps = np.diff(levels)
    parts = [f"{len(levels)} levels from {unit(levels[0])} to {unit(levels[-1])}, "
             + (f"every {unit(steps[0]) if not opts.log else f'{steps[0]:.3g} decades'}"
                if np.allclose(steps, steps[0], rtol=1e-6) else f"every {opts.vlevel:g} (--vlevel)"
                if opts.vlevel is not None else "at quantiles of the values (uneven spacing)")]
    finite = _finite(arrays)
    top, bottom = float(finite.max()), float(finite.min())
    if top > levels[-1] + 1e-12 * max(1.0, abs(levels[-1])):
        what = {"surface3d": "heights clipped at", "contour": "no contours above",
                "heatmap": "top colour above", "contourf": "top colour above"}.get(kind, "clipped at")
        why = " (95th percentile: the rest are outliers)" if opts.vmax is None and opts.zmax is None else ""
        parts.append(f"{what} {unit(levels[-1])}{why}; the data reach {unit(top)}")
    if bottom < levels[0] - 1e-12 * max(1.0, abs(levels[0])):
        parts.append(f"below {unit(levels[0])} down to {unit(bottom)} not resolved")
    return "; ".join(parts)


def metric_label(metric: str, log: bool) -> str:
    unit = " (%)" if metric.endswith(("_acc", "_err")) else ""
    return f"{metric}{unit}" + (", log scale" if log else "")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _axis_text(v: np.ndarray) -> str:
    return f"[{v.min():g}, {v.max():g}]" if len(v) > 1 else f"{v[0]:g}"


def describe(data: Any) -> str:
    """One line of provenance from the job config: directions, grid, split, how much is done."""
    cfg: Dict[str, Any] = data.config if isinstance(data.config, dict) else {}
    dirs = cfg.get("directions") if isinstance(cfg.get("directions"), dict) else {}
    split = (cfg.get("data") or {}).get("split") if isinstance(cfg.get("data"), dict) else None
    parts: List[str] = []
    kind = str(dirs.get("kind") or "")
    if kind == "interp":  # the normalization applies to random directions only
        parts.append("linear interpolation θ → θ′")
    elif kind == "plane":
        parts.append("plane through θ (0,0), θ′ (1,0), θ″ (0,1)")
    elif kind == "file":
        parts.append(f"directions from {Path(str(dirs.get('file') or 'a file')).name}")
    elif dirs.get("norm") or kind:
        norm = dirs.get("norm")
        words = [f"{norm}-normalized" if norm and norm != "none" else "", kind, "directions"]
        parts.append(" ".join(w for w in words if w))
    if data.y is None:
        parts.append(f"{len(data.x)} points on {_axis_text(data.x)}")
    else:
        axes = list(getattr(data, "axes", (data.x, data.y)))   # K-D: every axis
        parts.append(f"grid {'×'.join(str(len(a)) for a in axes)} on {'×'.join(_axis_text(a) for a in axes)}")
    section = getattr(data, "section", None)
    if section:   # a plane of a K-D surface: which one
        names = list(getattr(data, "labels", ()) or ("x", "y"))
        parts[-1] = parts[-1].replace("grid ", f"{'×'.join(names)} plane ", 1)
        parts.append("at " + ", ".join(f"{n} = {v:.4g}" for n, v in section.items()))
    if split:
        parts.append(f"split: {split}")
    done = np.asarray(data.done, dtype=bool)
    if not done.all():
        parts.append(f"{100.0 * done.mean():.0f}% done")
    return " · ".join(parts)


def model_name(data: Any) -> str:
    cfg = data.config if isinstance(data.config, dict) else {}
    name = cfg.get("model") or data.attrs.get("model")
    return _text(name) if name else os.path.splitext(os.path.basename(data.path))[0]


def title(data: Any, metric: Optional[str], log: bool) -> str:
    """Figure title: model and metric, the provenance line, and a warning line when θ* is not a minimizer."""
    head = model_name(data) + (f" — {metric_label(metric, log)}" if metric else "")
    warn = minimizer_warning(data)
    return f"{head}\n{describe(data)}" + (f"\n{warn}" if warn else "")


def minimizer_warning(data: Any) -> str:
    """"WARNING: centre is not a minimizer (...)" from the file's convergence attributes, or ""."""
    from distland.analysis import convergence   # numpy only

    report = convergence.read(getattr(data, "attrs", {}) or {})
    if not report or convergence.is_minimizer(report)[0]:
        return ""
    return f"WARNING: centre is not a minimizer (train acc {report.get('train_acc', math.nan):.1f}%)"


def interp_ends(data: Any) -> Optional[Tuple[str, str]]:
    """(name at x = 0, name at x = 1) of an interpolation surface: the checkpoint and the target, else None."""
    cfg: Dict[str, Any] = data.config if isinstance(data.config, dict) else {}
    dirs = cfg.get("directions") if isinstance(cfg.get("directions"), dict) else {}
    if dirs.get("kind") != "interp":
        return None

    def name(path: Any) -> str:
        p = Path(str(path or ""))
        return p.parent.name if p.name in ("final.pt", "last.pt") and p.parent.name else (p.name or "?")

    return name(cfg.get("checkpoint")), name(dirs.get("target"))


def stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]
