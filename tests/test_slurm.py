"""End-to-end tests on a real one-node SLURM: `distland launch slurm` renders a job, `sbatch --wait` runs it.

A session fixture starts munged, slurmctld and slurmd with .ci/slurm_up.sh in a fresh folder and always stops
them with .ci/slurm_down.sh. Needs root, the Debian packages munge, slurmctld, slurmd and slurm-client, and
ports 6817/6818. When those are missing the tests fail instead of skipping, because CI installs them and a
silent skip would hide a broken launch path. Run only these with `python -m pytest -m slurm`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List

import h5py
import numpy as np
import pytest

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parent.parent
UP, DOWN = ROOT / ".ci" / "slurm_up.sh", ROOT / ".ci" / "slurm_down.sh"
NEEDED = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "sinfo", "srun")
JOB_TIMEOUT_S = 240


@dataclass
class Cluster:
    run: Path
    env: Dict[str, str]
    timings: Dict[str, float] = field(default_factory=dict)

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for log in sorted((self.run / "log").glob("*.log")):
            parts.append(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)


@pytest.fixture(scope="session")
def slurm() -> Iterator[Cluster]:
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"SLURM tests need {', '.join(missing)} on PATH: apt-get install munge slurmctld slurmd "
                    "slurm-client (bash .ci/install.sh does it), or deselect them with -m 'not slurm'",
                    pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("SLURM tests start slurmd and munged and must run as root (CI containers do); "
                    "deselect them with -m 'not slurm'", pytrace=False)
    # Not pytest's tmp_path: its folders are private (0700) and munged insists its socket folder be traversable.
    run = Path(tempfile.mkdtemp(prefix="distland-slurm-"))
    cluster = Cluster(run, dict(os.environ, SLURM_CONF=str(run / "slurm.conf")))
    t0 = time.monotonic()
    try:
        up = subprocess.run(["bash", str(UP), str(run)], capture_output=True, text=True, timeout=90)
        if up.returncode != 0:
            pytest.fail(f"{UP.relative_to(ROOT)} failed (exit {up.returncode}):\n{up.stdout}\n{up.stderr}",
                        pytrace=False)
        cluster.timings["slurm_up_s"] = time.monotonic() - t0
        yield cluster
    finally:
        subprocess.run(["bash", str(DOWN), str(run)], capture_output=True, text=True, timeout=60)
        print(f"\nSLURM timings: {', '.join(f'{k} {v:.1f}' for k, v in cluster.timings.items())}")
        shutil.rmtree(run, ignore_errors=True)


def sbatch_wait(cluster: Cluster, script: Path, cwd: Path) -> subprocess.CompletedProcess:
    """Submit and block until the job ends; sbatch --wait exits with the job's exit code."""
    try:
        return subprocess.run(["sbatch", "--wait", str(script)], cwd=cwd, env=cluster.env, capture_output=True,
                              text=True, timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"job {script} did not finish within {JOB_TIMEOUT_S} s\n{cluster.log_tail()}", pytrace=False)


def job_log(log_dir: Path) -> str:
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')}" for p in sorted(log_dir.glob("*.out")))


def write_job(path: Path, body: List[str], log_dir: Path, ntasks: int) -> Path:
    path.write_text("\n".join(["#!/bin/bash", f"#SBATCH --output={log_dir}/%x-%j.out", f"#SBATCH --ntasks={ntasks}",
                               "#SBATCH --overcommit", "#SBATCH --time=00:02:00", "set -euo pipefail", *body]) + "\n")
    return path


# ------------------------------------------------------------------------------------------------ harness
def test_batch_job_runs(slurm: Cluster, tmp_path: Path) -> None:
    t0 = time.monotonic()
    script = write_job(tmp_path / "hostname.sbatch", ["hostname", 'echo "tasks=$SLURM_NTASKS"'], tmp_path, 1)
    done = sbatch_wait(slurm, script, tmp_path)
    slurm.timings["hostname_job_s"] = time.monotonic() - t0
    assert done.returncode == 0, f"{done.stderr}\n{job_log(tmp_path)}\n{slurm.log_tail()}"
    assert "tasks=1" in job_log(tmp_path)


def test_srun_pmix_gives_one_world(slurm: Cluster, tmp_path: Path) -> None:
    probe = "from mpi4py import MPI; c = MPI.COMM_WORLD; print(f'rank {c.rank} of {c.size}', flush=True)"
    script = write_job(tmp_path / "mpi.sbatch", [f"srun --mpi=pmix {sys.executable} -c \"{probe}\""], tmp_path, 3)
    done = sbatch_wait(slurm, script, tmp_path)
    log = job_log(tmp_path)
    assert done.returncode == 0, f"{done.stderr}\n{log}\n{slurm.log_tail()}"
    assert sorted(ln for ln in log.splitlines() if ln.startswith("rank")) == [f"rank {r} of 3" for r in range(3)]


# ------------------------------------------------------------------------------------------------ distland
@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the surface jobs run: the demo config's relative paths (its checkpoint, trained on first use) land
    here, not in the checkout, and the second job reuses the checkpoint that the first one trained."""
    return tmp_path_factory.mktemp("jobs")


@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_rendered_surface_job(slurm: Cluster, workdir: Path, tmp_path: Path, launcher: str) -> None:
    config = ROOT / "configs" / "demo.yaml"
    assert config.is_file(), f"{config} is missing (the demo config this test runs)"
    out, job, logs = tmp_path / "s.h5", tmp_path / "job.sbatch", tmp_path / "logs"
    opts = ["--opt", "ntasks_per_node=3", "--opt", "overcommit=true", "--opt", "gpus_per_task=0",
            "--opt", "time=00:05:00", "--opt", f"output={logs}/%x-%j.out", "--opt", f"job_name=surface-{launcher}",
            # The job runs where sbatch is called and inherits this environment, but not necessarily our venv.
            "--opt", f"command={sys.executable} -m distland", "--launcher", launcher]
    if launcher == "mpirun":
        opts += ["--opt", "env.OMPI_ALLOW_RUN_AS_ROOT=1", "--opt", "env.OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"]
    sets = ["--set", f"output={out}", "--set", "grid.x=[-1,1,5]", "--set", "grid.y=[-1,1,5]"]
    render = subprocess.run([sys.executable, "-m", "distland", "launch", "slurm", str(config), *opts, *sets,
                             "--out", str(job)], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert render.returncode == 0, f"distland launch slurm failed:\n{render.stdout}\n{render.stderr}"
    assert logs.is_dir(), "distland launch slurm --out should create the log folder"

    t0 = time.monotonic()
    done = sbatch_wait(slurm, job, workdir)
    slurm.timings[f"surface_{launcher}_job_s"] = time.monotonic() - t0
    log = job_log(logs)
    assert done.returncode == 0, f"job failed: {done.stderr}\n{log}\n{slurm.log_tail()}"
    assert "3 ranks" in log, log

    with h5py.File(out, "r") as f:
        assert np.asarray(f["done"][()], dtype=bool).all(), f"not every grid point is done\n{log}"
        loss = np.asarray(f["train_loss"][()])
        assert loss.shape == (5, 5) and np.isfinite(loss).all(), f"train_loss: {loss}"
        assert int(f.attrs["nranks"]) == 3, "the job ran as something other than one 3-rank MPI world"
