#!/usr/bin/env bash
# The first minutes on a GPU: bench/gpu_check.py (what the engine does on this card) then bench/gpu_e2e.py
# (`distland surface` on the GPU vs the CPU, streamed vs resident, two ranks on one GPU), under 5 minutes in all:
# gpu_check stops starting timed points at 150 s and is interrupted at 175 s (its summary is printed either way),
# the end-to-end steps get 105 s.
# Usage, from the repository root: bash bench/gpu_first_run.sh [OUTDIR]     (default OUTDIR: gpu_results)
# With the device tool: run(command="bash bench/gpu_first_run.sh $OUT", timeout_s=330)
set -u
cd "$(dirname "$0")/.."
out=${1:-gpu_results}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_mode --format=csv 2>&1 | tee "$out/gpu.txt"
timeout -k 5 185 "$py" bench/gpu_check.py --budget 150 --hard 175 --out "$out/gpu_check.json" 2>&1 \
    | tee "$out/gpu_check.log"
timeout -k 5 105 "$py" bench/gpu_e2e.py --workdir "${TMPDIR:-/tmp}/distland_gpu_e2e" --json "$out/gpu_e2e.json" 2>&1 \
    | tee "$out/gpu_e2e.log"
