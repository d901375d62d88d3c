"""Optimizer trajectories (from ``distland trajectory``) drawn over a 2-D contour plot."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .common import PlotError


@dataclass
class ProjectedPath:
    """A path projected on the two principal directions, one point per saved epoch."""

    coords: np.ndarray                   # (K, 2)
    labels: np.ndarray                   # (K,) epochs
    lr_drops: np.ndarray                 # epochs at which the learning rate dropped (may be empty)
    explained_variance: Optional[np.ndarray] = None   # (2,) ratios in [0, 1]
    path: str = ""
    centered: bool = True   # False: uncentered PCA, whose ratios are not comparable with the authors'
    projected_on: str = ""  # projected onto given directions (``distland trajectory --dir-file``): axes x and y

    def axis_label(self, k: int) -> str:
        """``"PC1: 84.1%"`` when the explained variance is known, else ``"PC1"``; ``"x"`` / ``"y"`` for a path
        projected onto a surface's own directions."""
        if self.projected_on:
            return "xy"[k]
        if self.explained_variance is None or len(self.explained_variance) <= k \
                or not np.isfinite(self.explained_variance[k]):
            return f"PC{k + 1}"
        return f"PC{k + 1}: {100.0 * float(self.explained_variance[k]):.1f}%{'' if self.centered else ' (uncentered)'}"


def read_trajectory(path: str) -> ProjectedPath:
    """Read ``trajectory/coords``, ``trajectory/labels``, optional ``trajectory/lr_drops`` and the variance ratio."""
    import h5py

    if not os.path.exists(path):
        raise PlotError(f"no such trajectory file: {path}")
    try:
        with h5py.File(path, "r") as f:
            if "trajectory/coords" not in f:
                raise PlotError(f"{path} is not a trajectory file: it has no 'trajectory/coords'")
            coords = np.asarray(f["trajectory/coords"][()], dtype=np.float64)
            labels = np.asarray(f["trajectory/labels"][()]) if "trajectory/labels" in f else np.arange(len(coords))
            drops = np.asarray(f["trajectory/lr_drops"][()]) if "trajectory/lr_drops" in f else np.zeros(0, int)
            evr = f.attrs.get("explained_variance_ratio")
            centered = bool(f.attrs.get("centered", True))
            projected = f.attrs.get("projected_on", "")
            projected = projected.decode() if isinstance(projected, bytes) else str(projected)
    except OSError as e:
        raise PlotError(f"{path} is not a trajectory file: {e}") from e
    if coords.ndim != 2 or coords.shape[1] != 2 or len(labels) != len(coords):
        raise PlotError(f"{path}: trajectory/coords must be (K, 2) with K labels, got {coords.shape} and "
                        f"{len(labels)} labels")
    return ProjectedPath(coords, labels.astype(int), np.atleast_1d(drops).astype(int),
                         None if evr is None else np.asarray(evr, dtype=np.float64), path, centered, projected)


def plot_path(traj: ProjectedPath, dpi: int = 150) -> Any:
    """The path alone (no surface): epochs, lr drops, the final weights at the origin, equal axis scales."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0.0], [0.0], "+", color="grey", markersize=10, zorder=3)   # the final weights (the centre)
    c = traj.coords
    pad = 0.05 * max(float(np.ptp(c[:, 0])), float(np.ptp(c[:, 1])), 1e-12)
    ax.set_xlim(min(c[:, 0].min(), 0.0) - pad, max(c[:, 0].max(), 0.0) + pad)
    ax.set_ylim(min(c[:, 1].min(), 0.0) - pad, max(c[:, 1].max(), 0.0) + pad)
    overlay_trajectory(ax, traj)
    ax.set_aspect("equal", adjustable="datalim")
    where = f"in the directions of {os.path.basename(traj.projected_on)}" if traj.projected_on else "in its PCA plane"
    fig.suptitle(f"{os.path.basename(traj.path)}: optimizer path {where}", fontsize=10)
    return fig


def check_trajectory_plane(surface_path: str, trajectory_path: str) -> None:
    """Refuse a path drawn over a surface computed on other directions: its coordinates would be meaningless there
    (and the axes would be relabelled "PC1" under a title saying "random directions")."""
    import h5py

    with h5py.File(surface_path, "r") as fs, h5py.File(trajectory_path, "r") as ft:
        if "directions" not in ft:
            raise PlotError(f"{trajectory_path} stores no directions, so it cannot be checked against "
                            f"{surface_path}; recompute it with `distland trajectory`")
        if "directions" not in fs:
            raise PlotError(f"{surface_path} stores no directions (not a distland surface?): cannot check that "
                            f"{trajectory_path} was projected on its plane")
        for axis in ("x", "y"):
            a, b = fs["directions"].get(axis), ft["directions"].get(axis)
            shared = [k for k in (a.keys() if a is not None else []) if b is not None and k in b]
            same = bool(shared) and all(np.allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-5, atol=1e-8)
                                        for k in shared)
            if not same:
                raise PlotError(f"{trajectory_path} was projected on other directions than {surface_path} "
                                f"(direction {axis} differs): compute the surface with directions.kind: file and "
                                f"directions.file: {trajectory_path}")


def overlay_trajectory(ax: Any, traj: ProjectedPath, max_labels: int = 12) -> None:
    """Draw the path with epoch markers, label every few epochs, star the lr drops and name the axes by PC."""
    c = traj.coords
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    # A path leaving the computed grid must still be shown whole, not silently cut at the plot's edge.
    ax.set_xlim(min(x0, c[:, 0].min()), max(x1, c[:, 0].max()))
    ax.set_ylim(min(y0, c[:, 1].min()), max(y1, c[:, 1].max()))
    ax.plot(c[:, 0], c[:, 1], "-o", color="black", markersize=3, linewidth=1.2, zorder=4, label="trajectory")
    ax.plot(c[0, 0], c[0, 1], "s", color="black", markersize=6, zorder=5)   # where training started
    # Label only every few epochs: a 200-epoch run labelled at each point is unreadable.
    step = max(1, math.ceil(len(c) / max_labels))
    shown = set(range(0, len(c), step)) | {len(c) - 1}
    # Where the path converges the points pile up: a label only where no earlier label is within 4% of the plot.
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    span = np.array([max(x1 - x0, 1e-12), max(y1 - y0, 1e-12)])
    placed: list = []
    for k in sorted(shown, key=lambda i: (i != len(c) - 1, i)):   # the final point first: it is always named
        if any(np.hypot(*((c[k] - q) / span)) < 0.04 for q in placed):
            continue
        placed.append(c[k])
        ax.annotate(str(traj.labels[k]), (c[k, 0], c[k, 1]), textcoords="offset points", xytext=(4, 4),
                    fontsize=7, zorder=6)
    drop = np.isin(traj.labels, traj.lr_drops)
    if drop.any():
        ax.plot(c[drop, 0], c[drop, 1], "*", color="red", markersize=12, markeredgecolor="black", zorder=6,
                linestyle="none", label="lr drop")
    ax.set_xlabel(traj.axis_label(0))
    ax.set_ylabel(traj.axis_label(1))
    ax.legend(loc="best", fontsize=8)
