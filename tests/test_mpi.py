"""MPI tier: real ``mpirun -np 2/3`` jobs through the CLI. Never skipped: CI installs OpenMPI and parallel h5py,
and a missing piece is a failure with the reason."""
from __future__ import annotations

import json

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import h5py
import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.mpi
TESTS = Path(__file__).resolve().parent
BASE = {
    "model": "plugins:slow_mlp",
    "plugins": ["plugins"],     # tests/plugins.py: opted in, as every plug-in must be
    "data": {"name": "digits", "max_samples": 64, "batch_size": 32},
    "grid": {"x": [-1.0, 1.0, 7], "y": [-0.5, 1.0, 5]},   # non-square on purpose
    "sweep": {"progress": False},
}


def _env(ranks_threads: int = 1) -> dict:
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1",
               OMPI_MCA_btl="self,vader", OMP_NUM_THREADS=str(ranks_threads), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]))
    return env


def _need(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} not found: the MPI tier needs OpenMPI (run .ci/install.sh)"
    return path


def write_config(tmp: Path, name: str, **changes) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in changes.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    cfg.setdefault("output", str(tmp / f"{name}.h5"))
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def distland_cmd(np_: int, config: Path, *extra: str) -> List[str]:
    cmd = [sys.executable, "-m", "distland", "surface", str(config), *extra]
    if np_ == 0:
        return cmd
    return [_need("mpirun"), "-np", str(np_), *cmd]


def run(np_: int, config: Path, *extra: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(distland_cmd(np_, config, *extra), env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def arrays(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("train_loss", "train_acc", "done")}


def assert_same(a: dict, b: dict) -> None:
    assert a["done"].all() and b["done"].all()
    for k in ("train_loss", "train_acc"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-9, err_msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ref")
    cfg = write_config(tmp, "serial")
    r = run(0, cfg)
    assert r.returncode == 0, r.stderr
    return arrays(tmp / "serial.h5")


def test_h5py_has_mpi():
    assert h5py.get_config().mpi, "h5py was built without MPI: rebuild with HDF5_MPI=ON (see .ci/install.sh)"


@pytest.mark.parametrize("np_", [2, 3])
def test_mpi_equals_serial(tmp_path, reference, np_):
    cfg = write_config(tmp_path, f"np{np_}")
    r = run(np_, cfg)
    assert r.returncode == 0, r.stderr
    out = arrays(tmp_path / f"np{np_}.h5")
    assert_same(out, reference)
    # bit-for-bit: same arithmetic on every rank
    assert np.array_equal(out["train_loss"], reference["train_loss"])
    with h5py.File(tmp_path / f"np{np_}.h5", "r") as f:
        assert f.attrs["io"] == "mpio"
        assert len(f.attrs["devices"]) == np_
    assert r.stdout.count("distland surface:") == 1  # only rank 0 prints the summary


def test_bf16_under_mpi_records_its_error_and_streamed_data_changes_nothing(tmp_path, reference):
    # Reduced precision: root measures the error after the collective close; every rank streams its data.
    cfg = write_config(tmp_path, "bf16", engine__precision="bf16", engine__stream_data="on")
    r = run(2, cfg)
    assert r.returncode == 0, r.stderr
    assert "precision bf16: loss within" in r.stdout
    out = arrays(tmp_path / "bf16.h5")
    with h5py.File(tmp_path / "bf16.h5", "r") as f:
        check = json.loads(f.attrs["precision_check"])
        assert json.loads(f.attrs["engine"])["stream_data"] == "on"
        assert int(f.attrs["compiled_ranks"]) == 0
    measured = np.max(np.abs(out["train_loss"] - reference["train_loss"]) / np.abs(reference["train_loss"]))
    assert 0 < check["max_rel_loss_error"] < 0.05 and 0 < measured < 0.05
    # Exact and streamed: equal to the serial reference bit for bit.
    cfg = write_config(tmp_path, "streamed", engine__stream_data="on")
    r = run(2, cfg)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(arrays(tmp_path / "streamed.h5")["train_loss"], reference["train_loss"])


def test_root_writer_fallback_equals_serial(tmp_path, reference):
    cfg = write_config(tmp_path, "fallback", sweep__io="root")
    r = run(3, cfg)
    assert r.returncode == 0, r.stderr
    assert_same(arrays(tmp_path / "fallback.h5"), reference)
    with h5py.File(tmp_path / "fallback.h5", "r") as f:
        assert f.attrs["io"] == "root"


def test_rank_failure_aborts_job_fast(tmp_path):
    cfg = write_config(tmp_path, "fail", model_args={"delay": 0.01, "fail_rank": 2, "fail_after": 6})
    t0 = time.monotonic()
    r = run(3, cfg, timeout=120)
    elapsed = time.monotonic() - t0
    assert r.returncode != 0
    assert elapsed < 60, f"job took {elapsed:.0f} s to die"
    assert "injected failure on rank 2" in r.stderr
    assert "rank 2" in r.stderr and os.uname().nodename in r.stderr
    # nothing lost: every point marked done holds a value, and a rerun without the fault completes the grid
    with h5py.File(tmp_path / "fail.h5", "r") as f:
        done, loss = f["done"][()].astype(bool), f["train_loss"][()]
    assert np.isfinite(loss[done]).all() and np.isnan(loss[~done]).all()


def test_config_error_under_mpi_is_clean(tmp_path):
    cfg = write_config(tmp_path, "bad", model="no_such_model")
    r = run(3, cfg, timeout=120)
    assert r.returncode != 0
    assert r.stderr.count("unknown model 'no_such_model'") == 1, r.stderr
    assert not (tmp_path / "bad.h5").exists()


def _wait_for_points(path: Path, n: int, proc: subprocess.Popen, timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "job ended before it could be interrupted"
        if path.exists():
            try:
                with h5py.File(path, "r", locking=False) as f:
                    if "done" in f and f.attrs.get("distland_layout") is not None:
                        k = int(f["done"][()].sum())
                        if k >= n:
                            return k
            except (OSError, KeyError):
                pass
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} points done after {timeout} s")


def _rank_pids(marker: str) -> List[int]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out if int(p) != os.getpid()]


def test_kill9_then_resume_with_fewer_ranks(tmp_path, reference):
    cfg = write_config(tmp_path, "killed", model_args={"delay": 0.02})
    out = tmp_path / "killed.h5"
    proc = subprocess.Popen(distland_cmd(3, cfg), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _wait_for_points(out, 6, proc)
        pids = [p for p in _rank_pids(str(cfg)) if "mpirun" not in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(pids) >= 2, pids
        os.kill(sorted(pids)[-1], signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    with h5py.File(out, "r") as f:
        done = f["done"][()].astype(bool)
        partial = f["train_loss"][()]
    assert 0 < done.sum() < done.size, "the kill should have left a partial file"
    np.testing.assert_allclose(partial[done], reference["train_loss"][done], rtol=1e-6)
    r = run(2, cfg)  # resume with fewer ranks
    assert r.returncode == 0, r.stderr
    assert f"computed {done.size - done.sum()} point(s)" in r.stdout
    assert_same(arrays(out), reference)


def test_second_job_on_same_output_refused(tmp_path):
    """A second job on an output that a running job writes is refused at once; the first job is then killed
    (it could otherwise finish before the second one has even started, on a loaded machine) and a rerun
    completes the grid from what it saved: nothing lost."""
    cfg = write_config(tmp_path, "busy")
    out = tmp_path / "busy.h5"
    slow = {**_env(), "DISTLAND_TEST_DELAY": "2.0"}   # ~70 s of work: outlasts the second job's start
    first = subprocess.Popen(distland_cmd(2, cfg), env=slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        _wait_for_points(out, 1, first)
        second = run(2, cfg, timeout=120)
        assert first.poll() is None, "the first job ended before the second was refused: the test proves nothing"
        assert second.returncode != 0
        assert "another distland job is writing" in second.stderr
        pids = [p for p in _rank_pids(str(cfg)) if "mpirun" not in Path(f"/proc/{p}/cmdline").read_text()]
        os.kill(sorted(pids)[-1], signal.SIGKILL)   # a rank dies: mpirun ends the job (as in the kill -9 test)
        first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.communicate(timeout=60)
    saved = arrays(out)["done"]
    assert 0 < saved.sum() < saved.size
    r = run(2, cfg, timeout=120)   # the same job, at full speed: resumes
    assert "computed" in r.stdout and f"computed {saved.size - int(saved.sum())} point(s)" in r.stdout, r.stdout
    assert r.returncode == 0, r.stderr
    assert arrays(out)["done"].all()


def test_large_units_do_not_deadlock(tmp_path):
    """Units and results far above MPI's eager limit (rendezvous sends both ways) must not deadlock: a worker
    blocked sending its results while the coordinator sends it the next unit was a real hang. Units travel as
    runs of indices, so a large unit message needs scattered pending points: a resume of a checkerboard."""
    cfg = write_config(tmp_path, "large", data={"name": "digits", "max_samples": 16, "split": "both"},
                       grid={"x": [-1.0, 1.0, 100], "y": [-1.0, 1.0, 100]},
                       sweep={"progress": False, "chunk": 2500, "io": "root"})
    r = run(0, cfg, timeout=240)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "large.h5"
    with h5py.File(out, "r+") as f:
        full = {k: f[k][()] for k in ("train_loss", "test_loss", "train_acc", "test_acc")}
        done = f["done"][()]
        done[0::2, 0::2] = done[1::2, 1::2] = False   # every other point, so units are 2,500 runs of one
        f["done"][...] = done
        for k, v in full.items():
            f[k][...] = np.where(done, v, np.nan)
    r = run(3, cfg, timeout=240)
    assert r.returncode == 0, r.stderr
    assert "computed 5000 point(s)" in r.stdout
    with h5py.File(out, "r") as f:
        assert f["done"][()].all()
        for k, v in full.items():
            assert np.array_equal(f[k][()], v), k


def test_a_plugged_quantity_joins_an_mpi_surface_and_equals_serial(tmp_path, reference):
    """The seam under MPI: a second quantity (tests/plugins.py CoordQuantity) added to a 2-rank loss surface by a
    3-rank job: its own datasets and done mask, spread over the ranks, the loss not recomputed."""
    cfg = write_config(tmp_path, "q", sweep__chunk=1)
    assert run(2, cfg).returncode == 0
    loss_before = arrays(tmp_path / "q.h5")
    cfg = write_config(tmp_path, "q", sweep__chunk=1, quantities=["loss", "plugins:CoordQuantity"])
    r = run(3, cfg)
    assert r.returncode == 0, r.stderr
    with h5py.File(tmp_path / "q.h5", "r") as f:
        x, y = f["xcoordinates"][()], f["ycoordinates"][()]
        np.testing.assert_array_equal(f["coord_sum"][()], x[:, None] + 10 * y[None, :])
        assert f["coord_done"][()].all() and int(f.attrs["coord_points"]) == x.size * y.size
        assert len(set(f["coord_rank"][()].ravel().tolist())) > 1   # the points were spread over ranks
    assert_same(arrays(tmp_path / "q.h5"), loss_before)
    assert np.array_equal(arrays(tmp_path / "q.h5")["train_loss"], loss_before["train_loss"])


def test_mpi_lock_on_the_real_path_and_creation_by_rename(tmp_path):
    """A 2-rank job through a symlink is refused while the file it points to is locked (the lock is keyed on the
    resolved path), and creates nothing; accepted, it creates the target collectively under a temporary name, renames
    it into place and leaves no temporary and no lock file."""
    from distland.surfacefile import JobLock

    target, link = tmp_path / "a.h5", tmp_path / "b.h5"
    link.symlink_to(target.name)  # dangling until the job creates a.h5
    cfg = write_config(tmp_path, "link", output=str(link))
    held = JobLock(str(target))
    held.acquire()
    try:
        r = run(2, cfg, "--overwrite")
    finally:
        held.release()
    assert r.returncode != 0 and "another distland job is writing" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not target.exists()
    r = run(2, cfg)
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and target.is_file()
    with h5py.File(target, "r") as f:
        assert f.attrs["io"] == "mpio" and f["done"][()].all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "b.h5", "link.yaml"]


def test_a_hessian_map_under_mpi_equals_serial(tmp_path):
    """λmax/λmin per point (quantities: [loss, hessian]) from 2 ranks equal the serial map: every point starts
    Lanczos from the same seeded vector, whichever rank computes it."""
    maps = {}
    for np_ in (0, 2):
        cfg = write_config(tmp_path, f"h{np_}", model="plugins:bn_mlp", quantities=["loss", "hessian"],
                           grid={"x": [-1.0, 1.0, 3], "y": [-1.0, 1.0, 3]}, data__max_samples=32,
                           hessian__samples=24, sweep__chunk=1)
        r = run(np_, cfg)
        assert r.returncode == 0, r.stderr
        with h5py.File(tmp_path / f"h{np_}.h5", "r") as f:
            assert f["hessian_done"][()].all()
            maps[np_] = {k: f[k][()] for k in ("max_eig", "min_eig", "hessian_hvps")}
    for k, v in maps[0].items():
        np.testing.assert_allclose(maps[2][k], v, rtol=1e-6, atol=0, err_msg=k)
    assert (maps[0]["min_eig"] < maps[0]["max_eig"]).all()
