"""Dynamic scheduling of grid points over ranks: a coordinator on rank 0 that also evaluates.

Design. Rank 0 keeps the queue of unfinished points. Each worker (rank > 0) is handed up to two work units at a
time, so the next one is already in its mailbox when it finishes the current one; after each unit it writes the
results itself (``mpio``) and reports ``DONE`` with the values (a few floats), which earns it the next unit. The
worker loop is only recv → evaluate → write → send. Rank 0 evaluates units of its own and answers workers
between its forward batches (a non-blocking probe per batch), so it costs workers no idle time while every
rank does evaluation work. Unit sizes adapt (:func:`chunk_size`): about half a second of work, never more than a
fair share of what is left, so fast models don't flood the coordinator and slow points don't strand a rank.
The original tool's static blocks plus an all-array reduce after every point is what this replaces.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .comm import TAG_ERROR, Comm

Values = Dict[str, np.ndarray]
EvalChunk = Callable[[List[int], Optional[Callable[[], None]]], Values]
Write = Callable[[Sequence[int], Values], None]
CREDIT = 2  # units a worker holds at once: the one it works on and the next
# Tags of the coordinator protocol (errors travel under comm's TAG_ERROR, which every receive watches).
TAG_WORK, TAG_DONE = 11, 12


@dataclass
class RankStats:
    """What one rank did: for the summary and the coordinator-overhead benchmark."""

    rank: int
    points: int = 0
    units: int = 0
    busy_s: float = 0.0
    wait_s: float = 0.0       # blocked waiting for a unit while the queue still had work
    tail_s: float = 0.0       # waiting for the stop message once the queue ran dry (others finishing)
    wall_s: float = 0.0


@dataclass
class Progress:
    """Progress of the whole grid, fed on rank 0 (``report`` prints a line at most every ``every`` seconds)."""

    total: int
    done: int
    report: Optional[Callable[["Progress"], None]] = None
    every: float = 0.5
    label: str = ""           # the quantity being computed, when a job computes several
    started: float = field(default_factory=time.monotonic)
    new_points: int = 0
    _last: float = 0.0

    def add(self, n: int) -> None:
        self.done += n
        self.new_points += n
        now = time.monotonic()
        if self.report is not None and (now - self._last >= self.every or self.done >= self.total):
            self._last = now
            self.report(self)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.new_points / elapsed if elapsed > 0 else 0.0


def report_line(p: Progress) -> None:
    """Print ``p`` as one progress line on stderr (rewritten in place on a terminal)."""
    frac = p.done / p.total if p.total else 1.0
    rate = p.rate
    eta = (p.total - p.done) / rate if rate > 0 else float("nan")
    line = (f"[{p.done:>{len(str(p.total))}}/{p.total}] {100 * frac:5.1f}%  {rate:7.2f} points/s  "
            f"ETA {_hms(eta)}" + (f"  ({p.label})" if p.label and p.label != "loss" else ""))
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


class _Rate:
    """Points per second of one rank, for sizing units: a ratio of decayed sums, so each unit counts by its
    length (a one-point unit timed in a lucky moment cannot outweigh a long one) and older units fade."""

    DECAY = 0.7

    def __init__(self) -> None:
        self.points = 0.0
        self.seconds = 0.0

    @property
    def value(self) -> float:
        return self.points / self.seconds if self.seconds > 0 else 0.0

    def update(self, points: int, seconds: float) -> None:
        if seconds > 0 and points > 0:
            self.points = self.DECAY * self.points + points
            self.seconds = self.DECAY * self.seconds + seconds


TAIL_SECONDS = 0.05   # the least work a unit holds once the speed is known (see chunk_size)
GROWTH = 4   # slow start: a rank's next unit is at most this many times its previous one


def chunk_size(remaining: int, nranks: int, rate: float = 0.0, target_seconds: float = 0.5,
               max_chunk: int = 4096, fixed: int = 0, previous: int = 0) -> int:
    """Points in the next work unit for a rank whose previous unit had ``previous`` points (0: none yet).

    About ``target_seconds`` of work at ``rate`` (one rank's measured points per second; 0 while unknown), so
    the coordinator's message rate stays low with fast models while slow points (a full CIFAR pass) go one at a
    time. Never more than a fair share: the guided cap ``remaining / (2·nranks)`` shrinks units towards the end so
    no rank is left holding a long one while the others idle, but not below TAIL_SECONDS of work. Slow start:
    while the cost is unknown units go 1, 2, 4, …, and after that each is at most GROWTH× the rank's previous one,
    so one optimistic timing (a point measured while an oversubscribed rank briefly had a core to itself) cannot
    hand out a unit that outlasts everyone else's work. ``max_chunk`` bounds what a killed rank can lose.
    """
    if remaining <= 0:
        return 0
    if fixed > 0:
        return min(fixed, remaining)
    guided = math.ceil(remaining / (2 * max(1, nranks)))
    if rate > 0:
        timed = math.ceil(rate * target_seconds)
        if previous > 0:
            timed = min(timed, GROWTH * previous)
    else:
        timed = 2 * previous if previous > 0 else 1
    size = min(remaining, max_chunk, guided, timed)
    if rate > 0:
        # The guided cap must not shrink units below TAIL_SECONDS of work: at the end of a fast sweep, one-point
        # units would cost a round trip each for a millisecond of work, and the imbalance this allows is small.
        size = max(size, min(remaining, max_chunk, timed, math.ceil(rate * TAIL_SECONDS)))
    return max(1, size)


def to_runs(points: Sequence[int]) -> List[Tuple[int, int]]:
    """``points`` as ``(start, stop)`` runs of consecutive indices: a work unit's message stays a few bytes
    (a fresh sweep's unit is one run), below MPI's eager limit however many points it holds."""
    out: List[Tuple[int, int]] = []
    for p in points:
        p = int(p)
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1)
        else:
            out.append((p, p + 1))
    return out


def from_runs(runs: Sequence[Tuple[int, int]]) -> List[int]:
    """The points of :func:`to_runs`' output, in order."""
    return [p for start, stop in runs for p in range(start, stop)]


def take(queue: List[int], n: int) -> List[int]:
    """Pop the first ``n`` points off ``queue`` (in place) and return them."""
    head = queue[:n]
    del queue[:n]
    return head


def run(comm: Comm, queue: List[int], evaluate: EvalChunk, write: Optional[Write], root_writes: bool,
        progress: Optional[Progress] = None, fixed_chunk: int = 0) -> List[RankStats]:
    """Evaluate every point of ``queue`` (meaningful on rank 0 only) across all ranks; returns every rank's
    stats on rank 0 (its own only elsewhere).

    ``write`` stores a unit's values from the rank that computed it; with ``root_writes`` (h5py without MPI) the
    workers send values to rank 0, which writes them all. Otherwise every message is a few bytes (units go as
    runs of indices, results stay with the worker that wrote them): messages above MPI's eager limit need the
    sender scheduled again to complete, which on a loaded node costs a scheduler quantum per message.
    """
    if comm.is_root:
        return _coordinate(comm, list(queue), evaluate, write, root_writes, progress, fixed_chunk)
    return [_work(comm, evaluate, None if root_writes else write)]


def _work(comm: Comm, evaluate: EvalChunk, write: Optional[Write]) -> RankStats:
    stats = RankStats(comm.rank)
    t_start = time.monotonic()
    while True:
        t0 = time.monotonic()
        runs, _, _ = comm.recv(source=0, tag=TAG_WORK)
        if runs is None:
            stats.tail_s = time.monotonic() - t0
            break
        stats.wait_s += time.monotonic() - t0
        unit = from_runs(runs)
        t1 = time.monotonic()
        values = evaluate(unit, None)
        if write is not None:
            write(unit, values)
        elapsed = time.monotonic() - t1
        stats.busy_s += elapsed
        stats.points += len(unit)
        stats.units += 1
        comm.send((runs, None if write is not None else values, elapsed), dest=0, tag=TAG_DONE)
    stats.wall_s = time.monotonic() - t_start
    return stats


def _coordinate(comm: Comm, queue: List[int], evaluate: EvalChunk, write: Optional[Write], root_writes: bool,
                progress: Optional[Progress], fixed_chunk: int) -> List[RankStats]:
    n = comm.size
    rates = [_Rate() for _ in range(n)]
    held = [0] * n
    stopped = [False] * n
    stats = RankStats(0)
    t_start = time.monotonic()

    previous = [0] * n   # size of the last unit handed to each rank (slow start, see chunk_size)

    def next_unit(rank: int) -> List[int]:
        rate = rates[rank].value or max((r.value for r in rates), default=0.0)
        size = chunk_size(len(queue), n, rate, fixed=fixed_chunk, previous=previous[rank])
        previous[rank] = size
        return take(queue, size)

    # The coordinator never blocks in a send: a large unit goes by rendezvous, and a worker that is itself
    # blocked sending its results to us would never post the receive — a deadlock. Requests are kept (they own
    # the buffers) until MPI reports them complete, and tested all at once, only when they have piled up: each
    # test is a progress call, which on an oversubscribed node gives the core away.
    in_flight: List[object] = []

    def reap() -> None:
        in_flight[:] = comm.incomplete(in_flight)

    def post(obj: object, rank: int) -> None:
        if len(in_flight) >= 2 * n:
            reap()
        in_flight.append(comm.isend(obj, dest=rank, tag=TAG_WORK))

    def feed(rank: int) -> None:
        while held[rank] < CREDIT and queue:
            post(to_runs(next_unit(rank)), rank)
            held[rank] += 1
        if not queue and held[rank] == 0 and not stopped[rank]:
            post(None, rank)
            stopped[rank] = True

    def handle(msg: object, source: int, tag: int) -> None:
        if tag == TAG_ERROR:
            comm.remote_failure(msg)  # type: ignore[arg-type]
        runs, values, elapsed = msg  # type: ignore[misc]
        points = sum(stop - start for start, stop in runs)
        held[source] -= 1
        rates[source].update(points, elapsed)
        if root_writes and write is not None:
            write(from_runs(runs), values)
        if progress is not None:
            progress.add(points)
        feed(source)

    def service() -> None:
        while comm.size > 1 and comm.iprobe():
            handle(*comm.recv())

    for rank in range(1, n):
        feed(rank)
    while queue:
        unit = next_unit(0)
        t0 = time.monotonic()
        values = evaluate(unit, service)
        if write is not None:
            write(unit, values)
        elapsed = time.monotonic() - t0
        rates[0].update(len(unit), elapsed)
        stats.busy_s += elapsed
        stats.points += len(unit)
        stats.units += 1
        if progress is not None:
            progress.add(len(unit))
    for rank in range(1, n):
        feed(rank)  # stop the idle ones now
    while not all(stopped[1:]):
        handle(*comm.recv())
    reap()
    while in_flight:  # the stop messages: cheap, but their buffers must outlive the sends
        time.sleep(1e-4)
        reap()
    stats.wall_s = time.monotonic() - t_start
    return [stats]
