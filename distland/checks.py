"""Checks that run before anything is written: every input problem that can be found up front is found here.

:func:`distland.sweep.prepare` calls them on rank 0 before the job lock is taken and before any file or directory
is made, so a refused job leaves the disk as it was, and ``--overwrite`` never discards a file for a job that would
fail later. Each raises ``ValueError`` (or :class:`~distland.surfacefile.SurfaceError`) with one line naming the
problem and the fix.
"""
from __future__ import annotations

import copy
import os
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .grid import Grid
from .losses import Criterion, resolve
from .surfacefile import ATTR_SLACK, SurfaceError, free_bytes

CHECK_BATCH = 256
FLOAT32_MAX = float(np.finfo(np.float32).max)
FILE_OVERHEAD = 1 << 20         # HDF5 headers, attributes (config text, identity) and a margin
ROOT_BYTES_PER_POINT = 40       # the coordinator's queue of pending points: a Python int and a list slot each


def check_data(splits: Mapping[str, Tuple[torch.Tensor, torch.Tensor]], data_name: str,
               class_targets: bool = True) -> None:
    """Every split non-empty, every input finite (the whole split, not a sample), no negative class labels."""
    for name, (x, y) in splits.items():
        if x.shape[0] == 0:
            raise ValueError(f"data {data_name!r}: the {name} split is empty; check data.max_samples and the data set")
        bad = 0
        for s in range(0, x.shape[0], 4096):  # in slices: no full-size boolean copy of a large data set
            bad += int((~torch.isfinite(x[s:s + 4096])).sum())
        if bad:
            raise ValueError(f"data {data_name!r}: the {name} split holds {bad} NaN/inf input value(s); the loss "
                             "would be NaN at every point. Clean the data")
        low = int(y.min()) if class_targets else 0
        if low < 0:
            raise ValueError(f"data {data_name!r}: the {name} split has label {low}; labels must be class indices "
                             ">= 0 (cross-entropy's ignore_index -100 is not supported: drop those samples)")


def check_model_on_data(model: torch.nn.Module, splits: Mapping[str, Tuple[torch.Tensor, torch.Tensor]],
                        model_name: str, data_name: str, device: str = "cpu", criterion: Optional[Criterion] = None
                        ) -> None:
    """The full loss at θ* on every split (cross-entropy unless ``criterion``): runs, gives one loss per sample,
    for class targets (N, classes) scores wide enough for every label, finite. On a GPU (``device``) a copy of the
    model runs there: this pass costs about one grid point."""
    criterion = criterion or resolve("cross_entropy")
    if device != "cpu":
        model = copy.deepcopy(model).to(device)
    batch = CHECK_BATCH if device == "cpu" else 4 * CHECK_BATCH
    with torch.no_grad():
        for name, (x, y) in splits.items():
            total = 0.0
            top = int(y.max()) if criterion.class_targets else 0
            for s in range(0, x.shape[0], batch):
                xb, yb = x[s:s + batch].to(device), y[s:s + batch].to(device)
                try:
                    out = model(xb)
                except Exception as e:  # noqa: BLE001 - any failure here means model and data don't fit
                    conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
                    hint = (f"; the data has {x.shape[1]} channel(s) and the model expects {conv.in_channels}: set "
                            f"--set model_args.in_channels={x.shape[1]}" if conv is not None and x.dim() == 4
                            and conv.in_channels != x.shape[1] else "")
                    raise ValueError(f"model {model_name!r} cannot run on data {data_name!r} ({name} inputs of "
                                     f"shape {tuple(x.shape[1:])}): {e}{hint}") from None
                if criterion.class_targets:
                    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != xb.shape[0]:
                        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                        raise ValueError(f"model {model_name!r} gives output {shape} for a batch of {xb.shape[0]}; "
                                         f"the {criterion.name} loss needs class scores of shape (batch, classes)")
                    if top >= out.shape[1]:
                        raise ValueError(f"data {data_name!r}: the {name} split has label {top} but model "
                                         f"{model_name!r} outputs {out.shape[1]} classes; set the model's number of "
                                         "classes (model_args) to match the data")
                if not isinstance(out, torch.Tensor) or not bool(torch.isfinite(out).all()):
                    raise ValueError(f"the model's output at θ* is NaN/inf on the {name} data: the surface would be "
                                     "all NaN. Check the checkpoint (a diverged run?) and the data (NaN/inf inputs?)")
                total += float(criterion.per_sample(out.double(), yb).sum())
            if not np.isfinite(total):
                raise ValueError(f"the loss at θ* is NaN/inf on the {name} data: the surface would be all NaN. "
                                 "Check the checkpoint and the data")


def check_coordinates(grid: Grid, reference: Mapping[str, torch.Tensor],
                      directions: Sequence[Mapping[str, np.ndarray]]) -> None:
    """Coordinates within float32 range, and θ* + Σ c·d representable in float32 at the grid's corners."""
    axes = [(f"grid.{name}", a) for name, a in zip(grid.names, grid.axes)]
    for key, axis in axes:
        big = float(np.max(np.abs(axis)))
        if not np.isfinite(big) or big > FLOAT32_MAX:
            raise ValueError(f"{key}: coordinate {big:g} is beyond float32's range ({FLOAT32_MAX:.3g})")
    reach = [float(np.max(np.abs(axis))) for _, axis in axes]
    worst, where = 0.0, ""
    for key, theta in reference.items():
        value = float(theta.detach().abs().max()) if theta.numel() else 0.0
        for c, d in zip(reach, directions):
            arr = np.asarray(d[key]) if key in d else np.zeros(1)
            value += c * (float(np.abs(arr).max()) if arr.size else 0.0)
        if value > worst:
            worst, where = value, key
    if not np.isfinite(worst) or worst > FLOAT32_MAX:
        raise ValueError(f"the grid reaches weights of magnitude {worst:.3g} in {where!r}, beyond float32's range "
                         f"({FLOAT32_MAX:.3g}); use a smaller grid.x/grid.y range")


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable, else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 1 << 62


def estimate_file_bytes(grid: Grid, n_metrics: int, direction_bytes: int) -> int:
    """The new file's size: float64 metrics and a byte of ``done`` per point, coordinates, directions, headers."""
    coords = 8 * sum(grid.shape)
    return grid.size * (8 * n_metrics + 1) + coords + direction_bytes + FILE_OVERHEAD


def estimate_root_memory(grid: Grid, n_metrics: int) -> int:
    """Extra memory the coordinator needs for the grid: its queue, the ``done`` mask, and the summary's read of
    every metric (a copy each)."""
    return grid.size * (ROOT_BYTES_PER_POINT + 1 + 16 * n_metrics)


def check_resources(grid: Grid, n_metrics: int, direction_bytes: int, output: str, create: bool) -> Dict[str, int]:
    """Refuse a grid whose file does not fit on the output's file system, or whose bookkeeping does not fit in the
    coordinator's memory, with the numbers. Returns the estimates."""
    need_file = estimate_file_bytes(grid, n_metrics, direction_bytes) if create else 0
    if create:
        free = free_bytes(output)
        if need_file + ATTR_SLACK > free:
            raise SurfaceError(f"the {grid.size}-point surface file needs about {_size(need_file + ATTR_SLACK)} but "
                               f"only {_size(free)} is free where {output} would be written; free some space, "
                               "choose another output, or use a coarser grid")
    need_mem = estimate_root_memory(grid, n_metrics)
    avail = available_memory()
    if need_mem > avail:
        raise SurfaceError(f"the {grid.size}-point grid needs about {_size(need_mem)} of memory on rank 0 but only "
                           f"{_size(avail)} is available; use a coarser grid or split it into several jobs")
    return {"file_bytes": need_file, "root_memory_bytes": need_mem}


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover
