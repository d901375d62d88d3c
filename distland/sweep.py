"""Orchestration of one surface job: prepare on rank 0, open the file, evaluate the grid, summarize.

The steps, in the order every rank runs them:
1. ``prepare`` (rank 0 only, via :meth:`Comm.on_root`): validate config, model, checkpoint, data, directions and
   resources (:mod:`distland.checks`), and decide create / resume — any problem is one clean error on every rank,
   with nothing written; only then is the output's directory made and its lock taken.
2. Every rank builds the model, loads θ* and the data, and picks its device and engine.
3. The file is opened (collectively with ``mpio``; by rank 0 alone when h5py has no MPI).
4. :func:`distland.schedule.run` evaluates the unfinished points; each unit is written as soon as it is done.
5. Rank 0 closes, re-reads the file, records the run's attributes (one atomic update) and prints a summary.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from . import __version__
from . import checks
from . import directions as dirs
from . import engine as engines
from . import schedule
from .checkpoint import apply_state_dict, load_state_dict, sha256
from .comm import Comm, get_comm
from .config import Config, to_yaml
from .data import load_split
from .evaluate import SurfaceEvaluator
from .grid import Grid
from .models import build_model
from .surface import (JobLock, SurfaceError, SurfaceSpec, SurfaceWriter, check_existing, h5py_has_mpi, metric_names,
                      remove_temporary, set_attrs)

INIT_SEED = 0  # without a checkpoint θ* is the model's initialisation under this seed, identical on every rank


@dataclass
class Plan:
    """What rank 0 decided in :func:`prepare`; sent to every rank."""

    spec: SurfaceSpec
    mode: str                 # create | resume
    pending: int              # points still to compute


@dataclass
class Summary:
    """What a finished (or resumed) job reports."""

    path: str
    grid: Tuple[int, ...]
    model: str
    points: int
    computed: int
    seconds: float
    minimum: Dict[str, Any]
    nonfinite: int
    ranks: int
    io: str
    stats: List[schedule.RankStats]
    sharpness: str = ""
    compiled: int = 0           # ranks that switched to a torch.compile'd forward pass
    precision: str = ""         # the measured error of an opt-in reduced precision

    def text(self) -> str:
        g = "×".join(map(str, self.grid))
        lines = [f"distland surface: {self.path}",
                 f"  model {self.model}, grid {g} ({self.points} points), {self.ranks} rank(s), io {self.io}",
                 f"  computed {self.computed} point(s) in {self.seconds:.1f} s"
                 + (f" ({self.computed / self.seconds:.2f} points/s)" if self.seconds > 0 and self.computed else "")]
        if self.compiled:
            lines.append(f"  torch.compile on {self.compiled} of {self.ranks} rank(s)")
        if self.precision:
            lines.append("  " + self.precision)
        if self.minimum:
            where = ", ".join(f"{k}={v:+.4g}" for k, v in self.minimum["at"].items())
            lines.append(f"  min {self.minimum['metric']} = {self.minimum['value']:.6g} at ({where})")
        if self.nonfinite:
            lines.append(f"  warning: {self.nonfinite} point(s) have NaN/inf loss (the model diverged there); they "
                         "are stored as such and shown as gaps in plots")
        if self.sharpness:
            lines.extend("  " + line for line in self.sharpness.splitlines())
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ building
def build_reference_model(cfg: Config) -> Tuple[torch.nn.Module, str]:
    """The model with θ* loaded (checkpoint or seeded initialisation) and the checkpoint's SHA-256."""
    torch.manual_seed(INIT_SEED)
    model = build_model(cfg.model, allow=cfg.plugins, **cfg.model_args)
    if cfg.checkpoint:
        apply_state_dict(model, load_state_dict(cfg.checkpoint), f"checkpoint {cfg.checkpoint!r}")
        digest = sha256(cfg.checkpoint)
    else:
        digest = f"init-seed-{INIT_SEED}"
    return model.eval(), digest


def load_data(cfg: Config) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    opts = dict(cfg.data.options)
    if cfg.data.root:
        opts["root"] = cfg.data.root
    return {s: load_split(cfg.data.name, s, cfg.data.max_samples, allow=cfg.plugins, **opts) for s in cfg.splits}


def data_digest(splits: Mapping[str, Tuple[torch.Tensor, torch.Tensor]]) -> str:
    """A content hash of the evaluation data (all targets, a strided sample of inputs): resuming onto other data
    is refused even when the path is the same."""
    h = hashlib.sha256()
    for name, (x, y) in splits.items():
        h.update(name.encode())
        h.update(str(tuple(x.shape)).encode())
        h.update(y.numpy().tobytes())
        flat = x.reshape(-1)
        h.update(flat[:: max(1, flat.numel() // 65536)].numpy().tobytes())
    return h.hexdigest()[:16]


def _maybe_train(cfg: Config) -> None:
    # `train:` names the training config that produces the checkpoint (the demo uses it): train once, if missing.
    if cfg.train and cfg.checkpoint and not Path(cfg.checkpoint).exists():
        from .config import load
        from .presets import HERE as PRESETS
        from .train import TrainConfig, train

        path = Path(cfg.train)
        if not path.exists() and not path.is_absolute() and (PRESETS / path).is_file():
            path = PRESETS / path  # a built-in preset's name (the demo)
        print(f"distland: {cfg.checkpoint} does not exist; training it first with {path}", file=sys.stderr)
        produced = train(load(TrainConfig, path))
        if not Path(cfg.checkpoint).exists():
            raise SurfaceError(f"training with {cfg.train} wrote {produced}, not the checkpoint {cfg.checkpoint}; "
                               "make `checkpoint` point at the training run's final.pt")


def prepare(cfg: Config, overwrite: bool, keep: Optional[Dict[str, Any]] = None) -> Plan:
    """Rank-0 work before the sweep; every check that can fail on bad input happens here. The model with θ*
    and the decoded data go into ``keep`` (when given), so rank 0 does not build them a second time."""
    _maybe_train(cfg)
    grid = Grid.from_config(cfg.grid)
    model, ckpt_digest = build_reference_model(cfg)
    reference = dirs.reference_weights(model, cfg.directions.type)
    target = None
    target_digest = ""
    if cfg.directions.kind == "interp":
        target = load_state_dict(cfg.directions.target)
        check = build_model(cfg.model, allow=cfg.plugins, **cfg.model_args)
        apply_state_dict(check, target, f"directions.target {cfg.directions.target!r}")
        target = dirs.reference_weights(check, cfg.directions.type)
        target_digest = sha256(cfg.directions.target)
    splits = load_data(cfg)
    checks.check_data(splits, cfg.data.name)
    device = engines.pick_device(cfg.engine.device, 0)  # a GPU asked for but absent fails here, before any write
    checks.check_model_on_data(model, splits, cfg.model, cfg.data.name, device)
    identity = {
        "model": cfg.model, "model_args": cfg.model_args, "checkpoint_sha256": ckpt_digest,
        "data": {"name": cfg.data.name, "split": cfg.data.split, "max_samples": cfg.data.max_samples,
                 "options": cfg.data.options, "digest": data_digest(splits)},
        "directions": {**dataclasses.asdict(cfg.directions), "target": target_digest,
                       "file": sha256(cfg.directions.file) if cfg.directions.file else ""},
        "grid": {"x": list(map(float, cfg.grid.x)), "y": None if cfg.grid.y is None else list(map(float, cfg.grid.y))},
    }
    if cfg.engine.precision != "fp32":
        # Reduced precision changes the numbers (bf16 by ~1e-3): one file must not mix it with exact points.
        identity["precision"] = cfg.engine.precision
    spec = SurfaceSpec(grid=grid, metrics=metric_names(cfg.splits), identity=identity, attrs={
        "config": to_yaml(cfg), "checkpoint_sha256": ckpt_digest, "seed": cfg.directions.seed,
        "model": cfg.model, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ndim": grid.ndim,
    })
    mode = check_existing(cfg.output, spec, overwrite)
    if mode == "create":
        made, _ = dirs.build(reference, cfg.directions.kind, cfg.directions.norm, cfg.directions.ignore,
                             cfg.directions.seed, grid.ndim, cfg.directions.same_dir, cfg.directions.file, target)
        spec.directions = [dirs.to_numpy(d) for d in made]
        pending = grid.size
        # An existing file (--overwrite) is replaced only when the new one is complete (see SurfaceWriter.open).
    else:
        import h5py

        with h5py.File(cfg.output, "r", locking=False) as f:
            if any(f"directions/{a}" not in f for a in "xy"[:grid.ndim]):
                raise SurfaceError(f"{cfg.output} is a damaged distland file (its directions are missing); move it "
                                   "away or use --overwrite to replace it")
            stored = [{k: np.asarray(f[f"directions/{a}/{k}"][()]) for k in f[f"directions/{a}"]}
                      for a in "xy"[:grid.ndim]]
            pending = int(np.count_nonzero(f["done"][()] == 0))
        for d in stored:
            dirs.check_compatible(dirs.from_numpy(d), reference, f"directions stored in {cfg.output}")
        spec.directions = [{k: d[k] for k in reference} for d in stored]
    checks.check_coordinates(grid, reference, spec.directions)
    checks.check_resources(grid, len(spec.metrics), sum(a.nbytes for d in spec.directions for a in d.values()),
                           cfg.output, mode == "create")
    if keep is not None:
        keep.update(model=model, splits=splits)
    return Plan(spec=spec, mode=mode, pending=pending)


# ------------------------------------------------------------------------------------------------ the job
def run_surface(cfg: Config, overwrite: bool = False, verbose: bool = False,
                comm: Optional[Comm] = None) -> Optional[Summary]:
    """Compute the surface of ``cfg`` on every rank of ``comm``; returns the summary on rank 0."""
    comm = comm or get_comm(cfg.sweep.mpi)
    real = os.path.realpath(cfg.output)
    if real != os.path.abspath(cfg.output):
        cfg = dataclasses.replace(cfg, output=real)  # a symlinked output: write (and replace) what it points to
    lock = JobLock(cfg.output)
    built: Dict[str, Any] = {}  # rank 0's model and data from prepare (never broadcast: ranks load their own)
    try:
        plan = comm.on_root(lambda: _accept(cfg, overwrite, built, lock))
        try:
            return _sweep(cfg, plan, comm, verbose, built)
        except BaseException as e:  # noqa: BLE001 - past this point a failure on one rank must stop all of them
            if comm.size > 1 and not isinstance(e, (SystemExit, FinishError)):
                comm.fail(e)
            raise
    finally:
        lock.release()


class FinishError(SurfaceError):
    """Rank 0 could not record the run's attributes after every point was saved (the other ranks are done)."""


def _accept(cfg: Config, overwrite: bool, built: Dict[str, Any], lock: JobLock) -> Plan:
    # Everything is checked before the job takes its lock or makes a directory: a refused job leaves no trace.
    lock.check_free()  # a busy output is refused at once, before minutes of checks
    plan = prepare(cfg, overwrite, built)
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    if check_existing(cfg.output, plan.spec, overwrite) != plan.mode:
        raise SurfaceError(f"{cfg.output} changed while this job was being prepared (another job?); rerun")
    if plan.mode == "resume":
        remove_temporary(cfg.output)  # a temporary left by a creation killed before its rename
    return plan


def _io_mode(cfg: Config, comm: Comm) -> str:
    if comm.size == 1:
        return "serial"
    if cfg.sweep.io == "root":
        return "root"
    if h5py_has_mpi():
        return "mpio"
    if cfg.sweep.io == "mpio":
        raise SurfaceError("sweep.io is 'mpio' but h5py was built without MPI; rebuild h5py against parallel HDF5 "
                           "(see .ci/install.sh) or set sweep.io: auto")
    return "root"


def _sweep(cfg: Config, plan: Plan, comm: Comm, verbose: bool, built: Dict[str, Any]) -> Optional[Summary]:
    t_start = time.monotonic()
    io = _io_mode(cfg, comm)
    if io == "root" and comm.is_root and cfg.sweep.io != "root":
        print("distland: warning: h5py has no MPI support; rank 0 writes every result (same file, slower). "
              "Build h5py against parallel HDF5 for parallel writes.", file=sys.stderr)
    grid = plan.spec.grid
    model = built["model"] if "model" in built else build_reference_model(cfg)[0]
    splits = built["splits"] if "splits" in built else load_data(cfg)
    sample = next(iter(splits.values()))[0]
    activations = 0 if cfg.data.batch_size else engines.largest_activation(model, sample)  # sizes the CPU batch
    eng = engines.choose(cfg.engine, comm.local_rank, comm.local_size, cfg.data.batch_size, sample.dim(),
                         activation_bytes=activations)
    engines.apply_process_settings(eng)
    reference = dirs.reference_weights(model, cfg.directions.type)
    directions = [dirs.from_numpy(d) for d in plan.spec.directions]
    evaluator = SurfaceEvaluator(model, reference, directions, splits, eng)
    device_line = f"rank {comm.rank} host {comm.host} device {eng.device} threads {eng.threads}"
    devices = comm.allgather(device_line)
    engine_json = json.dumps(dataclasses.asdict(eng), sort_keys=True)
    run_attrs = {"devices": devices, "engine": comm.bcast(engine_json), "io": io, "nranks": comm.size,
                 "last_run": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "distland_version": __version__}
    if verbose:
        print(f"distland: {device_line} engine {engine_json}", file=sys.stderr)

    writer: Optional[SurfaceWriter] = None
    if io == "mpio":
        writer = SurfaceWriter.open(cfg.output, plan.spec, plan.mode, run_attrs, comm.mpi_comm)
    elif comm.is_root:
        writer = SurfaceWriter.open(cfg.output, plan.spec, plan.mode, run_attrs)
    queue = writer.pending() if comm.is_root and writer is not None else []
    metrics = plan.spec.metrics

    # engine.compile: auto is decided once per rank, from its steady cost per point: the least of its first
    # AUTO_COMPILE_POINTS (the first carries one-time start-up costs, and one slow timing on a loaded machine
    # must not buy 5-25 s of compilation for a cheap model). Never on the coordinator of a multi-rank job: while
    # it compiled it could hand out no work.
    probe: Dict[str, Any] = {"times": [] if eng.compile == "auto" and (comm.size == 1 or not comm.is_root) else None}

    def evaluate(unit: List[int], poll: Any) -> Dict[str, np.ndarray]:
        rows = []
        for p in unit:
            t0 = time.perf_counter()
            rows.append(evaluator.evaluate(grid.coords(p), poll))
            times = probe["times"]
            if times is not None:
                times.append(time.perf_counter() - t0)
                if len(times) >= engines.AUTO_COMPILE_POINTS or len(times) >= plan.pending:
                    probe["times"] = None
                    if engines.worth_compiling(min(times), plan.pending // comm.size - len(times)):
                        evaluator.compile_model()
        return {m: np.array([r[m] for r in rows], dtype=np.float64) for m in metrics}

    progress = None
    if comm.is_root:
        progress = schedule.Progress(total=grid.size, done=grid.size - len(queue),
                                     report=_report if cfg.sweep.progress else None,
                                     every=0.5 if sys.stderr.isatty() else 10.0)
    try:
        stats = schedule.run(comm, queue, evaluate, writer.write if writer is not None else None,
                             root_writes=(io == "root"), progress=progress, fixed_chunk=cfg.sweep.chunk)
    except BaseException:
        if comm.size == 1 and writer is not None:
            writer.close()  # serial: keep what is finished; under MPI the caller aborts every rank
        raise
    all_stats = comm.allgather(stats[0])
    compiled = sum(comm.allgather(int(evaluator.compiled)))
    check: Dict[str, float] = {}
    if comm.is_root and eng.precision != "fp32" and queue:
        # Opt-in reduced precision reports its own error, at θ* and at the grid's far corner.
        check = evaluator.precision_check([tuple(0.0 for _ in grid.shape), grid.coords(grid.size - 1)])
    if writer is not None:
        writer.close()  # collective under mpio
    if not comm.is_root:
        return None
    # This run's attributes are recorded once, after the sweep, in one atomic update (see surface.set_attrs).
    resolved: Dict[str, Any] = {**(run_attrs if plan.mode == "resume" else {}), "compiled_ranks": compiled}
    if check:
        resolved["precision_check"] = json.dumps({"precision": eng.precision, **check}, sort_keys=True)
    if cfg.sweep.progress and sys.stderr.isatty():
        sys.stderr.write("\n")
    summary = summarize(cfg, grid, len(queue), time.monotonic() - t_start, comm.size, io, all_stats, resolved)
    summary.compiled = compiled
    if check:
        summary.precision = (f"precision {eng.precision}: loss within {check['max_rel_loss_error']:.1e} (relative) "
                             f"and accuracy within {check['max_acc_diff']:.2g} points of float32 at θ* and the "
                             "grid's last point")
    return summary


def _report(p: schedule.Progress) -> None:
    frac = p.done / p.total if p.total else 1.0
    rate = p.rate
    eta = (p.total - p.done) / rate if rate > 0 else float("nan")
    line = (f"[{p.done:>{len(str(p.total))}}/{p.total}] {100 * frac:5.1f}%  {rate:7.2f} points/s  "
            f"ETA {_hms(eta)}")
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line)
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _hms(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def summarize(cfg: Config, grid: Grid, computed: int, seconds: float, ranks: int, io: str,
              stats: List[schedule.RankStats], attrs: Optional[Mapping[str, Any]] = None) -> Summary:
    """Read the finished file back, add the sharpness report (when complete) to ``attrs`` and store them."""
    from .surface import read

    data = read(cfg.output)
    metric = f"{cfg.splits[0]}_loss"
    values = data.metrics[metric]
    finite = np.isfinite(values) & data.done
    minimum: Dict[str, Any] = {}
    if finite.any():
        flat = np.where(finite, values, np.inf)
        idx = np.unravel_index(int(np.argmin(flat)), flat.shape)
        at = {"x": float(grid.x[idx[0]])}
        if grid.y is not None:
            at["y"] = float(grid.y[idx[1]])
        minimum = {"metric": metric, "value": float(flat[idx]), "at": at}
    nonfinite = int(np.count_nonzero(data.done & ~np.isfinite(values)))
    sharpness = ""
    update = dict(attrs or {})
    prefix = ""
    if data.complete:
        from .analysis import format_report, sharpness_report
        from .analysis.sharpness import PREFIX, report_attrs

        report = sharpness_report(data, metric)
        update.update(report_attrs(report, metric))
        prefix = PREFIX
        sharpness = format_report(report, metric)
    if update:
        try:
            set_attrs(cfg.output, update, replace_prefix=prefix)
        except SurfaceError as e:
            raise FinishError(str(e)) from None
    return Summary(cfg.output, grid.shape, cfg.model, grid.size, computed, seconds, minimum, nonfinite, ranks, io,
                   stats, sharpness)
