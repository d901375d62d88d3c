"""``distland info``: the environment (versions, MPI, devices) and a surface file's grid, completion, provenance."""
from __future__ import annotations

import json
import platform
from typing import TYPE_CHECKING, List

import numpy as np

if TYPE_CHECKING:
    from .surfacefile import SurfaceData


def describe_environment() -> str:
    import h5py
    import torch

    from . import __version__
    from .comm import describe_mpi
    from .engine import cores_available

    lines = [f"distland {__version__}  python {platform.python_version()}  torch {torch.__version__}",
             f"h5py {h5py.__version__}  HDF5 {h5py.version.hdf5_version}  parallel (mpio): "
             f"{'yes' if h5py.get_config().mpi else 'no — rank 0 will write every result'}"]
    lines.append(describe_mpi())
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i} {p.name}  {p.total_memory / 2**30:.1f} GiB")
    else:
        lines.append(f"no GPU visible; CPU with {cores_available()} core(s) available to this process")
    return "\n".join(lines)


def describe_surface(path: str) -> str:
    """What ``distland info FILE`` prints: a surface file, or a ``distland hessian`` result file."""
    from .hessian import job as hessian_job
    from .surfacefile import SurfaceError, read

    if hessian_job.is_result_file(path):
        return hessian_job.Result.from_file(path).text(f"Hessian at θ* ({path}):")
    data = read(path)
    n_done, n = int(data.done.sum()), data.done.size
    grid = " × ".join(f"{name} [{a[0]:g}, {a[-1]:g}] ({len(a)})" for name, a in zip(data.names, data.axes))
    cfg = data.config
    d = cfg.get("directions", {}) if isinstance(cfg, dict) else {}
    lines: List[str] = [f"file {path} ({data.layout} layout)",
                        f"  grid {grid}; {n_done}/{n} points done ({100.0 * n_done / n:.1f}%)"]
    if cfg:
        lines.append(f"  model {cfg.get('model')}  checkpoint {cfg.get('checkpoint') or '(initialisation)'}  "
                     f"data {cfg.get('data', {}).get('name')}/{cfg.get('data', {}).get('split')}")
        if d.get("kind") == "interp":   # norm, ignore and seed do not apply to an interpolation
            lines.append(f"  directions interpolation to {d.get('target')} (x = 0: the checkpoint, x = 1: the "
                         f"target), type {d.get('type')}"
                         + (" (BatchNorm variances interpolated geometrically)" if d.get("type") == "states"
                            else "")
                         + (f"; y: random, seed {d.get('seed')}, {d.get('ynorm') or d.get('norm')}-normalized"
                            if data.y is not None else ""))
        elif d.get("kind") == "plane":
            lines.append(f"  directions plane through the checkpoint (0, 0), {d.get('target')} (1, 0) and "
                         f"{d.get('target2')} (0, 1), type {d.get('type')}")
        elif d.get("kind") == "file":
            lines.append(f"  directions from file {d.get('file')}, type {d.get('type')}")
        else:
            lines.append(f"  directions kind {d.get('kind')} norm {d.get('norm')} ignore {d.get('ignore')} "
                         f"type {d.get('type')} seed {d.get('seed')}"
                         + (f" (y: norm {d.get('ynorm') or d.get('norm')} ignore {d.get('yignore') or d.get('ignore')})"
                            if d.get("ynorm") or d.get("yignore") else ""))
    for key in ("distland_version", "created", "last_run", "checkpoint_sha256", "io", "nranks", "compiled_ranks",
                "precision_check"):
        if key in data.attrs:
            lines.append(f"  {key}: {data.attrs[key]}")
    if "engine" in data.attrs:
        try:
            engine = json.loads(data.attrs["engine"])
        except (TypeError, ValueError):
            raise SurfaceError(f"{path!r}: its 'engine' attribute is not valid JSON") from None
        lines.append(f"  engine: {engine}")
    devices = data.attrs.get("devices", []) or []
    if isinstance(devices, str) or not isinstance(devices, list):
        raise SurfaceError(f"{path!r}: its 'devices' attribute is not a list of lines (got {type(devices).__name__})")
    for dev in devices:
        lines.append(f"  {dev}")
    for name, values in data.metrics.items():
        finite = np.isfinite(values)
        if finite.any():
            lines.append(f"  {name}: min {np.nanmin(np.where(finite, values, np.nan)):.6g}  "
                         f"max {np.nanmax(np.where(finite, values, np.nan)):.6g}"
                         + (f"  ({int((data.done & ~finite).sum())} NaN/inf)" if (data.done & ~finite).any() else ""))
    from .analysis.sharpness import format_report, read_report, sharpness_report

    report = read_report(data.attrs)
    metric = str(data.attrs.get("sharpness.metric", ""))
    if not report and data.done.any():
        metric = next((m for m in data.metrics if m.endswith("_loss")), "")
        report = sharpness_report(data, metric) if metric else {}  # computed now, not stored (file is read-only)
    elif report and "topology.n_minima" not in report and metric in data.metrics:
        from .analysis.topology import PREFIX, topology_report   # a report stored before topology existed

        report.update({PREFIX + k: v for k, v in topology_report(data, metric).items()})
    if report and "hessian.map_points" not in report:
        from .analysis.convexity import PREFIX as HESSIAN, convexity_numbers   # a map added after the report

        report.update({HESSIAN + k: v for k, v in convexity_numbers(data).items()})
    if report:
        lines.extend("  " + line for line in format_report(report, metric).splitlines())
    from .analysis import convergence

    lines.extend("  " + line for line in convergence.format_report(convergence.read(data.attrs)).splitlines())
    lines.extend("  " + line for line in _hessian_at_minimum(path, data))
    return "\n".join(lines)


def _hessian_at_minimum(path: str, data: "SurfaceData") -> List[str]:
    """The spectrum at θ* from `distland hessian`, when its file (``hessian.output`` or ``<stem>_hessian.h5`` next
    to the surface) exists and was computed from the surface's checkpoint."""
    import os

    from .hessian import job as hessian_job

    cfg = data.config if isinstance(data.config, dict) else {}
    named = str((cfg.get("hessian") or {}).get("output") or "")
    stem, _ = os.path.splitext(path)
    for candidate in dict.fromkeys(p for p in (named, stem + "_hessian.h5") if p):
        if not (os.path.isfile(candidate) and hessian_job.is_result_file(candidate)):
            continue
        res = hessian_job.Result.from_file(candidate)
        ours = str(data.attrs.get("checkpoint_sha256", ""))
        if ours and res.checkpoint_sha256 and ours != res.checkpoint_sha256:
            return [f"note: {candidate} is the Hessian of another checkpoint (SHA-256 differs); not shown"]
        return res.text(f"Hessian at θ* ({candidate}):").splitlines()
    return []


def compare_surfaces(paths: List[str], metric: str = "train_loss") -> str:
    """The side-by-side table of :mod:`distland.analysis.compare` for several files, with its caveats."""
    from .analysis import compare
    from .surfacefile import read

    datas = [(p, read(p)) for p in paths]
    columns = [(p.rsplit("/", 1)[-1].rsplit(".", 1)[0], d) for p, d in datas]
    text = compare.table([(name, compare.numbers(d, metric)) for name, d in columns])
    notes = compare.grid_note(columns)
    return f"{metric}, side by side (r, τ as stored; see docs/sharpness.md):\n{text}" + \
        "".join(f"\nnote: {n}" for n in notes)
