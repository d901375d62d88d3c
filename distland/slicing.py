"""Planes and lines of K-D surfaces: fix every axis but two (or one), keep the rest as a 2-D (1-D) surface.

``distland plot FILE --slice z=0.25`` fixes ``z`` at the grid point 0.25 (a coordinate must be a grid point, to
within 1e-9 of the axis span); ``z=@3`` fixes it at index 3. The axes left free, in file order, become the slice's
x and y: ``--slice y=0`` of an (x, y, z) volume is the (x, z) plane, x across and z up. A K-D surface plotted
without ``--slice`` shows the plane of its first two axes through the grid points nearest 0 on the others (the
centre θ*, when the grid holds it). The result is a :class:`~distland.surfacefile.SurfaceData` of 2 (or 1) axes
that every plot, export and report takes as it is; its ``labels`` name the axes in the file and ``section`` holds
the fixed coordinates.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .grid import axis_names


class SliceError(ValueError):
    """A ``--slice`` that does not fit the surface; the message says what would."""


def parse(text: str) -> Dict[str, str]:
    """``"z=0.25,axis4=@1"`` → ``{"z": "0.25", "axis4": "@1"}`` (values are resolved against a surface by
    :func:`take`)."""
    out: Dict[str, str] = {}
    for item in (t.strip() for t in text.split(",")):
        name, sep, value = item.partition("=")
        if not item or not sep or not name.strip() or not value.strip():
            raise SliceError(f"--slice {text!r}: expected AXIS=COORDINATE or AXIS=@INDEX, e.g. z=0 or z=@2")
        if name.strip() in out:
            raise SliceError(f"--slice {text!r}: axis {name.strip()} is fixed twice")
        out[name.strip()] = value.strip()
    return out


def _index(name: str, axis: np.ndarray, value: str) -> int:
    if value.startswith("@"):
        try:
            i = int(value[1:])
        except ValueError:
            raise SliceError(f"--slice {name}={value}: an index is @ and an integer, e.g. {name}=@0") from None
        if not -len(axis) <= i < len(axis):
            raise SliceError(f"--slice {name}={value}: axis {name} has {len(axis)} points (indices 0..{len(axis) - 1})")
        return i % len(axis)
    try:
        t = float(value)
    except ValueError:
        raise SliceError(f"--slice {name}={value}: give a coordinate (a number) or @INDEX") from None
    span = float(np.ptp(axis)) if axis.size > 1 else 0.0
    i = int(np.argmin(np.abs(axis - t)))
    if abs(float(axis[i]) - t) > 1e-9 * (span or 1.0):
        raise SliceError(f"--slice {name}={value}: {t:g} is not a grid point of {name}; the nearest is "
                         f"{float(axis[i]):.6g} (index @{i})")
    return i


def centre_index(axis: np.ndarray) -> int:
    """The grid point nearest 0 on ``axis`` (the first of two equally near)."""
    return int(np.argmin(np.abs(np.asarray(axis, dtype=np.float64))))


def take(data: Any, fixed: Optional[Mapping[str, str]] = None) -> Any:
    """The surface ``data`` with the axes in ``fixed`` (name → coordinate or ``@index``) held fixed.

    Without ``fixed`` a K-D surface (K ≥ 3) is cut through the points nearest 0 of every axis after y, and a 1-D or
    2-D surface is returned unchanged. At most two axes may stay free."""
    names = axis_names(data.ndim)
    axes = list(data.axes)
    if not fixed:
        if data.ndim <= 2:
            return data
        fixed = {n: f"@{centre_index(a)}" for n, a in zip(names[2:], axes[2:])}
    unknown = [n for n in fixed if n not in names]
    if unknown:
        raise SliceError(f"{data.path}: --slice names axis {unknown[0]!r}; this {data.ndim}-D surface has axes "
                         f"{', '.join(names)}")
    free = [k for k, n in enumerate(names) if n not in fixed]
    if not 1 <= len(free) <= 2:
        raise SliceError(f"{data.path}: --slice must leave one or two axes free, it leaves "
                         f"{', '.join(names[k] for k in free) or 'none'}; fix "
                         f"{'fewer' if not free else ', '.join(names[k] for k in free[2:])}")
    index: List[Any] = [slice(None)] * data.ndim
    section: Dict[str, float] = dict(getattr(data, "section", {}) or {})
    for k, n in enumerate(names):
        if n in fixed:
            index[k] = _index(n, axes[k], str(fixed[n]))
            section[n] = float(axes[k][index[k]])
    sel = tuple(index)
    old_labels = tuple(getattr(data, "labels", ()) or ()) or tuple(names)
    return dataclasses.replace(
        data, x=axes[free[0]], y=axes[free[1]] if len(free) == 2 else None, more=(),
        metrics={m: np.asarray(v)[sel] for m, v in data.metrics.items()},
        done=np.asarray(data.done)[sel], masks={m: np.asarray(v)[sel] for m, v in data.masks.items()},
        labels=tuple(old_labels[k] for k in free), section=section)


def section_text(data: Any) -> str:
    """``"z = 0.25, axis4 = 1"`` for a slice, "" for a whole surface."""
    section: Dict[str, float] = getattr(data, "section", {}) or {}
    return ", ".join(f"{n} = {v:.4g}" for n, v in section.items())


def axis_labels(data: Any) -> Sequence[str]:
    """The names of ``data``'s axes as the file knows them (``("x", "z")`` for a slice at fixed y)."""
    return tuple(getattr(data, "labels", ()) or ()) or tuple(axis_names(data.ndim))
