"""The one module that imports mpi4py — lazily, so ``import distland`` and serial runs never need it.

:class:`Comm` wraps a communicator (or none) with the handful of operations the sweep uses. Errors follow
``python -m mpi4py``'s rule — one failing rank aborts them all, so nothing hangs — and mpi4py.futures' courtesy:
the failing rank's traceback reaches the user labelled with its rank and host.
Root-only work goes through :meth:`Comm.on_root`: rank 0 runs it, and its result *or its exception* reaches every
rank, so a bad config fails once, cleanly, on all ranks alike.
"""
from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from typing import Any, Callable, List, Optional, Tuple, TypeVar

T = TypeVar("T")

TAG_ERROR = 13      # a rank's failure, sent to rank 0 (the scheduler's own tags are in distland.schedule)
SPIN_PROBES = 100   # back-to-back probes before a receive starts sleeping (see Comm.recv)
_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "PMI_RANK", "HYDRA_CONTROL_FD")


class RemoteError(RuntimeError):
    """An error raised on another rank, re-raised here with that rank's traceback."""


class LaunchError(RuntimeError):
    """The processes were not started the way an MPI job must be."""


def launcher_rank() -> int:
    """This process's rank as the launcher told it (0 when not launched as a job), read from the environment
    before MPI starts: for deciding who prints an error without initialising MPI."""
    for var in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def describe_mpi() -> str:
    """One line on mpi4py and the MPI library behind it (for ``distland info``); never raises."""
    try:
        import mpi4py
    except ImportError:
        return "mpi4py: not installed (serial runs only; pip install mpi4py)"
    line = f"mpi4py {mpi4py.__version__}"
    try:
        from mpi4py import MPI

        line += f"  MPI: {MPI.Get_library_version().splitlines()[0].strip()}"
    except Exception as e:  # noqa: BLE001 - report, don't fail
        line += f"  (MPI library unusable: {e})"
    return line


def launched_by_mpi() -> bool:
    """Whether an MPI launcher (mpirun/mpiexec/srun with PMI) started this process."""
    if any(v in os.environ for v in _LAUNCHER_VARS):
        return True
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1


class Comm:
    """A communicator: MPI's COMM_WORLD, or a serial stand-in of size 1 when ``mpi`` is None."""

    def __init__(self, mpi: Any = None) -> None:
        self._MPI = mpi
        self.world = mpi.COMM_WORLD if mpi is not None else None
        self.rank = self.world.Get_rank() if mpi is not None else 0
        self.size = self.world.Get_size() if mpi is not None else 1
        self.host = socket.gethostname()
        if mpi is not None:
            node = self.world.Split_type(mpi.COMM_TYPE_SHARED, key=self.rank)
            self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
            node.Free()
        else:
            self.local_rank, self.local_size = 0, 1

    # -------------------------------------------------------------------- basics
    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def mpi_comm(self) -> Any:
        """The mpi4py communicator for h5py's ``mpio`` driver (None when serial)."""
        return self.world

    def describe(self) -> str:
        return f"rank {self.rank}/{self.size} on {self.host}"

    def bcast(self, obj: T) -> T:
        return obj if self.world is None else self.world.bcast(obj, root=0)

    def allgather(self, obj: T) -> list:
        return [obj] if self.world is None else self.world.allgather(obj)

    # -------------------------------------------------------------------- point to point (the work queue)
    def send(self, obj: Any, dest: int, tag: int) -> None:
        self.world.send(obj, dest=dest, tag=tag)

    def isend(self, obj: Any, dest: int, tag: int) -> Any:
        """Non-blocking send; keep the returned request (it holds the buffer) until :meth:`incomplete` drops it."""
        return self.world.isend(obj, dest=dest, tag=tag)

    def incomplete(self, requests: List[Any]) -> List[Any]:
        """The requests of ``requests`` still in flight, found with one progress call for all of them (never
        blocks). One call matters: on an oversubscribed node every MPI test yields the core (Open MPI's
        ``mpi_yield_when_idle``), so testing requests one by one costs a scheduler quantum each."""
        if not requests:
            return requests
        finished = self._MPI.Request.Testsome(requests)
        if not finished:
            return requests
        gone = set(finished)
        return [r for i, r in enumerate(requests) if i not in gone]

    def recv(self, source: Optional[int] = None, tag: Optional[int] = None) -> Tuple[Any, int, int]:
        """Blocking receive; returns ``(obj, source, tag)``.

        Probes a few times back to back first (a message that has just arrived is often found only by the probe
        after the one whose progress call pulled it in), then waits with a short, growing sleep (≤ 1 ms) instead
        of MPI's busy-wait, so that an idle rank leaves its core to the ranks that compute. The spin matters on a
        loaded node: any sleep, however short, costs the rest of a scheduler quantum (measured: 10-20 ms with 8
        ranks on 2 cores, for a unit that was already in the mailbox).
        """
        src = self._MPI.ANY_SOURCE if source is None else source
        tg = self._MPI.ANY_TAG if tag is None else tag
        st = self._MPI.Status()
        pause, spins = 1e-5, 0
        while not self.world.iprobe(source=src, tag=tg, status=st):
            spins += 1
            if spins <= SPIN_PROBES:
                continue
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)
        obj = self.world.recv(source=st.Get_source(), tag=st.Get_tag())
        return obj, st.Get_source(), st.Get_tag()

    def iprobe(self) -> bool:
        """Whether a message from any rank is waiting (never blocks)."""
        return bool(self.world.iprobe(source=self._MPI.ANY_SOURCE, tag=self._MPI.ANY_TAG))

    # -------------------------------------------------------------------- root-only work and failures
    def on_root(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only; every rank returns its result, or raises its exception."""
        if self.world is None:
            return fn()
        result: Any = None
        error: Optional[BaseException] = None
        if self.is_root:
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001 - relayed to all ranks below
                error = e
        error, result = self.bcast((error, result))
        if error is not None:
            raise error
        return result

    def fail(self, exc: BaseException) -> None:
        """Report ``exc`` with this rank's traceback, then abort the whole job (never returns under MPI)."""
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if self.world is None:
            raise exc
        if self.is_root:
            _stderr(f"distland: {self.describe()} failed:\n{text}")
        else:
            try:  # let the coordinator print it once, labelled; abort ourselves if it cannot take it in time
                req = self.world.isend((self.rank, self.host, text), dest=0, tag=TAG_ERROR)
                deadline = time.monotonic() + 3.0
                while not req.Test() and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(0.5)
            except Exception:  # noqa: BLE001 - we are aborting anyway
                pass
            _stderr(f"distland: {self.describe()} failed:\n{text}")
        self.abort(1)

    def remote_failure(self, payload: Tuple[int, str, str]) -> None:
        """Called on the coordinator when a worker reports an error: print it labelled, abort the job."""
        rank, host, text = payload
        _stderr(f"distland: rank {rank} on {host} failed; aborting all {self.size} ranks:\n{text}")
        self.abort(1)

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        if self.world is not None:
            self.world.Abort(code)
        raise SystemExit(code)  # pragma: no cover


def _stderr(text: str) -> None:
    sys.stderr.write(text if text.endswith("\n") else text + "\n")
    sys.stderr.flush()


def get_comm(mode: str = "auto") -> Comm:
    """COMM_WORLD under an MPI launcher (``mode='auto'``), always (``'on'``) or never (``'off'``).

    Under srun, a size that differs from ``SLURM_STEP_NUM_TASKS`` means the MPI library did not talk to srun's
    PMI (e.g. Open MPI without ``--mpi=pmix``): N independent single-rank copies would all write the same file,
    so stop with the fix instead.
    """
    if mode == "off" or (mode == "auto" and not launched_by_mpi()):
        return Comm(None)
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise LaunchError("this process was started by an MPI launcher but mpi4py is not installed: "
                          "pip install mpi4py (built against the cluster's MPI), or set sweep.mpi: off") from e
    comm = Comm(MPI)
    step_tasks = os.environ.get("SLURM_STEP_NUM_TASKS")
    if step_tasks and "OMPI_COMM_WORLD_SIZE" not in os.environ and int(step_tasks) != comm.size:
        raise LaunchError(f"srun started {step_tasks} tasks but MPI sees a world of {comm.size}: the MPI library "
                          "is not talking to srun's PMI. Use `srun --mpi=pmix ...` (see `srun --mpi=list`) or "
                          "launch with mpirun inside the allocation")
    return comm
