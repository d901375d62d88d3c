"""Persistence diagrams and barcodes of surface files (``distland plot --kinds persistence``), side by side.

Each file gets a column: its 0-dimensional sublevel-set persistence diagram on top (one dot per minimum at
(birth, death); the global minimum of each connected piece never dies and sits on the ∞ line) and its barcode below
(one bar per minimum from birth to death, longest-lived first). All panels share one loss scale. With two or more
files the title gives the bottleneck distance of each file's diagram to the first's, on the raw
losses and on losses rescaled to [0, 1] (needs gudhi). The diagrams come from
:func:`distland.analysis.topology.merge_tree` (equal to gudhi's; see docs/topology.md).
"""
from __future__ import annotations

import math
from typing import Any, List, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure

from .common import PlotError, PlotOptions, metric_label, pick_metric, stem, values


def _diagrams(datas: Sequence[Any], opts: PlotOptions) -> List[Tuple[np.ndarray, np.ndarray]]:
    from distland.analysis.topology import merge_tree

    out = []
    for data in datas:
        # NaN marks every point that is not a valid loss (pending, diverged, non-positive under --log).
        v = values(data, pick_metric(data, opts.metric), opts.log)
        out.append((merge_tree(v).diagram(), v))
    return out


def distances_text(datas: Sequence[Any], opts: PlotOptions) -> str:
    """One line per file after the first: its diagram distances to the first file's."""
    from distland.analysis.topology import MissingDependency, compare

    if len(datas) < 2:
        return ""
    first = values(datas[0], pick_metric(datas[0], opts.metric), opts.log)
    lines = []
    for data in datas[1:]:
        try:
            d = compare(first, values(data, pick_metric(data, opts.metric), opts.log))
        except MissingDependency as e:
            raise PlotError(str(e)) from None
        lines.append(f"{stem(data.path)} vs {stem(datas[0].path)}: bottleneck distance {d['bottleneck']:.4g} "
                     f"(losses rescaled to [0, 1]: {d['bottleneck_rel']:.4g})")
    return "\n".join(lines)


def plot_persistence(datas: Sequence[Any], opts: PlotOptions) -> Figure:
    """Persistence diagram (top) and barcode (bottom) of each surface, one column per file, on one loss scale."""
    if not datas:
        raise PlotError("no surface files to plot")
    diagrams = _diagrams(datas, opts)
    finite = np.concatenate([v[np.isfinite(v)] for _, v in diagrams])
    if finite.size == 0:
        raise PlotError("no finite values to compute persistence from")
    lo, hi = float(finite.min()), float(finite.max())
    pad = 0.05 * (hi - lo or 1.0)
    inf_line = hi + 2 * pad   # where essential (never-dying) minima are drawn
    n = len(datas)
    fig = Figure(figsize=(4.2 * n, 7.6), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    label = metric_label(pick_metric(datas[0], opts.metric), opts.log)
    for col, (data, (dgm, _)) in enumerate(zip(datas, diagrams)):
        top, bottom = axes[0][col], axes[1][col]
        birth, death = dgm[:, 0], dgm[:, 1]
        ess = ~np.isfinite(death)
        top.plot([lo - pad, inf_line], [lo - pad, inf_line], color="0.6", lw=0.8)
        top.axhline(inf_line, color="0.6", ls="--", lw=0.8)
        top.scatter(birth[~ess], death[~ess], s=12, color="C0", label="minimum (birth, merge level)")
        top.scatter(birth[ess], np.full(ess.sum(), inf_line), s=30, marker="^", color="C3",
                    label="never merges (∞)")
        top.set_xlim(lo - pad, inf_line + pad)
        top.set_ylim(lo - pad, inf_line + pad)
        top.set_xlabel(f"birth: {label} at the minimum")
        top.set_ylabel("death: merge level")
        top.set_title(f"{stem(data.path)}: {len(birth)} minima", fontsize=10)
        if col == 0:
            top.legend(loc="lower right", fontsize=8)
        pers = np.where(ess, math.inf, death - birth)
        order = np.argsort(-pers, kind="stable")
        for k, i in enumerate(order):
            end = inf_line if ess[i] else death[i]
            bottom.plot([birth[i], end], [k, k], color="C3" if ess[i] else "C0", lw=1.5)
        bottom.axvline(inf_line, color="0.6", ls="--", lw=0.8)
        bottom.set_xlim(lo - pad, inf_line + pad)
        bottom.set_ylim(len(order), -1)
        bottom.set_yticks([])
        bottom.set_xlabel(f"{label} (dashed: ∞)")
        bottom.set_ylabel("minimum, longest-lived first")
    text = distances_text(datas, opts)
    fig.suptitle("sublevel-set persistence (0-dim)" + ("\n" + text if text else ""), fontsize=10)
    return fig


__all__ = ["plot_persistence", "distances_text"]
