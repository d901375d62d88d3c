"""The surface file: one HDF5 file per job, written by every rank, readable by the paper authors' tool's users.

Layout (``LAYOUT``): ``xcoordinates`` (nx,), ``ycoordinates`` (ny,) for 2-D, and for a K-D grid one more per axis,
named by :func:`distland.grid.axis_name` (``zcoordinates``, then ``axis4coordinates``, …); the datasets of every
per-point quantity the job computes (:mod:`distland.quantities`), each of shape (nx, ny) with [i, j] ↔ (x_i, y_j),
of rank K, (nx, ny, nz, …), with [i, j, k, …] ↔ (x_i, y_j, z_k, …), or (nx,) for 1-D — for the loss quantity, per
split ``<split>_loss`` (float64, mean over samples) and ``<split>_acc`` (percent); each quantity has its own uint8
mask of finished points (``done`` for the loss, ``<name>_done`` for the others, named by each dataset's
``done_mask`` attribute) — a diverged point holds inf/NaN and is done; group ``directions/x`` (and ``y``, ``z``, …:
one per axis) with the normalized direction actually used, one dataset per state_dict key.
Root attributes: ``config`` (resolved YAML), ``identity`` (JSON of what determines the values), per quantity
``quantity.<name>`` (JSON of its own settings), ``distland_version``, ``checkpoint_sha256``, ``seed``,
``created``, and per run ``devices``, ``engine``, ``io``.

Parallel writing follows h5py's rule: the file, every dataset and every attribute are created collectively with
identical arguments; afterwards each rank writes its finished points independently. Datasets are contiguous,
allocated early and pre-filled, so no HDF5 metadata changes during the sweep: a killed job leaves a readable file
whose ``done`` points are all correct (values are written before their ``done`` flags). A file is created under a
temporary name and renamed into place once complete; later attribute updates (:func:`set_attrs`) go through a
copy that replaces the file only when complete, so a full disk or a kill never leaves an unreadable file.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import __version__
from .grid import Axes, Grid, axis_name, segments

LAYOUT = 1
DONE_ATTR = "done_mask"   # on every per-point dataset: the name of the mask that says which of its points are done
LOSS_SUFFIXES = ("_loss", "_acc")        # the loss quantity's datasets, also in files without DONE_ATTR
LEGACY_EXTRA = ("max_eig", "min_eig")    # the authors' Hessian datasets


class SurfaceError(ValueError):
    """A surface file cannot be used as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Dataset:
    """One per-point dataset of a quantity: grid-shaped, pre-filled with ``fill`` until its points are done."""

    name: str
    dtype: str = "f8"
    fill: float = float("nan")


@dataclass(frozen=True)
class QuantityLayout:
    """What a per-point quantity keeps in the file: its datasets, its own ``done`` mask and the settings that
    determine its values (``identity``: a file computed with other settings is not resumed)."""

    name: str
    datasets: Tuple[Dataset, ...]
    identity: Mapping[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> str:
        # The loss keeps the mask the paper authors' readers and distland 0.1 files know as ``done``.
        return "done" if self.name == "loss" else f"{self.name}_done"

    @property
    def names(self) -> List[str]:
        return [d.name for d in self.datasets]


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is a hard dependency
        raise SurfaceError("h5py is not installed: pip install h5py") from e
    return h5py


def h5py_has_mpi() -> bool:
    """Whether this h5py was built against parallel HDF5 (the ``mpio`` driver)."""
    return bool(_h5py().get_config().mpi)


# ------------------------------------------------------------------------------------------------ job spec
@dataclass
class SurfaceSpec:
    """Everything a job puts into a new file; identical on every rank (creation is collective)."""

    grid: Grid
    quantities: List[QuantityLayout]
    identity: Dict[str, Any]
    attrs: Dict[str, Any]
    directions: List[Dict[str, np.ndarray]] = field(default_factory=list)

    def quantity(self, name: str) -> QuantityLayout:
        return next(q for q in self.quantities if q.name == name)


def identity_text(identity: Mapping[str, Any]) -> str:
    return json.dumps(identity, sort_keys=True, default=str)


def check_existing(path: str, spec: SurfaceSpec, overwrite: bool) -> str:
    """Decide what to do with ``path``: ``"create"`` or ``"resume"``; run on one rank before the collective open.

    A file made by a different job (grid, directions, model, checkpoint, data) is refused unless ``overwrite``;
    a file whose creation never finished (no results possible) is recreated.
    """
    p = Path(path)
    if not p.exists():
        return "create"
    if overwrite:
        return "create"
    h5py = _h5py()
    try:
        with h5py.File(p, "r", locking=False) as f:
            if f.attrs.get("distland_layout") is None:
                if "distland_creating" in f.attrs:
                    return "create"  # our creation (before 0.2: in place) was interrupted; no result was written
                if "xcoordinates" in f and "done" not in f:
                    raise SurfaceError(f"{path} was written by another tool (no 'done' mask); convert it or choose "
                                       "another output (or --overwrite to replace it)")
                raise SurfaceError(f"{path} is not a distland surface file; move it away or use --overwrite "
                                   "to replace it")
            # A quantity's datasets come with its mask: one without the other is a damaged file.
            missing = []
            for q in spec.quantities:
                if q.done in f:
                    missing += [k for k in q.names if k not in f]
                elif any(k in f for k in q.names):
                    missing.append(q.done)
            if missing or not any(k == "done" or k.endswith("_done") for k in f):
                raise SurfaceError(f"{path} is a damaged distland file (missing {', '.join(missing) or 'done'}); "
                                   "move it away or use --overwrite to replace it")
            try:
                old = json.loads(str(f.attrs.get("identity", "{}")))
                stored = {q.name: json.loads(str(f.attrs.get(f"quantity.{q.name}", "{}")))
                          for q in spec.quantities if q.done in f}
            except ValueError:
                old, stored = {"identity": "unreadable"}, {}
            n_done = int(np.count_nonzero(f["done"][()])) if "done" in f else 0
    except OSError as e:
        raise SurfaceError(f"{path} exists but is not a readable HDF5 file ({e}); move it away or use --overwrite "
                           "to replace it") from None
    new = json.loads(identity_text(spec.identity))
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        details = "; ".join(f"{k}: file {old.get(k)!r} vs now {new.get(k)!r}" for k in diff[:4])
        raise SurfaceError(f"{path} holds a different job ({n_done} finished points); differing: {details}. "
                           "Use another output path, or --overwrite to discard it")
    for q in spec.quantities:
        now = json.loads(identity_text(q.identity))
        if q.name in stored and stored[q.name] != now:
            raise SurfaceError(f"{path} holds {q.name} computed with other settings (file {stored[q.name]} vs now "
                               f"{now}); use the file's settings, another output path, or --overwrite to discard it")
    return "resume"


def stored_progress(path: str, spec: SurfaceSpec) -> Tuple[List[Dict[str, np.ndarray]], Dict[str, int]]:
    """For a job that resumes ``path``: the directions stored in it, and each quantity's number of points still
    to compute (all of them for a quantity the file does not hold yet)."""
    with _h5py().File(path, "r", locking=False) as f:
        if any(f"directions/{a}" not in f for a in spec.grid.names):
            raise SurfaceError(f"{path} is a damaged distland file (its directions are missing); move it away or use "
                               "--overwrite to replace it")
        directions = [{k: np.asarray(f[f"directions/{a}/{k}"][()]) for k in f[f"directions/{a}"]}
                      for a in spec.grid.names]
        pending = {q.name: int(np.count_nonzero(f[q.done][()] == 0)) if q.done in f else spec.grid.size
                   for q in spec.quantities}
    return directions, pending


# ------------------------------------------------------------------------------------------------ lock
class JobLock:
    """An exclusive ``flock`` on ``<real path of output>.lock`` held by the coordinator for the whole job.

    The lock is keyed on the output's resolved path, so ``b.h5 -> a.h5`` and ``./a.h5`` lock the same file. The
    kernel drops it when the process dies (even by ``kill -9``), so a crashed job never leaves a stale lock, while a
    second job on the same output is refused at once. The lock file is removed on release (while still locked; a
    job that opened the removed file notices the inode changed and retries), so nothing is left on disk.
    """

    def __init__(self, path: str) -> None:
        self.output = path
        self.path = f"{os.path.realpath(path)}.lock"
        self._fd: Optional[int] = None

    def check_free(self) -> None:
        """Refuse at once if another job holds the lock; creates nothing (run before the job's checks)."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:
            return  # no lock file: nobody holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            raise SurfaceError(f"another distland job is writing {self.output} ({holder}); wait for it to finish, "
                               "or write to another output") from None
        finally:
            os.close(fd)  # closing drops a lock we just took

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise SurfaceError(f"another distland job is writing {self.output} ({holder}); wait for it to "
                                   "finish, or write to another output") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed this lock file after we opened it: take a fresh one
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                     .encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.unlink(self.path)  # while still holding it: see the class docstring
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None


def temporary_path(path: str) -> str:
    """Where a new file is created before it is renamed onto ``path`` (same directory, so the rename is atomic).
    The name is fixed, so a temporary left by a killed creation is truncated and reused by the next one."""
    p = Path(path)
    return str(p.with_name(f".{p.name}.creating"))


def remove_temporary(path: str) -> None:
    try:
        os.unlink(temporary_path(path))
    except FileNotFoundError:
        pass


def free_bytes(path: str) -> int:
    """Free bytes for an unprivileged user on the file system that holds (or will hold) ``path``."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return int(shutil.disk_usage(p).free)


ATTR_SLACK = 1 << 20  # free bytes besides the copy that an attribute update asks for (HDF5 metadata, a margin)


def set_attrs(path: str, attrs: Mapping[str, Any], replace_prefix: str = "") -> None:
    """Add or replace root attributes of a closed surface file (serially, by the process holding the job lock).
    With ``replace_prefix``, every existing attribute under that prefix goes first (a report replaced whole)."""

    def edit(f: Any) -> None:
        if replace_prefix:
            for key in [k for k in f.attrs if k.startswith(replace_prefix)]:
                del f.attrs[key]
        for key, value in attrs.items():
            f.attrs[key] = value

    update_copy(path, edit, "update the attributes of")


def update_copy(path: str, edit: Callable[[Any], None], what: str, grows: int = 0) -> None:
    """Change the structure of a closed surface file without risking it: ``edit`` (an open h5py file) runs on a
    copy in the same directory, which replaces the file only once it is complete and on disk.

    Attributes and new datasets grow HDF5 metadata, and a write that fails half-way (a full disk) leaves a file
    HDF5 cannot open: done this way, a failure at any moment leaves the original, with every finished point.
    ``grows``: the bytes the edit adds (new datasets), besides a copy of the file and 1 MiB of slack.
    """
    h5py = _h5py()
    size = os.path.getsize(path)
    free = free_bytes(path)
    need = size + grows + ATTR_SLACK
    if free < need:
        raise SurfaceError(f"no space left to {what} {path}: {free} bytes free, {need} needed (a copy of the file"
                           f"{', the new datasets' if grows else ''} and 1 MiB); every finished point is saved in it. "
                           "Free some space (or move the file) and rerun the same command")
    tmp = temporary_path(path)
    try:
        shutil.copyfile(path, tmp)
        shutil.copymode(path, tmp)
        with h5py.File(tmp, "r+") as f:
            edit(f)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data must be on disk before the rename makes it the file
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        remove_temporary(path)
        raise SurfaceError(f"cannot {what} {path} ({e}); the file is unchanged, with every finished point. Free "
                           "some space and rerun the same command") from None


def write_atomically(path: str, fill: Callable[[Any], None]) -> None:
    """Write a new HDF5 file at ``path`` (its folder created) by ``fill`` (the open h5py file), under a temporary
    name renamed into place when complete: a failure leaves any earlier file at ``path`` as it was, and no temporary.
    For the files written whole (trajectories, Hessian results); surfaces are created by :class:`SurfaceWriter`."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with _h5py().File(tmp, "w") as f:
            fill(f)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def holds_without_grid(path: str, dataset: str) -> bool:
    """Whether ``path`` is an HDF5 file with ``dataset`` and no surface grid: how the other files distland writes
    (a trajectory, a Hessian result) are told from surfaces."""
    try:
        with _h5py().File(path, "r", locking=False) as f:
            return dataset in f and "xcoordinates" not in f
    except OSError:   # not HDF5, unreadable
        return False


def _h5py_names(path: str) -> List[str]:
    with _h5py().File(path, "r", locking=False) as f:
        return list(f.keys())


# ------------------------------------------------------------------------------------------------ writer
class SurfaceWriter:
    """An open surface file, used as a context manager. With ``mpi_comm`` (an mpi4py communicator) it uses the
    ``mpio`` driver and :meth:`open` and closing are collective; :meth:`write` is independent."""

    def __init__(self, f: Any, spec: SurfaceSpec, parallel: bool) -> None:
        self.f = f
        self.grid = spec.grid
        self.quantities = {q.name: q for q in spec.quantities}
        self.parallel = parallel

    @classmethod
    def open(cls, path: str, spec: SurfaceSpec, mode: str, run_attrs: Mapping[str, Any],
             mpi_comm: Any = None) -> "SurfaceWriter":
        """Open ``path`` to write results. ``create`` builds the whole layout (with ``run_attrs``) under
        :func:`temporary_path`, closes it and renames it onto ``path``: a kill or a full disk during creation leaves
        any old file (``--overwrite``) untouched and never a half-made file at ``path``. ``resume`` writes no
        metadata at all (the caller records ``run_attrs`` afterwards with :func:`set_attrs`)."""
        h5py = _h5py()
        kwargs: Dict[str, Any] = {}
        if mpi_comm is not None:
            if not h5py.get_config().mpi:
                raise SurfaceError("h5py was built without MPI; rebuild it with HDF5_MPI=ON against parallel HDF5, "
                                   "or set sweep.io: root")
            kwargs = {"driver": "mpio", "comm": mpi_comm}
        if mode == "create":
            tmp = temporary_path(path)
            root = mpi_comm is None or mpi_comm.Get_rank() == 0
            try:
                with h5py.File(tmp, "w", **kwargs) as f:
                    cls._create(f, spec)
                    for key, value in run_attrs.items():  # collective: identical values on every rank
                        f.attrs[key] = value
                    f.attrs["distland_layout"] = LAYOUT  # last: marks the structure complete
                if mpi_comm is not None:
                    mpi_comm.Barrier()  # every rank has closed the temporary before rank 0 renames it
                if root:
                    os.replace(tmp, path)
            except OSError as e:
                if root:
                    remove_temporary(path)
                raise SurfaceError(f"cannot create {path} ({e}); nothing was written there. Free some space or "
                                   "choose another output") from None
            if mpi_comm is not None:
                mpi_comm.Barrier()  # the file is in place before anyone reopens it
        else:
            # A quantity joins an existing surface: its datasets are metadata growth, so they go in through a copy
            # that replaces the file only once complete (as attributes do), by rank 0 alone. Only rank 0 looks at
            # the file: a rank reading it after the rename would see nothing to add and skip the barrier.
            root = mpi_comm is None or mpi_comm.Get_rank() == 0
            added = [q for q in spec.quantities if q.done not in _h5py_names(path)] if root else []
            if added:
                update_copy(path, lambda f: [cls._create_quantity(f, spec.grid, q) for q in added],
                            f"add {', '.join(q.name for q in added)} to",
                            sum(spec.grid.size * (1 + sum(np.dtype(d.dtype).itemsize for d in q.datasets))
                                for q in added))
            if mpi_comm is not None:
                mpi_comm.Barrier()   # the file has its new datasets before anyone opens it
        f = h5py.File(path, "r+", **kwargs)
        return cls(f, spec, mpi_comm is not None)

    @staticmethod
    def _create(f: Any, spec: SurfaceSpec) -> None:
        f.attrs["distland_creating"] = 1  # first: a file with this but no distland_layout was never finished
        for name, values in zip(spec.grid.names, spec.grid.axes):
            f.create_dataset(f"{name}coordinates", data=values)
        for q in spec.quantities:
            SurfaceWriter._create_quantity(f, spec.grid, q)
        for axis, direction in zip(spec.grid.names, spec.directions):
            group = f.create_group(f"directions/{axis}")
            for key, arr in direction.items():
                group.create_dataset(key, data=arr)
        for key, value in {**spec.attrs, "identity": identity_text(spec.identity),
                           "distland_version": __version__}.items():
            f.attrs[key] = value

    @staticmethod
    def _create_quantity(f: Any, grid: Grid, q: QuantityLayout) -> None:
        """A quantity's datasets and its ``done`` mask (collective under ``mpio``: identical on every rank)."""
        h5py = _h5py()

        def dcpl(fill: Any, dtype: str):
            # Contiguous, allocated and filled at creation: writes during the sweep then change no metadata.
            plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            plist.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            plist.set_fill_time(h5py.h5d.FILL_TIME_ALLOC)
            plist.set_fill_value(np.array(fill, dtype=dtype))
            return plist

        for d in q.datasets:
            ds = f.create_dataset(d.name, shape=grid.shape, dtype=d.dtype, dcpl=dcpl(d.fill, d.dtype))
            ds.attrs[DONE_ATTR] = q.done
        f.create_dataset(q.done, shape=grid.shape, dtype="u1", dcpl=dcpl(0, "u1"))
        f.attrs[f"quantity.{q.name}"] = identity_text(q.identity)

    def __enter__(self) -> "SurfaceWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pending(self, quantity: str) -> List[int]:
        """Flat indices of the points ``quantity`` has not done yet, in order."""
        done = np.asarray(self.f[self.quantities[quantity].done][()], dtype=bool)
        return [int(p) for p in np.flatnonzero(~done.reshape(-1))]

    def writer(self, quantity: str) -> Callable[[Sequence[int], Mapping[str, np.ndarray]], None]:
        """``write(points, values)`` for one quantity (what the scheduler calls)."""
        return lambda points, values: self.write(quantity, points, values)

    def write(self, quantity: str, points: Sequence[int], values: Mapping[str, np.ndarray]) -> None:
        """Store finished points of ``quantity``: values first, then their ``done`` flags (so a crash in between
        loses nothing but the recomputation of these points)."""
        q = self.quantities[quantity]
        runs = segments(points, self.grid.run)   # runs along the last axis
        for d in q.datasets:
            ds, vals = self.f[d.name], np.asarray(values[d.name], dtype=d.dtype)
            for i, j0, j1, k in runs:
                ds[self._sel(i, j0, j1)] = vals[k:k + (j1 - j0)]
        done = self.f[q.done]
        for i, j0, j1, _ in runs:
            done[self._sel(i, j0, j1)] = np.ones(j1 - j0, dtype=np.uint8)
        if not self.parallel:
            self.f.flush()  # serial HDF5 caches small writes; flush so a crash keeps finished chunks

    def _sel(self, i: int, j0: int, j1: int) -> Tuple[Any, ...]:
        if self.grid.ndim <= 2:
            return (slice(j0, j1),) if self.grid.ndim == 1 else (i, slice(j0, j1))
        lead = np.unravel_index(i, self.grid.shape[:-1])   # row i: the flat index over every axis but the last
        return tuple(int(a) for a in lead) + (slice(j0, j1),)

    def abandon(self) -> None:
        """Make closing a no-op, for a rank about to be aborted with the others: closing an ``mpio`` file is
        collective and would hang. The file object is kept (dropping it would close it too); finished points are
        already on disk, since every write is done before it is reported."""
        self._abandoned, self.f = self.f, None

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


# ------------------------------------------------------------------------------------------------ reader
@dataclass
class SurfaceData(Axes):
    """A surface file read into memory, always in [i, j] ↔ (x_i, y_j) order ([i, j, k, …] on a K-D grid) with NaN
    where not done."""

    path: str
    x: np.ndarray
    y: Optional[np.ndarray]
    metrics: Dict[str, np.ndarray]
    done: np.ndarray
    attrs: Dict[str, Any]
    config: Dict[str, Any]
    layout: str = "distland"   # or "loss-landscape" (the paper authors' tool, read transposed)
    masks: Dict[str, np.ndarray] = field(default_factory=dict)   # every quantity's done mask, by dataset name
    more: Tuple[np.ndarray, ...] = ()   # the coordinates of the axes after y (z, axis4, …) on a K-D grid
    # A plane (or line) cut from a K-D surface (distland.slicing.take): the names of its axes in the file, and the
    # fixed axes with their coordinates; empty for a surface read as it is stored.
    labels: Tuple[str, ...] = ()
    section: Dict[str, float] = field(default_factory=dict)

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.done.shape

    @property
    def complete(self) -> bool:
        return bool(self.done.all())


def read(path: str) -> SurfaceData:
    """Read a surface file (ours, or the paper authors' tool's, whose 2-D arrays are stored [j, i])."""
    import yaml

    h5py = _h5py()
    p = Path(path)
    if not p.is_file():
        raise SurfaceError(f"surface file {path!r} not found")
    try:
        f = h5py.File(p, "r", locking=False)
    except OSError as e:
        raise SurfaceError(f"{path!r} is not a readable HDF5 file ({e})") from None
    with f:
        if "xcoordinates" not in f:
            raise SurfaceError(f"{path!r} is not a surface file (no 'xcoordinates' dataset)")
        x = np.asarray(f["xcoordinates"][()], dtype=np.float64).reshape(-1)
        y = np.asarray(f["ycoordinates"][()], dtype=np.float64).reshape(-1) if "ycoordinates" in f else None
        more: List[np.ndarray] = []
        while y is not None and f"{axis_name(2 + len(more))}coordinates" in f:
            more.append(np.asarray(f[f"{axis_name(2 + len(more))}coordinates"][()], dtype=np.float64).reshape(-1))
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
        legacy = "distland_layout" not in f.attrs
        # Which mask says a dataset's points are done: its own attribute; files of distland 0.1 have only the
        # loss quantity (``done``), the authors' files mark unfinished points with -1 instead.
        owner = {k: str(_attr(ds.attrs.get(DONE_ATTR, "done"))) for k, ds in f.items()
                 if isinstance(ds, h5py.Dataset) and (DONE_ATTR in ds.attrs or k.endswith(LOSS_SUFFIXES)
                                                      or (legacy and k in LEGACY_EXTRA))}
        raw = {k: np.asarray(f[k][()], dtype=np.float64) for k in owner}
        if legacy:
            # The original tool fills L(x_i, y_j) at [j, i] and marks unfinished points with -1.
            # Its datasets may be shaped (nx, ny) or (ny, nx), but the values run in meshgrid order either way.
            if y is not None:
                for k, v in raw.items():
                    if v.size != len(x) * len(y):
                        raise SurfaceError(f"{path!r}: dataset {k} has {v.size} values for a {len(x)}×{len(y)} grid")
                raw = {k: v.reshape(len(y), len(x)).T for k, v in raw.items()}
            masks = {"done": np.all([v != -1 for v in raw.values()], axis=0) if raw else np.zeros(
                (len(x),) if y is None else (len(x), len(y)), dtype=bool)}
        else:
            masks = {m: np.asarray(f[m][()], dtype=bool) for m in set(owner.values()) if m in f}
            missing = sorted(set(owner.values()) - set(masks))
            if missing or not masks:
                raise SurfaceError(f"{path!r} is a damaged distland file (no {(missing or ['done'])[0]!r} mask)")
    expected = (len(x),) if y is None else (len(x), len(y)) + tuple(len(a) for a in more)
    for k, v in raw.items():
        if v.shape != expected:
            raise SurfaceError(f"{path!r}: dataset {k} has shape {v.shape}, expected {expected} from the coordinates")
    masks = {m: v.reshape(expected) for m, v in masks.items()}
    metrics = {k: np.where(masks[owner[k] if not legacy else "done"], v, np.nan) for k, v in raw.items()}
    done = masks["done"] if "done" in masks else np.logical_and.reduce(list(masks.values())) if masks else (
        np.zeros(expected, dtype=bool))
    cfg_text = attrs.get("config")
    try:
        config = yaml.safe_load(cfg_text) if isinstance(cfg_text, str) and cfg_text else {}
    except yaml.YAMLError:
        raise SurfaceError(f"{path!r}: its 'config' attribute is not valid YAML") from None
    if config is not None and not isinstance(config, dict):
        raise SurfaceError(f"{path!r}: its 'config' attribute holds a {type(config).__name__}, not a mapping")
    return SurfaceData(str(p), x, y, metrics, done, attrs, config or {},
                       "loss-landscape" if legacy else "distland", masks, tuple(more))


def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return [_attr(a) for a in v.tolist()] if v.dtype.kind in "OSU" else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v
