"""The paper's convexity maps (Li et al. 2018, Fig. 7): |λmin/λmax| of the loss Hessian over the grid.

From a surface file with ``max_eig`` and ``min_eig`` (``quantities: [..., hessian]``). Small ratios mean the
landscape is nearly convex there (the most negative curvature is tiny next to the largest positive one), so the
colour scale spans 0 to 0.5 by default (``--vmin``/``--vmax`` change it): blue = convex, red = strongly non-convex.
A 1-D map draws λmax and λmin above and the ratio below.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import colors
from matplotlib.figure import Figure

from .common import PlotError, PlotOptions, title, values

CMAP = "RdYlBu_r"                       # blue (convex) at small ratios, through yellow, to red
DEFAULT_TOP = 0.5
CONTOURS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5)
LABEL = "|λmin/λmax|"


def plot_convexity(data: Any, opts: PlotOptions) -> Figure:
    """Heat map with contour lines of |λmin/λmax| (2-D), or the eigenvalue and ratio curves (1-D)."""
    if "convexity" not in data.metrics:
        raise PlotError(f"{data.path} has no Hessian map (max_eig and min_eig); compute one with "
                        "quantities: [loss, hessian]")
    ratio = values(data, "convexity", False)
    if not np.isfinite(ratio).any():
        raise PlotError(f"{data.path}: no finite |λmin/λmax| yet (no Hessian-map point is done)")
    lo = 0.0 if opts.vmin is None else opts.vmin
    hi = DEFAULT_TOP if opts.vmax is None else opts.vmax
    if not lo < hi:
        raise PlotError(f"--vmin {lo} must be below --vmax {hi}")
    if data.y is None:
        fig = Figure(figsize=(7.0, 6.0), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True)
        for name, colour in (("max_eig", "C3"), ("min_eig", "C0")):
            top.plot(data.x, values(data, name, False), color=colour, marker=".", label=name)
        top.axhline(0.0, color="grey", linewidth=0.6)
        top.set_ylabel("eigenvalue")
        top.legend(fontsize=8)
        bottom.plot(data.x, ratio, color="k", marker=".")
        bottom.axhspan(lo, hi, color="tab:blue", alpha=0.06)
        bottom.set_ylim(lo, max(hi, float(np.nanmax(ratio)) * 1.05))
        bottom.set_ylabel(LABEL)
        bottom.set_xlabel("x")
    else:
        fig = Figure(figsize=(7.0, 5.6), layout="constrained")
        ax = fig.add_subplot(1, 1, 1)
        z = np.ma.masked_invalid(ratio.T)
        norm = colors.Normalize(lo, hi)
        mesh = ax.pcolormesh(data.x, data.y, z, shading="nearest", cmap=CMAP, norm=norm)
        levels = [v for v in CONTOURS if lo < v < hi]
        if levels and min(z.shape) > 1 and z.count() > 3:
            lines = ax.contour(data.x, data.y, z, levels=levels, colors="k", linewidths=0.6)
            ax.clabel(lines, inline=True, fontsize=7, fmt="%g")
        fig.colorbar(mesh, ax=ax, shrink=0.8, label=LABEL, extend="max" if np.nanmax(ratio) > hi else "neither")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_aspect("auto")
    fig.suptitle(title(data, LABEL, False), fontsize=10)
    return fig
