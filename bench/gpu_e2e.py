"""End-to-end GPU acceptance (for a lent GPU machine, about 1–2 minutes): `distland surface` as a user runs it.

1. the same job (ResNet-56, 1,024 synthetic CIFAR-shaped images, 3×3 grid, a trained-like θ*) on the CPU and on
   the GPU: loss equal to 1e-5 (relative), accuracy equal;
2. on the GPU with 50,000 images: data streamed from the host (3 chunks of 256 MiB, double-buffered on a side
   stream) equals data resident on the device, bit for bit, at every grid point;
3. two ranks on one GPU (``mpirun -np 2``): the same values as one rank, both ranks' devices recorded with the
   same GPU UUID, ``ranks_on_device`` 2 in the engine record, and the sharing warning printed.

Each step prints PASS, FAIL or SKIP (with the reason) and its wall time; the exit status is 1 if any step failed.
Usage: ``python bench/gpu_e2e.py [--workdir DIR] [--images 1024] [--images-gpu 50000] [--grid 3]``;
``--device cpu`` runs the "GPU" side on the CPU too (a dry run of the script itself, with small data).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import trained_like  # noqa: E402

from distland.data import synthetic  # noqa: E402
from distland.models import build_model  # noqa: E402

RESULTS: List[Tuple[str, str, str, float]] = []


def record(step: str, verdict: str, detail: str, seconds: float) -> None:
    RESULTS.append((step, verdict, detail, seconds))
    print(f"[{verdict}] {step} ({seconds:.0f} s): {detail}", flush=True)


def write_config(path: Path, ckpt: Path, images: int, grid: int, out: Path, model: str) -> None:
    path.write_text(
        f"model: {model}\ncheckpoint: {ckpt}\n"
        f"data: {{name: synthetic, split: train, options: {{num_samples: {images}}}}}\n"
        f"directions: {{norm: filter, ignore: biasbn, seed: 0}}\n"
        f"grid: {{x: [-0.5, 0.5, {grid}], y: [-0.5, 0.5, {grid}]}}\n"
        f"output: {out}\n")


def surface(cfg: Path, sets: List[str], ranks: int = 1) -> Tuple[float, str]:
    """Run `distland surface`; returns (wall seconds, stderr). Raises on a non-zero exit."""
    cmd = [sys.executable, "-m", "distland", "surface", str(cfg), "--overwrite", "--verbose"]
    for s in sets:
        cmd += ["--set", s]
    if ranks > 1:
        version = subprocess.run(["mpirun", "--version"], capture_output=True, text=True).stdout
        ompi = ["--oversubscribe", "-x", "PYTHONPATH"] if "Open MPI" in version or "OpenRTE" in version else []
        cmd = ["mpirun", "-np", str(ranks), *ompi] + cmd
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr[-1500:]}")
    return time.perf_counter() - t0, proc.stderr


def read(path: Path) -> Tuple[Dict[str, np.ndarray], Dict[str, object]]:
    with h5py.File(path, "r") as f:
        values = {k: np.asarray(f[k][()]) for k in ("train_loss", "train_acc")}
        attrs = {k: f.attrs[k] for k in f.attrs}
    return values, attrs


def step(name: str, fn) -> None:
    t0 = time.perf_counter()
    try:
        verdict, detail = fn()
    except Exception as e:  # noqa: BLE001 - one failed step must not hide the others
        verdict, detail = "FAIL", f"{type(e).__name__}: {str(e)[:1500]}"
    record(name, verdict, detail, time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="gpu_e2e")
    ap.add_argument("--json", default="", help="where to write the results (default: WORKDIR/gpu_e2e.json)")
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--images", type=int, default=1024, help="images for the CPU-vs-GPU comparison")
    ap.add_argument("--images-gpu", type=int, default=50_000, help="images for streamed-vs-resident and 2 ranks")
    ap.add_argument("--grid", type=int, default=3)
    ap.add_argument("--device", default="cuda", help="the accelerated side (cpu: a dry run of the script)")
    args = ap.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    gpu = args.device
    t0 = time.perf_counter()
    # θ*: BatchNorm calibrated on the data, the last layer fitted to the synthetic labels (a loss of order 1
    # and an accuracy well above chance, where both comparisons mean something).
    torch.manual_seed(0)
    model = build_model(args.model)
    x, y = synthetic.load("train", num_samples=args.images)
    dev = torch.device(gpu if gpu != "cpu" and torch.cuda.is_available() else "cpu")
    _, stats = trained_like(model, x, dev, labels=y)
    ckpt = work / "theta.pt"
    torch.save(model.state_dict(), ckpt)
    record("θ* prepared", "INFO", f"fitted loss {stats['loss']:.3f}, accuracy {stats['acc']:.1f}%",
           time.perf_counter() - t0)
    small, large = work / "small.yaml", work / "large.yaml"

    def cpu_vs_gpu() -> Tuple[str, str]:
        write_config(small, ckpt, args.images, args.grid, work / "cpu.h5", args.model)
        t_cpu, _ = surface(small, ["engine.device=cpu", f"output={work / 'cpu.h5'}"])
        t_gpu, _ = surface(small, [f"engine.device={gpu}", f"output={work / 'gpu.h5'}"])
        a, _ = read(work / "cpu.h5")
        b, attrs = read(work / "gpu.h5")
        rel = float(np.max(np.abs(a["train_loss"] - b["train_loss"]) / np.abs(a["train_loss"])))
        acc = float(np.max(np.abs(a["train_acc"] - b["train_acc"])))
        engine = json.loads(attrs["engine"])
        ok = rel <= 1e-5 and acc == 0.0
        return ("PASS" if ok else "FAIL",
                f"max rel. loss diff {rel:.1e} (≤ 1e-5), max accuracy diff {acc:.3g} points (must be 0); CPU job "
                f"{t_cpu:.1f} s, GPU job {t_gpu:.1f} s; GPU engine {engine}; loss range "
                f"{a['train_loss'].min():.3f}–{a['train_loss'].max():.3f}")

    def streamed_vs_resident() -> Tuple[str, str]:
        write_config(large, ckpt, args.images_gpu, args.grid, work / "resident.h5", args.model)
        t_res, _ = surface(large, [f"engine.device={gpu}", "engine.stream_data=off"])
        t_str, _ = surface(large, [f"engine.device={gpu}", "engine.stream_data=on", f"output={work / 'streamed.h5'}"])
        a, _ = read(work / "resident.h5")
        b, attrs = read(work / "streamed.h5")
        same = all(np.array_equal(a[k], b[k]) for k in a)
        streamed = json.loads(attrs["engine"])["stream_data"] == "on"
        return ("PASS" if same and streamed else "FAIL",
                f"bit for bit equal: {same}; recorded stream_data on: {streamed}; resident job {t_res:.1f} s, "
                f"streamed job {t_str:.1f} s")

    def two_ranks_one_gpu() -> Tuple[str, str]:
        if shutil.which("mpirun") is None:
            return "SKIP", "no mpirun on this machine (the Python mpi4py alone cannot start 2 ranks)"
        t_two, err = surface(large, [f"engine.device={gpu}", f"output={work / 'two.h5'}"], ranks=2)
        a, _ = read(work / "resident.h5")
        b, attrs = read(work / "two.h5")
        devices = [str(d) for d in attrs["devices"]]
        uuids = {d.split(" gpu ")[1].split()[0] for d in devices if " gpu " in d}
        shared = json.loads(attrs["engine"]).get("ranks_on_device")
        same = all(np.array_equal(a[k], b[k]) for k in a)
        close = all(np.allclose(a[k], b[k], rtol=1e-6, atol=0) for k in a)
        warned = "ranks share GPUs" in err
        ok = close and len(devices) == 2 and (gpu == "cpu" or (len(uuids) == 1 and shared == 2 and warned))
        return ("PASS" if ok else "FAIL",
                f"values equal to one rank: bit for bit {same}, to 1e-6 {close}; devices {devices}; "
                f"ranks_on_device {shared}; sharing warning printed {warned}; job {t_two:.1f} s")

    step(f"CPU vs GPU, {args.model}, {args.images} images, {args.grid}x{args.grid}", cpu_vs_gpu)
    step(f"streamed vs resident on the GPU, {args.images_gpu} images", streamed_vs_resident)
    step("two ranks on one GPU (mpirun -np 2)", two_ranks_one_gpu)
    print("== gpu_e2e summary ==")
    for name, verdict, detail, seconds in RESULTS:
        print(f"{verdict:4s} {name} ({seconds:.0f} s)")
    Path(args.json or work / "gpu_e2e.json").write_text(json.dumps(
        [dict(step=n, verdict=v, detail=d, seconds=s) for n, v, d, s in RESULTS], indent=1))
    return 1 if any(v == "FAIL" for _, v, _, _ in RESULTS) else 0


if __name__ == "__main__":
    sys.exit(main())
