"""Nothing already computed is lost, whatever happens: a full disk, a symlinked output, ``--overwrite`` with an
input problem, a kill during file creation, a config that tries to run code, a grid that cannot fit. Every refusal
is one line on stderr with exit status 2 and leaves the disk as it was."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from distland import cli
from distland.config import load_config
from distland.surfacefile import JobLock, SurfaceError, read
from distland.sweep import run_surface

from conftest import fingerprint, small_config, small_config_dict, write_yaml

TESTS = Path(__file__).resolve().parent
SMALL = 32  # samples: these jobs only need to be real, not accurate


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS), env.get("PYTHONPATH", "")]))
    return env


def _job(tmp: Path, output: Path, name: str = "job.yaml", **top) -> Path:
    data = small_config_dict(output, **top)
    data["data"] = {**data["data"], "max_samples": SMALL}  # type: ignore[dict-item]
    return write_yaml(tmp / name, data)


def _cli(*argv: str, cwd: Path = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distland", *argv], env=_env(), capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def _one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("distland: error: "), r.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def _leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".lock", ".creating")))


# ------------------------------------------------------------------------------------------------ a full disk
@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A small tmpfs at ``path``. CI runs as root; mounting needs it."""
    assert os.geteuid() == 0, "this test mounts a tmpfs and must run as root (as CI does)"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path, leave: int) -> None:
    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    assert shutil.disk_usage(folder).free <= leave + 4096


def test_disk_full_while_resuming_keeps_every_point_and_the_file_readable(tmp_path):
    """210 of 441 points done, resumed with a few KB free: the missing points are computed and saved (their
    storage was reserved at creation), the attributes that no longer fit are refused in one line, and the file
    stays readable and resumable elsewhere."""
    ref = tmp_path / "ref.h5"
    grid = {"x": [-1, 1, 21], "y": [-1, 1, 21]}
    run_surface(load_config(_job(tmp_path, ref, "ref.yaml", grid=grid)))
    partial = tmp_path / "partial.h5"
    shutil.copyfile(ref, partial)
    with h5py.File(partial, "r+") as f:
        done = f["done"][()]
        done.reshape(-1)[210:] = 0
        f["done"][...] = done
        for key in [k for k in f.attrs if k.startswith("sharpness.")]:
            del f.attrs[key]
    with tmpfs(tmp_path / "fs", "2m") as fs:
        out = fs / "s.h5"
        shutil.copyfile(partial, out)
        _fill(fs, 8192)
        r = _cli("surface", str(_job(tmp_path, out, grid=grid)))
        _one_line_error(r, "no space", "every finished point is saved")
        data = read(str(out))
        assert data.done.all(), "the resumed points were lost"
        expect = read(str(ref))
        for k in expect.metrics:
            np.testing.assert_array_equal(data.metrics[k], expect.metrics[k])
        assert _leftovers(fs) == []
        # At creation, on the same full disk: refused up front with the numbers, nothing written.
        with pytest.raises(SurfaceError, match="is free where .*new.h5"):
            run_surface(load_config(_job(tmp_path, fs / "new.h5", grid=grid)))
        assert not (fs / "new.h5").exists() and _leftovers(fs) == []
        before = fingerprint(out)
        with pytest.raises(SurfaceError, match="is free where"):
            run_surface(load_config(_job(tmp_path, out, grid=grid, directions={"seed": 5})), overwrite=True)
        assert fingerprint(out) == before
        moved = tmp_path / "elsewhere" / "s.h5"
        moved.parent.mkdir()
        shutil.copyfile(out, moved)
    summary = run_surface(load_config(_job(tmp_path, moved, grid=grid)))
    assert summary.computed == 0
    assert "sharpness.center_loss" in read(str(moved)).attrs


def test_a_failed_attribute_update_leaves_the_file_unchanged(tmp_path, monkeypatch):
    """The same guarantee without a mount: the space check, and a real write error in the middle of the copy."""
    from distland import surfacefile as surface
    from distland.analysis import store_report

    out = tmp_path / "s.h5"
    run_surface(small_config(out))
    before = fingerprint(out)
    monkeypatch.setattr(surface, "free_bytes", lambda path: 1000)
    with pytest.raises(SurfaceError, match="no space left"):
        store_report(str(out), {"center_loss": 1.0})
    monkeypatch.undo()

    def enospc(src, dst):
        Path(dst).write_bytes(Path(src).read_bytes()[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(surface.shutil, "copyfile", enospc)
    with pytest.raises(SurfaceError, match="the file is unchanged"):
        store_report(str(out), {"center_loss": 1.0})
    assert fingerprint(out) == before and _leftovers(tmp_path) == []
    assert read(str(out)).done.all()


# ------------------------------------------------------------------------------------------------ symlinks, locks
def test_the_lock_follows_symlinks_and_leaves_nothing_behind(tmp_path):
    a = tmp_path / "a.h5"
    b = tmp_path / "b.h5"
    run_surface(small_config(a))
    b.symlink_to(a.name)
    before = fingerprint(a)
    held = JobLock(str(a))
    held.acquire()
    try:
        with pytest.raises(SurfaceError, match="another distland job"):
            JobLock(str(b)).acquire()
        with pytest.raises(SurfaceError, match="another distland job"):
            run_surface(small_config(b, "directions.seed=9"), overwrite=True)
        assert fingerprint(a) == before
    finally:
        held.release()
    assert _leftovers(tmp_path) == [], "a released lock left its file"
    # Unlocked, --overwrite through the symlink replaces the file it points to; the link stays a link.
    run_surface(small_config(b, "directions.seed=9"), overwrite=True)
    assert b.is_symlink() and os.readlink(b) == a.name
    assert fingerprint(a) != before and read(str(b)).done.all()
    assert _leftovers(tmp_path) == []


def test_refused_jobs_create_nothing(tmp_path, capsys):
    out = tmp_path / "newdir" / "sub" / "s.h5"
    job = write_yaml(tmp_path / "job.yaml", small_config_dict(out, model="nosuchnet"))
    assert cli.main(["surface", str(job)]) == 2
    assert not (tmp_path / "newdir").exists(), "a refused job made the output's directory"
    job = write_yaml(tmp_path / "job.yaml", small_config_dict(f"{tmp_path}/newdir/"))
    assert cli.main(["surface", str(job)]) == 2
    assert "names a directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]


def test_unknown_data_options_are_refused_with_the_valid_ones(tmp_path, capsys):
    job = write_yaml(tmp_path / "job.yaml", small_config_dict(tmp_path / "s.h5", data={"name": "synthetic",
                                                                                       "options": {"nsamples": 8}}))
    assert cli.main(["surface", str(job)]) == 2
    err = capsys.readouterr().err
    assert "'nsamples' is not an option" in err and "num_samples" in err and "seed" in err
    assert not (tmp_path / "s.h5").exists()


def test_a_foreign_file_with_only_root_attributes_is_kept(tmp_path, capsys):
    out = tmp_path / "theirs.h5"
    with h5py.File(out, "w") as f:
        f.attrs["experiment"] = "someone else's"
    before = fingerprint(out)
    assert cli.main(["surface", str(write_yaml(tmp_path / "job.yaml", small_config_dict(out)))]) == 2
    assert "not a distland surface file" in capsys.readouterr().err
    assert fingerprint(out) == before


# ------------------------------------------------------------------------------------------------ --overwrite, late
BADPLUG = '''
import torch
from torch import nn


def _digits(n=40, top=9, nan_at=-1):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.arange(n) % (top + 1)
    if nan_at >= 0:
        x[nan_at, 0, 1, 1] = float("inf")
    return x, y


def eleven_labels(split):
    return _digits(top=11)


def ignore_index(split):
    x, y = _digits()
    y[5] = -100
    return x, y


def empty(split):
    x, y = _digits()
    return x[:0], y[:0]


def nan_late(split):
    return _digits(n=600, nan_at=555)


def as_int(split):
    return 3


def three(split):
    x, y = _digits()
    return x, y, y


def key_error(split):
    return {}["images"]


class Flat(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 1)

    def forward(self, x):
        return self.fc(x.flatten(1)).squeeze(1)


def flat():
    return Flat()


def not_a_module():
    return "model"
'''

LATE = [  # (config changes, words of the one-line error)
    ({"data": {"name": "badplug:eleven_labels"}}, ("label 11", "outputs 10 classes")),
    ({"data": {"name": "badplug:ignore_index"}}, ("label -100", "ignore_index")),
    ({"data": {"name": "badplug:empty"}}, ("empty",)),
    ({"data": {"name": "badplug:nan_late"}}, ("1 NaN/inf input",)),
    ({"model": "badplug:flat"}, ("output (150,)", "(batch, classes)")),
    ({"grid": {"x": [-1e39, 1e39, 3], "y": [-1, 1, 3]}}, ("grid.x", "float32")),
]


def test_weights_beyond_float32_are_refused():
    import torch

    from distland.checks import check_coordinates
    from distland.grid import Grid

    grid = Grid(np.linspace(-1e37, 1e37, 3), None)
    check_coordinates(grid, {"w": torch.tensor([1e38])}, [{"w": np.array([10.0])}])  # 2e38: fits
    with pytest.raises(ValueError, match="magnitude 1e\\+39 in 'w', beyond float32's range"):
        check_coordinates(grid, {"w": torch.tensor([1e38])}, [{"w": np.array([90.0])}])


@pytest.fixture
def badplug(tmp_path, monkeypatch):
    (tmp_path / "badplug.py").write_text(BADPLUG)
    monkeypatch.setenv("DISTLAND_PLUGINS", "badplug")  # the opt-in (the config's `plugins:` list works too)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "badplug", raising=False)
    yield tmp_path
    sys.modules.pop("badplug", None)


@pytest.mark.parametrize("changes,words", LATE, ids=[w[0] for _, w in LATE])
def test_overwrite_keeps_the_old_file_when_the_new_job_is_bad(badplug, capsys, changes, words):
    out = badplug / "s.h5"
    run_surface(small_config(out))
    before = fingerprint(out)
    data = small_config_dict(out, **changes)
    if "data" in changes:
        data["data"] = {**changes["data"], "max_samples": 0}
    assert cli.main(["surface", str(write_yaml(badplug / "job.yaml", data)), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distland: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)
    assert fingerprint(out) == before, "--overwrite destroyed a finished file for a job that could not run"
    assert _leftovers(badplug) == []


BROKEN = [  # plug-ins that break: one line, exit 2, no file
    ({"model": "badplug:not_a_module"}, ("returned str", "torch.nn.Module")),
    ({"data": {"name": "badplug:as_int"}}, ("must return (inputs, targets)", "int")),
    ({"data": {"name": "badplug:three"}}, ("must return (inputs, targets)", "length 3")),
    ({"data": {"name": "badplug:key_error"}}, ("failed on split", "KeyError", "images")),
    ({"model_args": {"widht": 3}}, ("model_args do not fit", "widht")),
]


@pytest.mark.parametrize("changes,words", BROKEN, ids=[w[0] for _, w in BROKEN])
def test_broken_plugins_are_one_line_errors(badplug, capsys, changes, words):
    out = badplug / "s.h5"
    data = small_config_dict(out, **changes)
    assert cli.main(["surface", str(write_yaml(badplug / "job.yaml", data))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distland: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)
    assert not out.exists() and _leftovers(badplug) == []


# ------------------------------------------------------------------------------------------------ kill -9
KILLER = '''
import os, sys
from distland import surfacefile as surface
real = surface.SurfaceWriter._create

def dying(f, spec):
    real(f, spec)
    f.flush()
    os.kill(os.getpid(), 9)  # the whole layout half on disk, no rename yet

surface.SurfaceWriter._create = staticmethod(dying)
from distland.cli import main
sys.exit(main(sys.argv[1:]))
'''


def test_kill_during_creation_leaves_the_output_path_alone(tmp_path):
    (tmp_path / "killer.py").write_text(KILLER)
    out = tmp_path / "s.h5"
    job = _job(tmp_path, out)
    killed = subprocess.run([sys.executable, str(tmp_path / "killer.py"), "surface", str(job)], env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9
    assert not out.exists(), "a killed creation left a file at the output path"
    from distland.surfacefile import temporary_path

    assert Path(temporary_path(str(out))).exists()  # the half-made temporary: reused by the next run
    assert run_surface(load_config(job)).computed == 9
    assert read(str(out)).done.all() and _leftovers(tmp_path) == []
    # With --overwrite and a kill: the old, finished file survives intact.
    before = fingerprint(out)
    killed = subprocess.run([sys.executable, str(tmp_path / "killer.py"), "surface",
                             str(_job(tmp_path, out, "other.yaml", directions={"seed": 4})), "--overwrite"],
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9 and fingerprint(out) == before
    assert run_surface(load_config(job)).computed == 0  # the file's own job: nothing to do; temporary removed
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------ plug-ins
def test_configs_cannot_run_code(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "ran"
    job = write_yaml(tmp_path / "job.yaml", small_config_dict(
        tmp_path / "s.h5", model="subprocess:run", model_args={"args": f"touch {marker}", "shell": True}))
    assert cli.main(["surface", str(job)]) == 2
    assert "standard library" in capsys.readouterr().err
    job = write_yaml(tmp_path / "job2.yaml", small_config_dict(tmp_path / "s.h5", plugins=["subprocess"],
                                                                 model="subprocess:run"))
    assert cli.main(["surface", str(job)]) == 2
    assert "plugins: 'subprocess' is part of Python's standard library" in capsys.readouterr().err
    job = write_yaml(tmp_path / "job3.yaml", small_config_dict(tmp_path / "s.h5"))
    assert cli.main(["surface", str(job), "--set", f"data.name=os:system"]) == 2
    assert "standard library" in capsys.readouterr().err
    # A module outside the standard library runs only when opted in: not even imported otherwise.
    (tmp_path / "sideeffect.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                            "from distland.models.demo import *\n"
                                            "def make():\n    from distland.models import build_model\n"
                                            "    return build_model('democnn')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "sideeffect", raising=False)
    assert cli.main(["surface", str(job), "--set", "model=sideeffect:make"]) == 2
    assert "not an opted-in plug-in" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "s.h5").exists()
    monkeypatch.setenv("DISTLAND_PLUGINS", "sideeffect")
    assert cli.main(["surface", str(job), "--set", "model=sideeffect:make"]) == 0
    assert marker.exists()
    capsys.readouterr()
    # `info` reads the stored config as data: nothing is imported, whatever it names.
    marker.unlink()
    sys.modules.pop("sideeffect", None)
    monkeypatch.delenv("DISTLAND_PLUGINS")
    assert cli.main(["info", str(tmp_path / "s.h5")]) == 0
    assert "sideeffect:make" in capsys.readouterr().out and not marker.exists()


# ------------------------------------------------------------------------------------------------ resources
def test_a_grid_that_cannot_fit_is_refused_with_the_numbers(tmp_path, capsys, monkeypatch):
    out = tmp_path / "huge.h5"
    job = write_yaml(tmp_path / "job.yaml", small_config_dict(out, grid={"x": [-1, 1, 1000000],
                                                                          "y": [-1, 1, 1000000]}))
    assert cli.main(["surface", str(job)]) == 2
    err = capsys.readouterr().err
    assert "1000000000000-point surface file needs about 15.5 TiB" in err and "free" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]
    from distland import checks

    monkeypatch.setattr(checks, "available_memory", lambda: 1 << 20)
    job = write_yaml(tmp_path / "job.yaml", small_config_dict(out, grid={"x": [-1, 1, 200], "y": [-1, 1, 200]}))
    assert cli.main(["surface", str(job)]) == 2
    err = capsys.readouterr().err
    assert "40000-point grid needs about 2.8 MiB of memory on rank 0 but only 1.0 MiB" in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ damaged files
def test_damaged_files_are_one_line_errors(tmp_path, capsys):
    out = tmp_path / "s.h5"
    run_surface(small_config(out))
    for name, damage, words in [
            ("nodone.h5", lambda f: f.__delitem__("done"), "no 'done' mask"),
            ("badconfig.h5", lambda f: f.attrs.__setitem__("config", "model: [democnn"), "'config' attribute"),
            ("listconfig.h5", lambda f: f.attrs.__setitem__("config", "- a\n- b\n"), "'config' attribute"),
            ("baddevices.h5", lambda f: f.attrs.__setitem__("devices", 7), "'devices' attribute")]:
        path = tmp_path / name
        shutil.copyfile(out, path)
        with h5py.File(path, "r+") as f:
            damage(f)
        assert cli.main(["info", str(path)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("distland: error: ") and err.count("\n") == 1 and words in err, (name, err)
    before = fingerprint(tmp_path / "nodone.h5")
    job = write_yaml(tmp_path / "job.yaml", small_config_dict(tmp_path / "nodone.h5"))
    assert cli.main(["surface", str(job)]) == 2  # resume onto it
    err = capsys.readouterr().err
    assert "damaged distland file (missing done)" in err and "--overwrite" in err
    assert fingerprint(tmp_path / "nodone.h5") == before
