"""Distributed sweep benchmark (issue: distributed sweeps), measured side by side in one run.

1. Throughput with 1 vs 2 ranks on this machine's cores, one thread per rank (target ≥ 1.8×).
2. Coordinator overhead: a trivial model on 8 and 16 oversubscribed ranks — units and points dispatched per second
   and the share of the workers' wall time not spent evaluating (target < 1%): waiting for a unit, sending
   results, waiting for the others at the end — everything but the work itself.

Usage: ``python bench/throughput.py [--quick]`` (as root, the Open MPI root variables are set for you).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import yaml

HERE = Path(__file__).resolve().parent
RANKS = (8, 16)


def env() -> Dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_btl="self,vader",
             PYTHONUNBUFFERED="1")
    if os.geteuid() == 0:
        e.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return e


def run(ranks: int, config: Path, overrides: List[str]) -> dict:
    cmd = [sys.executable, str(HERE / "sweep_stats.py"), str(config)]
    for o in overrides:
        cmd += ["--set", o]
    if ranks > 1:
        mpirun = shutil.which("mpirun")
        if not mpirun:
            raise SystemExit("mpirun not found: install OpenMPI (bash .ci/install.sh)")
        cmd = [mpirun, "-np", str(ranks), "--bind-to", "none", *cmd]
    out = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"benchmark run failed ({' '.join(cmd)}):\n{out.stderr[-3000:]}")
    line = next(l for l in out.stdout.splitlines() if l.startswith("STATS "))
    return json.loads(line[6:])


def waiting(res: dict) -> str:
    """How much of the workers' wall time was not spent evaluating: the coordinator's overhead, all of it (waiting
    for a unit, sending results, and at the end waiting for the others), and the part spent waiting for a unit."""
    workers = [s for s in res["stats"] if s["rank"] != 0]
    wall = sum(s["wall_s"] for s in workers)
    idle = 100 * (1 - sum(s["busy_s"] for s in workers) / wall)
    return (f"workers idle {idle:.2f}% of their wall time (waiting for a unit "
            f"{100 * sum(s['wait_s'] for s in workers) / wall:.2f}%, after the queue ran dry "
            f"{100 * sum(s['tail_s'] for s in workers) / wall:.2f}%)")


def sweep_seconds(res: dict) -> float:
    """Wall time of the scheduling phase (the slowest rank's), without start-up and file creation."""
    return max(s["wall_s"] for s in res["stats"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller grids (for a smoke run)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="distland-bench-"))
    n = 6 if args.quick else 10
    heavy = tmp / "heavy.yaml"
    heavy.write_text(yaml.safe_dump({
        "model": "resnet20", "data": {"name": "synthetic", "max_samples": 256, "batch_size": 128},
        "grid": {"x": [-1, 1, n], "y": [-1, 1, n]}, "output": str(tmp / "heavy.h5"),
        "engine": {"threads": 1}, "sweep": {"progress": False}}))
    print(f"== throughput: resnet20, 256 CIFAR-shaped images per point, {n}x{n} grid, 1 thread per rank")
    one = run(1, heavy, [])
    two = run(2, heavy, [f"output={tmp / 'heavy2.h5'}"])
    r1, r2 = one["points"] / sweep_seconds(one), two["points"] / sweep_seconds(two)
    print(f"1 rank : {r1:6.2f} points/s  (sweep {sweep_seconds(one):.1f} s of a {one['wall']:.1f} s run)")
    print(f"2 ranks: {r2:6.2f} points/s  (sweep {sweep_seconds(two):.1f} s of a {two['wall']:.1f} s run)")
    print(f"speed-up 2 vs 1 ranks: {r2 / r1:.2f}x  (target >= 1.8x); {waiting(two)}")

    g = 61 if args.quick else 301
    trivial = tmp / "trivial.yaml"
    trivial.write_text(yaml.safe_dump({
        "model": "mlp", "data": {"name": "digits", "max_samples": 16}, "grid": {"x": [-1, 1, g], "y": [-1, 1, g]},
        "output": str(tmp / "trivial.h5"), "engine": {"threads": 1}, "sweep": {"progress": False}}))
    print(f"\n== coordinator overhead: mlp on 16 samples (trivial), {g}x{g} = {g * g} points, oversubscribed")
    for ranks in RANKS:
        res = run(ranks, trivial, [f"output={tmp / f'trivial{ranks}.h5'}"])
        units = sum(s["units"] for s in res["stats"])
        t = sweep_seconds(res)
        print(f"{ranks:2d} ranks: {res['points'] / t:8.0f} points/s, {units / t:7.1f} units/s dispatched "
              f"({units} units in {t:.2f} s); {waiting(res)}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
