"""Choosing how a rank runs its forward passes: device, threads, batch size, memory format, BN folding.

Documented rules rather than a per-run calibration (the CPU machines here vary ±30% from minute to minute, too
much for a short calibration to pick reliably), from measurements side by side (bench/speed.py, bench/README.md):

- channels_last for image models, and eval-mode BN folded into its conv: oneDNN's NHWC convolutions reach
  200–250 GFLOP/s on the 2-core CI machines where NCHW ones reach 140–200 (the 3-channel stem conv: 150 vs 17).
- on CPUs, the batch that keeps a layer's activations in cache: CPU_CACHE_BYTES divided by the largest
  activation of one sample, as a power of two within [CPU_BATCH_MIN, CPU_BATCH_MAX]. Measured: ResNet-20
  (64 KiB per sample → 64) runs 5–7% faster at 64 than at 128; VGG-9, WRN-56-2 and DenseNet-121 (≥ 128 KiB →
  32) were fastest at 32; the demo CNN on 8×8 digits (a few KiB → 1,024) runs 1.5–2× faster at 512–2,048 than
  at 64–128, where per-batch overhead dominates.
- one thread per core, the cores split between the ranks of a node.
- ``torch.compile`` fuses the elementwise work between convolutions (7–25% faster here) for 5–25 s of compilation,
  which pays off only for long sweeps: ``engine.compile: auto`` times this rank's first points and compiles when
  the rank's expected remaining work exceeds :data:`COMPILE_WORTH_S` for its kind of device (the coordinator of a
  multi-rank job never compiles: it must keep answering the workers). On a GPU cuDNN already runs the convolutions
  (most of the time) and a cold compile of a deep net, two batch shapes plus the check passes, costs minutes, so
  the bar is higher; compile workers are bounded per rank (``TORCHINDUCTOR_COMPILE_THREADS``: the rank's
  threads), so 8 ranks on a node do not start 8 × 32 of them.
- one grid point per pass: several (vmap over stacked weights) measured slower on CPUs (1.35–1.65 s vs 0.79 s).

Every choice is exact (same loss to ~1e-6 relative); reduced precision (bf16 autocast, TF32 on GPUs) is opt-in via
``engine.precision`` and measures its own error (``SurfaceEvaluator.precision_check``).
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .config import EngineConfig

# Expected eager work per rank (s) above which compiling is worth its cost, per kind of device. CPU: measured
# (5–25 s of compilation for 7–25%). CUDA: not yet measured on a GPU; reasoned from a cold ResNet-56 compile of
# 1–3 min for an expected 10–20% gain (bench/gpu_check.py prints the break-even work to set it from).
COMPILE_WORTH_S: Dict[str, float] = {"cpu": 120.0, "cuda": 900.0}
AUTO_COMPILE_POINTS = 3   # points timed before deciding (the least of them is the steady cost)
CPU_CACHE_BYTES = 4 << 20   # activations of one layer for a whole batch: about a core's share of L2 + L3
CPU_BATCH_MIN, CPU_BATCH_MAX = 32, 1024
DEFAULT_ACTIVATION_BYTES = 64 << 10   # when unknown: ResNet-20's (16 channels at 32×32, float32)
GPU_BATCH = 1024
MAX_COMPILE_THREADS = 32   # inductor's own cap


@dataclass(frozen=True)
class Engine:
    """How forward passes run on one rank: resolved once by :func:`choose` (and by the evaluator for what only
    the model and data can decide), never mutated, recorded in the surface file."""

    device: str = "cpu"
    batch_size: int = 128
    channels_last: bool = False
    fold_bn: bool = False
    compile: str = "off"        # on | off | auto (decided by :class:`CompileProbe` after the first points)
    threads: int = 0
    precision: str = "fp32"
    stream_data: str = "auto"   # auto | on | off (resolved to on/off by the evaluator, see :mod:`distland.feed`)
    ranks_on_device: int = 1    # ranks sharing this rank's GPU (they split its memory)
    compile_threads: int = 0    # torch.compile workers of this rank (0: its threads)


def pick_device(setting: str, local_rank: int) -> str:
    """``auto``/``cuda`` → ``cuda:<local_rank % visible>`` (one visible GPU per rank gives ``cuda:0``), else CPU."""
    if setting == "cpu":
        return "cpu"
    if setting.startswith("cuda:"):
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(setting[5:]) >= visible:
            raise RuntimeError(f"engine.device is {setting!r} but this rank sees {visible} GPU(s) (check "
                               "CUDA_VISIBLE_DEVICES); use engine.device: auto or cuda")
        return setting
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    if setting == "cuda":
        raise RuntimeError("engine.device is 'cuda' but no GPU is visible to this rank (check CUDA_VISIBLE_DEVICES "
                           "and --gpus-per-task); use engine.device: auto to fall back to the CPU")
    return "cpu"


def cores_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def largest_activation(model: torch.nn.Module, sample: torch.Tensor) -> int:
    """Bytes of the largest tensor any leaf module of ``model`` outputs for one sample (``sample[:1]``); 0 when
    the model cannot run on a single sample (the batch rule then uses DEFAULT_ACTIVATION_BYTES)."""
    largest = [sample[:1].numel() * sample.element_size()]

    def hook(_mod: torch.nn.Module, _inp: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.inference_mode():
            model.eval()(sample[:1])
    except Exception:  # noqa: BLE001 - a sizing hint only; the real forward passes report real errors
        return 0
    finally:
        for h in handles:
            h.remove()
    return largest[0]


def cpu_batch(activation_bytes: int) -> int:
    """The CPU batch size for a model whose largest activation is ``activation_bytes`` per sample (see above; 0:
    unknown)."""
    fits = max(1, CPU_CACHE_BYTES // (activation_bytes or DEFAULT_ACTIVATION_BYTES))
    return min(CPU_BATCH_MAX, max(CPU_BATCH_MIN, 1 << (fits.bit_length() - 1)))


def choose(cfg: EngineConfig, local_rank: int = 0, local_size: int = 1, batch_size: int = 0,
           input_ndim: int = 4, cores: Optional[int] = None, activation_bytes: int = 0) -> Engine:
    """The engine for one rank. ``local_size`` ranks share this node's cores (unless pinned by the launcher);
    ``activation_bytes`` (:func:`largest_activation`, 0: unknown) sizes CPU batches."""
    device = pick_device(cfg.device, local_rank)
    on_gpu = device.startswith("cuda")
    if cfg.threads > 0:
        threads = share = cfg.threads
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        threads = share = int(os.environ["OMP_NUM_THREADS"])  # the user (or launcher) already chose
    else:
        n = cores if cores is not None else cores_available()
        # A launcher that pins each rank to its own cores shows us only those; otherwise split the node.
        threads = share = n if n < (os.cpu_count() or n) else max(1, n // max(1, local_size))
        if on_gpu:
            threads = min(threads, 4)   # the share stays: it is the rank's compile workers
    four_d = input_ndim == 4
    return Engine(
        device=device,
        batch_size=batch_size or (GPU_BATCH if on_gpu else cpu_batch(activation_bytes)),
        channels_last=four_d if cfg.channels_last == "auto" else cfg.channels_last == "on",
        fold_bn=cfg.fold_bn != "off",
        compile=cfg.compile,
        threads=threads,
        precision=cfg.precision,
        stream_data=cfg.stream_data,
        compile_threads=min(MAX_COMPILE_THREADS, max(1, share)),
    )


def device_kind(device: str) -> str:
    """``cuda`` for ``cuda``/``cuda:N``, else ``cpu``."""
    return "cuda" if device.startswith("cuda") else "cpu"


def worth_compiling(first_point_s: float, points_left: int, device: str = "cpu") -> bool:
    """``engine.compile: auto``: compile when this rank still has more eager work than its device kind's
    COMPILE_WORTH_S."""
    return first_point_s * points_left > COMPILE_WORTH_S[device_kind(device)]


def compile_threads(engine: Engine, environ: Optional[Dict[str, str]] = None) -> Optional[int]:
    """Compile workers for this rank: its share of the node's cores (``engine.compile_threads``, else its
    threads), unless the user set TORCHINDUCTOR_COMPILE_THREADS (then None: theirs stands)."""
    env = os.environ if environ is None else environ
    if env.get("TORCHINDUCTOR_COMPILE_THREADS"):
        return None
    return max(1, engine.compile_threads or engine.threads)


class CompileProbe:
    """``engine.compile: auto`` for one rank: times its first :data:`AUTO_COMPILE_POINTS` points and says once
    whether compiling is worth it, from the least of them (the first point carries one-time start-up costs, and
    one slow timing on a loaded machine must not buy 5-25 s of compilation for a cheap model)."""

    def __init__(self, active: bool, points_left: int, device: str = "cpu") -> None:
        self.times: Optional[List[float]] = [] if active else None
        self.points_left = points_left
        self.device = device

    def record(self, seconds: float) -> bool:
        """Add one point's time; True exactly once, when the rank should compile now."""
        if self.times is None:
            return False
        self.times.append(seconds)
        if len(self.times) < AUTO_COMPILE_POINTS and len(self.times) < self.points_left:
            return False
        times, self.times = self.times, None
        return worth_compiling(min(times), self.points_left - len(times), self.device)


def apply_process_settings(engine: Engine) -> None:
    """Thread count, compile workers and matmul precision for this process."""
    if engine.threads > 0:
        torch.set_num_threads(engine.threads)
    workers = compile_threads(engine)
    if workers is not None:
        # Inductor reads the variable when its config is imported; set both in case it already was.
        os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = str(workers)
        inductor = sys.modules.get("torch._inductor.config")
        if inductor is not None:
            inductor.compile_threads = workers
    if engine.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(engine.device))
        allow = engine.precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow


@contextlib.contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """Inside: no TF32 on a CUDA device, whatever the job's precision (restored afterwards). For what must be
    float32 in a reduced-precision job: the measured error of the reduced one, and the Hessian."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ------------------------------------------------------------------------------------------ ranks and devices
def device_id(device: str) -> str:
    """What identifies ``device`` across processes: the GPU's UUID (under ``--gpus-per-task`` every rank calls its
    GPU ``cuda:0``), else ``cpu``."""
    if not device.startswith("cuda"):
        return "cpu"
    index = int(device[5:]) if device[5:].isdigit() else torch.cuda.current_device()
    uuid = str(torch.cuda.get_device_properties(index).uuid)
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


def device_line(engine: Engine, rank: int, host: str) -> str:
    """This rank's line in the file's ``devices`` attribute."""
    gpu = f" gpu {device_id(engine.device)}" if engine.device.startswith("cuda") else ""
    return f"rank {rank} host {host} device {engine.device}{gpu} threads {engine.threads}"


def ranks_per_device(ids: Sequence[Tuple[str, str]]) -> List[int]:
    """For each rank's (host, device id): how many ranks use that device (CPUs count as unshared)."""
    counts: Dict[Tuple[str, str], int] = {}
    for key in ids:
        counts[key] = counts.get(key, 0) + 1
    return [1 if dev == "cpu" else counts[(host, dev)] for host, dev in ids]


def sharing_warning(ids: Sequence[Tuple[str, str]]) -> Optional[str]:
    """One line when ranks share a GPU (more ranks than GPUs on a node), else None."""
    shared = sorted({(host, dev, n) for (host, dev), n in zip(ids, ranks_per_device(ids)) if n > 1})
    if not shared:
        return None
    where = ", ".join(f"{n} on {dev} on {host}" for host, dev, n in shared[:4])
    return (f"ranks share GPUs ({where}{', ...' if len(shared) > 4 else ''}): each gets part of the card and "
            "its memory, and a GPU in exclusive-process mode refuses the second rank; start one rank per GPU "
            "(e.g. --ntasks-per-node equal to the GPUs per node)")


def count_ranks_on_device(engine: Engine, comm: Any) -> int:
    """How many ranks of ``comm`` (collective) use this rank's device; warns once (rank 0) when GPUs are
    shared."""
    ids = comm.allgather((comm.host, device_id(engine.device)))
    if comm.is_root:
        message = sharing_warning(ids)
        if message:
            print(f"distland: warning: {message}", file=sys.stderr)
    return ranks_per_device(ids)[comm.rank]
