"""Run one surface job (under mpirun or not) and print its summary and per-rank stats as one JSON line on rank 0.

Used by bench/throughput.py; ``python bench/sweep_stats.py CONFIG [--set k=v ...]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

from distland.config import load_config
from distland.sweep import run_surface


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    t0 = time.monotonic()
    summary = run_surface(cfg, overwrite=True)
    if summary is not None:
        print("STATS " + json.dumps({"seconds": summary.seconds, "wall": time.monotonic() - t0,
                                     "points": summary.computed, "ranks": summary.ranks,
                                     "stats": [dataclasses.asdict(s) for s in summary.stats]}), flush=True)


if __name__ == "__main__":
    main()
