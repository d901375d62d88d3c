"""Plots and exports of surface files: matplotlib figures, ParaView (.vts, .xmf) and interactive HTML.

Names are resolved lazily (PEP 562) so that importing :mod:`distland.plot.cli` for ``distland --help`` does not
load matplotlib.
"""
from __future__ import annotations

import importlib
from typing import Any

from .common import METRICS, KINDS, PlotError, PlotOptions

_LAZY = {
    "plot_1d": "surface", "plot_2d": "surface", "plot_compare": "surface", "draw_2d": "surface", "save": "surface",
    "export_vts": "export", "export_xdmf": "export", "export_html": "export",
    "ProjectedPath": "trajectory", "read_trajectory": "trajectory", "overlay_trajectory": "trajectory",
    "plot_files": "cli", "load": "common",
}

__all__ = ["METRICS", "KINDS", "PlotError", "PlotOptions", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
