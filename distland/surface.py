"""The surface file: one HDF5 file per job, written by every rank, readable by the paper authors' tool's users.

Layout (``LAYOUT``): ``xcoordinates`` (nx,), ``ycoordinates`` (ny,) for 2-D; per split ``<split>_loss`` (float64,
mean over samples) and ``<split>_acc`` (percent) of shape (nx, ny) with [i, j] ↔ (x_i, y_j), or (nx,) for 1-D;
``done`` (uint8, same shape) marks finished points — a diverged point holds inf/NaN and is done; group
``directions/x`` (and ``y``) with the normalized direction actually used, one dataset per state_dict key.
Root attributes: ``config`` (resolved YAML), ``identity`` (JSON of what determines the values), ``distland_version``,
``checkpoint_sha256``, ``seed``, ``created``, and per run ``devices``, ``engine``, ``io``.

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
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import __version__
from .grid import Grid, segments

LAYOUT = 1
METRIC_KINDS = ("loss", "acc")


class SurfaceError(ValueError):
    """A surface file cannot be used as asked; the message says why and what to do."""


def metric_names(splits: Sequence[str]) -> List[str]:
    return [f"{s}_{m}" for s in splits for m in METRIC_KINDS]


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
    metrics: List[str]
    identity: Dict[str, Any]
    attrs: Dict[str, Any]
    directions: List[Dict[str, np.ndarray]] = field(default_factory=list)


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
            missing = [k for k in ("done", *spec.metrics) if k not in f]
            if missing:
                raise SurfaceError(f"{path} is a damaged distland file (missing {', '.join(missing)}); move it away "
                                   "or use --overwrite to replace it")
            try:
                old = json.loads(str(f.attrs.get("identity", "{}")))
            except ValueError:
                old = {"identity": "unreadable"}
            n_done = int(np.count_nonzero(f["done"][()]))
    except OSError as e:
        raise SurfaceError(f"{path} exists but is not a readable HDF5 file ({e}); move it away or use --overwrite "
                           "to replace it") from None
    new = json.loads(identity_text(spec.identity))
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        details = "; ".join(f"{k}: file {old.get(k)!r} vs now {new.get(k)!r}" for k in diff[:4])
        raise SurfaceError(f"{path} holds a different job ({n_done} finished points); differing: {details}. "
                           "Use another output path, or --overwrite to discard it")
    return "resume"


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
    With ``replace_prefix``, every existing attribute under that prefix goes first (a report replaced whole).

    Attributes grow HDF5 metadata, and a write that fails half-way (a full disk) leaves a file HDF5 cannot open.
    So the update goes into a copy in the same directory that replaces the file only once it is complete: a
    failure at any moment leaves the original, with every finished point, as it was.
    """
    h5py = _h5py()
    size = os.path.getsize(path)
    free = free_bytes(path)
    if free < size + ATTR_SLACK:
        raise SurfaceError(f"no space left to update {path}'s attributes: {free} bytes free, {size + ATTR_SLACK} "
                           "needed (a copy of the file and 1 MiB); every finished point is saved in it. Free some "
                           "space (or move the file) and rerun the same command to add them")
    tmp = temporary_path(path)
    try:
        shutil.copyfile(path, tmp)
        shutil.copymode(path, tmp)
        with h5py.File(tmp, "r+") as f:
            if replace_prefix:
                for key in [k for k in f.attrs if k.startswith(replace_prefix)]:
                    del f.attrs[key]
            for key, value in attrs.items():
                f.attrs[key] = value
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data must be on disk before the rename makes it the file
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        remove_temporary(path)
        raise SurfaceError(f"cannot update {path}'s attributes ({e}); the file is unchanged, with every finished "
                           "point. Free some space and rerun the same command to add them") from None


# ------------------------------------------------------------------------------------------------ writer
class SurfaceWriter:
    """An open surface file. With ``mpi_comm`` (an mpi4py communicator) it uses the ``mpio`` driver and every
    call of :meth:`open`/:meth:`close` is collective; :meth:`write` is independent."""

    def __init__(self, f: Any, grid: Grid, metrics: List[str], parallel: bool) -> None:
        self.f = f
        self.grid = grid
        self.metrics = metrics
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
        f = h5py.File(path, "r+", **kwargs)
        return cls(f, spec.grid, list(spec.metrics), mpi_comm is not None)

    @staticmethod
    def _create(f: Any, spec: SurfaceSpec) -> None:
        h5py = _h5py()
        shape = spec.grid.shape
        f.attrs["distland_creating"] = 1  # first: a file with this but no distland_layout was never finished

        def dcpl(fill: Any, dtype: str):
            # Contiguous, allocated and filled at creation: writes during the sweep then change no metadata.
            plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            plist.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            plist.set_fill_time(h5py.h5d.FILL_TIME_ALLOC)
            plist.set_fill_value(np.array(fill, dtype=dtype))
            return plist

        f.create_dataset("xcoordinates", data=spec.grid.x)
        if spec.grid.y is not None:
            f.create_dataset("ycoordinates", data=spec.grid.y)
        for name in spec.metrics:
            f.create_dataset(name, shape=shape, dtype="f8", dcpl=dcpl(np.nan, "f8"))
        f.create_dataset("done", shape=shape, dtype="u1", dcpl=dcpl(0, "u1"))
        for axis, direction in zip("xy", spec.directions):
            group = f.create_group(f"directions/{axis}")
            for key, arr in direction.items():
                group.create_dataset(key, data=arr)
        for key, value in {**spec.attrs, "identity": identity_text(spec.identity),
                           "distland_version": __version__}.items():
            f.attrs[key] = value

    def done_mask(self) -> np.ndarray:
        return np.asarray(self.f["done"][()], dtype=bool)

    def pending(self) -> List[int]:
        """Flat indices of the points not yet done, in order."""
        return [int(p) for p in np.flatnonzero(~self.done_mask().reshape(-1))]

    def directions(self) -> List[Dict[str, np.ndarray]]:
        out = []
        for axis in "xy":
            if f"directions/{axis}" in self.f:
                group = self.f[f"directions/{axis}"]
                out.append({k: np.asarray(group[k][()]) for k in group})
        return out

    def write(self, points: Sequence[int], values: Mapping[str, np.ndarray]) -> None:
        """Store finished points: values first, then their ``done`` flags (so a crash in between loses nothing
        but the recomputation of these points)."""
        ny = self.grid.ny if self.grid.ndim == 2 else self.grid.size
        runs = segments(points, ny)
        for name in self.metrics:
            ds, vals = self.f[name], np.asarray(values[name], dtype=np.float64)
            for i, j0, j1, k in runs:
                ds[self._sel(i, j0, j1)] = vals[k:k + (j1 - j0)]
        done = self.f["done"]
        for i, j0, j1, _ in runs:
            done[self._sel(i, j0, j1)] = np.ones(j1 - j0, dtype=np.uint8)
        if not self.parallel:
            self.f.flush()  # serial HDF5 caches small writes; flush so a crash keeps finished chunks

    def _sel(self, i: int, j0: int, j1: int) -> Tuple[Any, ...]:
        return (slice(j0, j1),) if self.grid.ndim == 1 else (i, slice(j0, j1))

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


# ------------------------------------------------------------------------------------------------ reader
@dataclass
class SurfaceData:
    """A surface file read into memory, always in [i, j] ↔ (x_i, y_j) order with NaN where not done."""

    path: str
    x: np.ndarray
    y: Optional[np.ndarray]
    metrics: Dict[str, np.ndarray]
    done: np.ndarray
    attrs: Dict[str, Any]
    config: Dict[str, Any]
    layout: str = "distland"   # or "loss-landscape" (the paper authors' tool, read transposed)

    @property
    def ndim(self) -> int:
        return 1 if self.y is None else 2

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
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
        names = [k for k in f.keys() if k.endswith(("_loss", "_acc")) and isinstance(f[k], h5py.Dataset)]
        raw = {k: np.asarray(f[k][()], dtype=np.float64) for k in names}
        legacy = "distland_layout" not in f.attrs
        if legacy:
            # The original tool fills L(x_i, y_j) at [j, i] and marks unfinished points with -1.
            # Its datasets may be shaped (nx, ny) or (ny, nx), but the values run in meshgrid order either way.
            if y is not None:
                for k, v in raw.items():
                    if v.size != len(x) * len(y):
                        raise SurfaceError(f"{path!r}: dataset {k} has {v.size} values for a {len(x)}×{len(y)} grid")
                raw = {k: v.reshape(len(y), len(x)).T for k, v in raw.items()}
            done = np.all([v != -1 for v in raw.values()], axis=0) if raw else np.zeros(
                (len(x),) if y is None else (len(x), len(y)), dtype=bool)
        else:
            if "done" not in f:
                raise SurfaceError(f"{path!r} is a damaged distland file (no 'done' mask)")
            done = np.asarray(f["done"][()], dtype=bool)
    expected = (len(x),) if y is None else (len(x), len(y))
    for k, v in raw.items():
        if v.shape != expected:
            raise SurfaceError(f"{path!r}: dataset {k} has shape {v.shape}, expected {expected} from the coordinates")
    metrics = {k: np.where(done, v, np.nan) for k, v in raw.items()}
    cfg_text = attrs.get("config")
    try:
        config = yaml.safe_load(cfg_text) if isinstance(cfg_text, str) and cfg_text else {}
    except yaml.YAMLError:
        raise SurfaceError(f"{path!r}: its 'config' attribute is not valid YAML") from None
    if config is not None and not isinstance(config, dict):
        raise SurfaceError(f"{path!r}: its 'config' attribute holds a {type(config).__name__}, not a mapping")
    return SurfaceData(str(p), x, y, metrics, done.reshape(expected), attrs, config or {},
                       "loss-landscape" if legacy else "distland")


def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return [_attr(a) for a in v.tolist()] if v.dtype.kind in "OSU" else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v
