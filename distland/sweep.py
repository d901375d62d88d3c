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

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from . import __version__
from . import checks
from . import directions as dirs
from . import engine as engines
from . import quantities as quants
from . import schedule
from .checkpoint import CheckpointError, apply_state_dict, load_state_dict, sha256
from .comm import Comm, get_comm
from .config import Config, to_yaml
from .data import load_splits
from .grid import Grid
from .losses import resolve as resolve_loss
from .models import build_model
from .surfacefile import (JobLock, SurfaceError, SurfaceSpec, SurfaceWriter, check_existing, h5py_has_mpi,
                      remove_temporary, set_attrs, stored_progress)
from .train import ensure_checkpoint

INIT_SEED = 0  # without a checkpoint θ* is the model's initialisation under this seed, identical on every rank


@dataclass
class Plan:
    """What rank 0 decided in :func:`prepare`; sent to every rank."""

    spec: SurfaceSpec
    mode: str                 # create | resume
    pending: Dict[str, int]   # per quantity: points still to compute


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
    convergence: str = ""       # convergence at θ* (analysis.convergence), with a warning when not a minimizer
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
        if self.convergence:
            lines.extend("  " + line for line in self.convergence.splitlines())
        if self.sharpness:
            lines.extend("  " + line for line in self.sharpness.splitlines())
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ building
def build_reference_model(cfg: Config) -> Tuple[torch.nn.Module, str]:
    """The model with θ* loaded (checkpoint or seeded initialisation) and the checkpoint's SHA-256."""
    torch.manual_seed(INIT_SEED)
    model = build_model(cfg.model, allow=cfg.plugins, **cfg.model_args)
    if cfg.checkpoint:
        train_cfg = getattr(cfg, "train", None)
        if train_cfg and not Path(cfg.checkpoint).exists():
            # The config names the run that writes this checkpoint: that run is the fix, not an empty path
            # (which would silently evaluate an untrained net).
            raise CheckpointError(f"checkpoint {cfg.checkpoint!r} not found; train it first: distland train "
                                  f"{train_cfg} (or run `distland surface` on this config, which trains it)")
        apply_state_dict(model, load_state_dict(cfg.checkpoint), f"checkpoint {cfg.checkpoint!r}")
        digest = sha256(cfg.checkpoint)
    else:
        digest = f"init-seed-{INIT_SEED}"
    return model.eval(), digest


def load_data(cfg: Config) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    return load_splits(cfg.data, cfg.splits, class_targets=":" not in cfg.loss, allow=cfg.plugins)


def geometric_keys(cfg: Config, reference: Mapping[str, torch.Tensor]) -> List[str]:
    """The tensors a job moves geometrically: BatchNorm running variances on the lines and planes between models
    (interp, plane), never to zero or below (see :func:`distland.directions.variance_keys`)."""
    return dirs.variance_keys(reference) if cfg.directions.between_models else []


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


def state_digest(model: torch.nn.Module) -> str:
    """A content hash of an in-memory model's state_dict (names, shapes, dtypes, values): it stands in for the
    checkpoint's SHA-256, so a file resumes only for the same weights."""
    h = hashlib.sha256()
    for key, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "state-sha256-" + h.hexdigest()


def _load_target(cfg: Config, key: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """``directions.<key>`` (a checkpoint of the same model) as the job's reference tensors, and its SHA-256."""
    path = getattr(cfg.directions, key)
    if not Path(path).is_file():
        raise CheckpointError(f"directions.{key} {path!r} not found: train that model first "
                              "(`distland train` with the config whose out_dir holds it; `distland reproduce DIR` "
                              "trains every missing checkpoint of a config set)")
    check = build_model(cfg.model, allow=cfg.plugins, **cfg.model_args)
    apply_state_dict(check, load_state_dict(path), f"directions.{key} {path!r}")
    return dirs.reference_weights(check, cfg.directions.resolved_type()), sha256(path)


def prepare(cfg: Config, overwrite: bool, keep: Optional[Dict[str, Any]] = None,
            model: Optional[torch.nn.Module] = None,
            splits: Optional[Dict[str, Tuple[torch.Tensor, torch.Tensor]]] = None,
            target_model: Optional[torch.nn.Module] = None) -> Plan:
    """Rank-0 work before the sweep; every check that can fail on bad input happens here. The model with θ*
    and the decoded data go into ``keep`` (when given), so rank 0 does not build them a second time.
    ``model``, ``splits`` and ``target_model`` (the Python API's in-memory objects) replace building the model,
    loading the data and loading ``directions.target``; their content hashes enter the job's identity."""
    grid = Grid.from_config(cfg.grid)
    model, ckpt_digest = build_reference_model(cfg) if model is None else (model, state_digest(model))
    reference = dirs.reference_weights(model, cfg.directions.resolved_type())
    target = None
    target_digest = ""
    if cfg.directions.kind == "interp" and target_model is not None:
        target = dirs.reference_weights(target_model, cfg.directions.resolved_type())
        dirs.check_compatible(target, reference, "the interpolation target model")
        target_digest = state_digest(target_model)
    elif cfg.directions.between_models:
        target, target_digest = _load_target(cfg, "target")
    target2 = None
    target2_digest = ""
    if cfg.directions.kind == "plane":
        target2, target2_digest = _load_target(cfg, "target2")
    splits = load_data(cfg) if splits is None else splits
    criterion = resolve_loss(cfg.loss, cfg.plugins)
    checks.check_data(splits, cfg.data.name, criterion.class_targets)
    device = engines.pick_device(cfg.engine.device, 0)  # a GPU asked for but absent fails here, before any write
    checks.check_model_on_data(model, splits, cfg.model, cfg.data.name, device, criterion)
    identity = {
        "model": cfg.model, "model_args": cfg.model_args, "checkpoint_sha256": ckpt_digest,
        "data": {"name": cfg.data.name, "split": cfg.data.split, "max_samples": cfg.data.max_samples,
                 "options": cfg.data.options, "digest": data_digest(splits),
                 # only when set, so files made before these keys existed still resume
                 **({"subset": cfg.data.subset, "subset_seed": cfg.data.subset_seed} if cfg.data.subset else {}),
                 **({"split_index": list(cfg.data.split_index)} if cfg.data.split_index else {})},
        # The resolved type, so a random surface made before `auto` existed (type: weights) still resumes.
        "directions": {**dataclasses.asdict(cfg.directions), "type": cfg.directions.resolved_type(),
                       "target": target_digest, **({"target2": target2_digest} if target2_digest else {}),
                       "file": sha256(cfg.directions.file) if cfg.directions.file else ""},
        "grid": {"x": list(map(float, cfg.grid.x)), "y": None if cfg.grid.y is None else list(map(float, cfg.grid.y))},
    }
    if cfg.grid.extra_axes():   # only K-D jobs name more axes, so 1-D and 2-D files made before still resume
        identity["grid"]["more"] = [list(map(float, a)) for a in cfg.grid.extra_axes()]
    if geometric_keys(cfg, reference):
        # Files from before running variances were interpolated geometrically must not be resumed.
        identity["directions"]["bn_variance"] = "geometric"
    if cfg.engine.precision != "fp32":
        # Reduced precision changes the numbers (bf16 by ~1e-3): one file must not mix it with exact points.
        identity["precision"] = cfg.engine.precision
    quantities = quants.build(cfg.quantities, cfg)
    spec = SurfaceSpec(grid=grid, quantities=[q.layout() for q in quantities], identity=identity, attrs={
        "config": to_yaml(cfg), "checkpoint_sha256": ckpt_digest, "seed": cfg.directions.seed,
        "model": cfg.model, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ndim": grid.ndim,
    })
    mode = check_existing(cfg.output, spec, overwrite)
    if mode == "create":
        made = dirs.build(reference, cfg.directions.kind, cfg.directions.norm, cfg.directions.ignore,
                          cfg.directions.seed, grid.ndim, cfg.directions.same_dir, cfg.directions.file, target,
                          target2, cfg.directions.ynorm, cfg.directions.yignore)
        spec.directions = [dirs.to_numpy(d) for d in made]
        pending = {q.name: grid.size for q in spec.quantities}
        # An existing file (--overwrite) is replaced only when the new one is complete (see SurfaceWriter.open).
    else:
        stored, pending = stored_progress(cfg.output, spec)
        for d in stored:
            dirs.check_compatible(dirs.from_numpy(d), reference, f"directions stored in {cfg.output}")
        spec.directions = [{k: d[k] for k in reference} for d in stored]
    checks.check_coordinates(grid, reference, spec.directions)
    checks.check_resources(grid, sum(len(q.datasets) for q in spec.quantities),
                           sum(a.nbytes for d in spec.directions for a in d.values()), cfg.output, mode == "create")
    if keep is not None:
        keep.update(model=model, splits=splits)
    return Plan(spec=spec, mode=mode, pending=pending)


# ------------------------------------------------------------------------------------------------ the job
def run_surface(cfg: Config, overwrite: bool = False, verbose: bool = False,
                comm: Optional[Comm] = None, model: Optional[torch.nn.Module] = None,
                splits: Optional[Dict[str, Tuple[torch.Tensor, torch.Tensor]]] = None,
                target_model: Optional[torch.nn.Module] = None,
                report: Optional[Callable[[schedule.Progress], None]] = None) -> Optional[Summary]:
    """Compute the surface of ``cfg`` on every rank of ``comm``; returns the summary on rank 0.

    ``model`` (θ*), ``splits`` and ``target_model`` are in-memory objects from the Python API (:mod:`distland.api`),
    given on every rank, that replace what ``cfg`` would build; ``report`` replaces the progress line."""
    comm = comm or get_comm(cfg.sweep.mpi)
    real = os.path.realpath(cfg.output)
    if real != os.path.abspath(cfg.output):
        cfg = dataclasses.replace(cfg, output=real)  # a symlinked output: write (and replace) what it points to
    lock = JobLock(cfg.output)
    built: Dict[str, Any] = {}  # rank 0's model and data from prepare (never broadcast: ranks load their own)
    given = {k: v for k, v in (("model", model), ("splits", splits)) if v is not None}
    try:
        plan = comm.on_root(lambda: _accept(cfg, overwrite, built, lock, model, splits, target_model))
        built.update(given)  # every rank evaluates the objects it was given
        try:
            return _sweep(cfg, plan, comm, verbose, built, report)
        except BaseException as e:  # noqa: BLE001 - past this point a failure on one rank must stop all of them
            if comm.size > 1 and not isinstance(e, (SystemExit, FinishError)):
                comm.fail(e)
            raise
    finally:
        lock.release()


class FinishError(SurfaceError):
    """Rank 0 could not record the run's attributes after every point was saved (the other ranks are done)."""


def _accept(cfg: Config, overwrite: bool, built: Dict[str, Any], lock: JobLock, model: Optional[torch.nn.Module],
            splits: Optional[Dict[str, Tuple[torch.Tensor, torch.Tensor]]],
            target_model: Optional[torch.nn.Module]) -> Plan:
    # Everything is checked before the job takes its lock or makes a directory: a refused job leaves no trace.
    lock.check_free()  # a busy output is refused at once, before minutes of checks
    if model is None:
        ensure_checkpoint(cfg)
    plan = prepare(cfg, overwrite, built, model, splits, target_model)
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


def _sweep(cfg: Config, plan: Plan, comm: Comm, verbose: bool, built: Dict[str, Any],
           report: Optional[Callable[[schedule.Progress], None]] = None) -> Optional[Summary]:
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
    reference = dirs.reference_weights(model, cfg.directions.resolved_type())
    directions = [dirs.from_numpy(d) for d in plan.spec.directions]
    eng = dataclasses.replace(eng, ranks_on_device=engines.count_ranks_on_device(eng, comm))
    log_keys = geometric_keys(cfg, reference)
    # Every rank starts the evaluator of each quantity that still has points to compute.
    todo = [q for q in quants.build(cfg.quantities, cfg) if plan.pending[q.name]]
    evaluators = [q.start(quants.Context(model, reference, directions, splits, eng, comm.size > 1 and comm.is_root,
                                         plan.pending[q.name] // comm.size, log_keys)) for q in todo]
    resolved = next((e.engine for e in evaluators if e.engine is not None), eng)
    device_line = engines.device_line(resolved, comm.rank, comm.host)
    devices = comm.allgather(device_line)
    engine_json = json.dumps(dataclasses.asdict(resolved), sort_keys=True)
    run_attrs = {"devices": devices, "engine": comm.bcast(engine_json), "io": io, "nranks": comm.size,
                 "last_run": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "distland_version": __version__}
    if verbose:
        print(f"distland: {device_line} engine {engine_json}", file=sys.stderr)

    writer: Optional[SurfaceWriter] = None
    if io == "mpio":
        writer = SurfaceWriter.open(cfg.output, plan.spec, plan.mode, run_attrs, comm.mpi_comm)
    elif comm.is_root:
        writer = SurfaceWriter.open(cfg.output, plan.spec, plan.mode, run_attrs)
    stats: List[schedule.RankStats] = []
    computed = 0
    with writer if writer is not None else contextlib.nullcontext():
        try:
            for q, ev in zip(todo, evaluators):
                stats.extend(_run_quantity(cfg, comm, grid, q.name, ev, writer, io, report))
        except BaseException:
            if comm.size > 1 and writer is not None and writer.parallel:
                writer.abandon()  # under MPI the caller aborts every rank: a collective close would hang
            raise
        facts: Dict[str, int] = {}
        for ev in evaluators:
            for key, value in ev.facts().items():
                facts[key] = facts.get(key, 0) + sum(comm.allgather(value))
        notes: Dict[str, str] = {}
        lines: List[str] = []
        if comm.is_root:
            computed = sum(plan.pending[q.name] for q in todo)
            for ev in evaluators:
                attrs, text = ev.finish(grid.coords(grid.size - 1))
                notes.update(attrs)
                lines.extend(text)
    if not comm.is_root:
        return None
    # This run's attributes are recorded once, after the sweep, in one atomic update (see surface.set_attrs).
    resolved_attrs: Dict[str, Any] = {**(run_attrs if plan.mode == "resume" else {}), **facts, **notes,
                                      **_convergence_attrs(cfg, model, splits, resolved)}
    if cfg.sweep.progress and sys.stderr.isatty():
        sys.stderr.write("\n")
    summary = summarize(cfg, grid, computed, time.monotonic() - t_start, comm.size, io, stats, resolved_attrs)
    summary.compiled = facts.get("compiled_ranks", 0)
    summary.precision = "\n".join(lines)
    return summary


def _run_quantity(cfg: Config, comm: Comm, grid: Grid, name: str, ev: quants.PointEvaluator,
                  writer: Optional[SurfaceWriter], io: str,
                  report: Optional[Callable[[schedule.Progress], None]] = None) -> List[schedule.RankStats]:
    """One pass of the scheduler over the points ``name`` has not done; every rank's stats on rank 0."""
    queue = writer.pending(name) if comm.is_root and writer is not None else []
    progress = None
    if comm.is_root:
        progress = schedule.Progress(total=grid.size, done=grid.size - len(queue),
                                     report=(report or schedule.report_line) if cfg.sweep.progress else None,
                                     every=0.5 if sys.stderr.isatty() or report else 10.0, label=name)
    stats = schedule.run(comm, queue, lambda unit, poll: ev.evaluate([grid.coords(p) for p in unit], poll),
                         writer.writer(name) if writer is not None else None, root_writes=(io == "root"),
                         progress=progress, fixed_chunk=cfg.sweep.chunk)
    return comm.allgather(stats[0])


def _convergence_attrs(cfg: Config, model: torch.nn.Module, splits: Dict[str, Any], eng: Any) -> Dict[str, Any]:
    """Rank 0, after the sweep: how converged θ* is (see :mod:`distland.analysis.convergence`), as attributes."""
    from .analysis import convergence

    try:
        return convergence.to_attrs(convergence.at_centre(cfg, model, splits, eng.batch_size, eng.device))
    except Exception as e:  # noqa: BLE001 - a diagnostic must never cost the finished surface
        print(f"distland: warning: convergence at θ* not measured ({type(e).__name__}: {e})", file=sys.stderr)
        return {}


def summarize(cfg: Config, grid: Grid, computed: int, seconds: float, ranks: int, io: str,
              stats: List[schedule.RankStats], attrs: Optional[Mapping[str, Any]] = None) -> Summary:
    """Read the finished file back, add the sharpness report (when complete) to ``attrs`` and store them in one
    atomic update."""
    from .analysis import convergence
    from .surfacefile import read

    data = read(cfg.output)
    update = dict(attrs or {})
    metric = f"{cfg.splits[0]}_loss"
    summary = Summary(cfg.output, grid.shape, cfg.model, grid.size, computed, seconds, {}, 0, ranks, io, stats)
    prefix = ""
    if metric in data.metrics:  # else a file of other quantities only: nothing to say about the loss
        values = data.metrics[metric]
        finite = np.isfinite(values) & data.done
        if finite.any():
            flat = np.where(finite, values, np.inf)
            idx = np.unravel_index(int(np.argmin(flat)), flat.shape)
            at = {name: float(a[i]) for name, a, i in zip(grid.names, grid.axes, idx)}
            summary.minimum = {"metric": metric, "value": float(flat[idx]), "at": at}
        summary.nonfinite = int(np.count_nonzero(data.done & ~np.isfinite(values)))
        if data.complete:
            from .analysis import format_report, sharpness_report
            from .analysis.sharpness import PREFIX, report_attrs

            report = sharpness_report(data, metric)
            update.update(report_attrs(report, metric))
            prefix = PREFIX
            summary.sharpness = format_report(report, metric)
        summary.convergence = convergence.format_report(convergence.read({**data.attrs, **update}))
    if update:
        try:
            set_attrs(cfg.output, update, replace_prefix=prefix)
        except SurfaceError as e:
            raise FinishError(str(e)) from None
    return summary
