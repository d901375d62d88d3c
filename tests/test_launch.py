"""Tests of distland.launch: job scripts pinned by snapshots, option parsing, quoting, purity and the CLI.

The rendered scripts are compared with the files in tests/snapshots/. After an intended change to the
renderer, regenerate them and review the diff before committing:

    DISTLAND_UPDATE_SNAPSHOTS=1 python -m pytest tests/test_launch.py
"""
from __future__ import annotations

import argparse
import builtins
import os
import shlex
import subprocess
from pathlib import Path
from typing import List

import pytest

from distland import launch
from distland.launch import SlurmOptions, options_from_dict, parse_opts, render_mpirun, render_sbatch

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("DISTLAND_UPDATE_SNAPSHOTS") == "1"

ONE_NODE_4GPU = SlurmOptions(
    job_name="landscape", nodes=1, ntasks_per_node=4, gpus_per_task=1, cpus_per_task=8, time="02:00:00",
    account="proj123", partition="gpu", setup=["source .venv/bin/activate"],
)
FOUR_NODE_8GPU_MPIRUN = SlurmOptions(
    job_name="landscape-big", nodes=4, ntasks_per_node=8, gpus_per_task=1, cpus_per_task=6, time="1-00:00:00",
    account="proj123", partition="gpu", mem="480G", launcher="mpirun", modules=["gcc/12", "openmpi/4.1.4"],
    setup=["source $HOME/venvs/distland/bin/activate"], env={"NCCL_DEBUG": "WARN"}, hdf5_file_locking=False,
    extra_sbatch=["#SBATCH --constraint=a100"],
)
CPU = SlurmOptions(nodes=2, ntasks_per_node=16, gpus_per_task=0, cpus_per_task=2, time="00:30:00",
                   partition="cpu", command="python -m distland")
OVERRIDES = ["grid.x=[-1,1,51]", "grid.y=[-1,1,51]", "output=runs/demo.h5"]


def check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if UPDATE:
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"missing snapshot {path}; create it with DISTLAND_UPDATE_SNAPSHOTS=1"
    assert text == path.read_text(), (f"{name} differs from its snapshot; if the change is intended, regenerate with "
                                      "DISTLAND_UPDATE_SNAPSHOTS=1 and review the diff")


# ------------------------------------------------------------------------------------------------ snapshots
def test_snapshot_1node_4gpu() -> None:
    check_snapshot("slurm_1node_4gpu.sbatch", render_sbatch("configs/demo.yaml", ONE_NODE_4GPU, OVERRIDES))


def test_snapshot_4node_8gpu_mpirun() -> None:
    check_snapshot("slurm_4node_8gpu_mpirun.sbatch",
                   render_sbatch("configs/resnet.yaml", FOUR_NODE_8GPU_MPIRUN, OVERRIDES))


def test_snapshot_cpu() -> None:
    check_snapshot("slurm_cpu.sbatch", render_sbatch("configs/demo.yaml", CPU))


# ------------------------------------------------------------------------------------------------ content
def command_line(script: str, launcher: str) -> str:
    (line,) = [ln for ln in script.splitlines() if ln.startswith(launcher + " ")]
    return line


def test_srun_variant_uses_pmix() -> None:
    script = render_sbatch("c.yaml", SlurmOptions())
    line = command_line(script, "srun")
    assert "--mpi=pmix" in line
    assert shlex.split(line)[-2:] == ["surface", "c.yaml"]
    assert "mpirun" not in [ln.split()[0] for ln in script.splitlines() if ln and not ln.startswith("#")]


def test_srun_mpi_plugin_is_an_option() -> None:
    assert "--mpi=pmix_v4" in command_line(render_sbatch("c.yaml", SlurmOptions(mpi="pmix_v4")), "srun")


def test_mpirun_variant_uses_slurm_ntasks() -> None:
    script = render_sbatch("c.yaml", SlurmOptions(launcher="mpirun"))
    line = command_line(script, "mpirun")
    assert line.startswith('mpirun -np "$SLURM_NTASKS" ')
    assert not any(ln.startswith("srun ") for ln in script.splitlines())


def test_script_basics() -> None:
    script = render_sbatch("c.yaml", SlurmOptions(cpus_per_task=7, gpus_per_task=2, nodes=3, ntasks_per_node=4))
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for directive in ("--nodes=3", "--ntasks-per-node=4", "--gpus-per-task=2", "--cpus-per-task=7"):
        assert f"#SBATCH {directive}" in lines
    assert any(ln.startswith("export OMP_NUM_THREADS=7") for ln in lines)
    assert "set -euo pipefail" in lines
    assert "pitfall" in script.lower() and "--mpi=list" in script
    # sbatch reads #SBATCH lines only until the first command.
    first_command = next(i for i, ln in enumerate(lines) if ln and not ln.startswith("#"))
    assert all(i < first_command for i, ln in enumerate(lines) if ln.startswith("#SBATCH"))


def test_mpirun_requests_gpus_per_node() -> None:
    lines = render_sbatch("c.yaml", SlurmOptions(launcher="mpirun", ntasks_per_node=8, gpus_per_task=1)).splitlines()
    assert "#SBATCH --gpus-per-node=8" in lines
    assert not any(ln.startswith("#SBATCH --gpus-per-task") for ln in lines)


def test_cpu_only_requests_no_gpus() -> None:
    assert "gpus" not in render_sbatch("c.yaml", SlurmOptions(gpus_per_task=0))


def test_hdf5_locking_is_opt_in() -> None:
    default = render_sbatch("c.yaml", SlurmOptions()).splitlines()
    assert "export HDF5_USE_FILE_LOCKING=FALSE" not in default
    assert any("NFS" in ln for ln in default)
    off = render_sbatch("c.yaml", SlurmOptions(hdf5_file_locking=False)).splitlines()
    assert "export HDF5_USE_FILE_LOCKING=FALSE" in off


def test_overcommit_requests_a_total() -> None:
    lines = render_sbatch("c.yaml", SlurmOptions(nodes=2, ntasks_per_node=3, overcommit=True)).splitlines()
    assert "#SBATCH --overcommit" in lines and "#SBATCH --ntasks=6" in lines
    assert not any(ln.startswith("#SBATCH --ntasks-per-node") for ln in lines)


def test_modules_and_setup_run_before_set_u() -> None:
    lines = render_sbatch("c.yaml", SlurmOptions(modules=["cuda/12.1"], setup=["conda activate x"])).splitlines()
    assert lines.index("module load cuda/12.1") < lines.index("conda activate x") < lines.index("set -u")


# ------------------------------------------------------------------------------------------------ quoting
def test_path_with_spaces_is_quoted() -> None:
    config = "/data/my runs/it's.yaml"
    opts = SlurmOptions(env={"RUN_NAME": "a b"}, modules=["cuda 12"])
    script = render_sbatch(config, opts, ["output=/data/my runs/out.h5"])
    words = shlex.split(command_line(script, "srun"))
    assert words[-4:] == ["surface", config, "--set", "output=/data/my runs/out.h5"]
    assert shlex.quote(config) in script
    assert "export RUN_NAME='a b'" in script
    assert "module load 'cuda 12'" in script


def test_mpirun_quoting_and_hosts() -> None:
    line = render_mpirun("my dir/c.yaml", 4, ["n1:2", "n2:2"], ["output=a b.h5"])
    assert shlex.split(line) == ["mpirun", "-np", "4", "--host", "n1:2,n2:2", "distland", "surface",
                                 "my dir/c.yaml", "--set", "output=a b.h5"]
    assert render_mpirun("c.yaml", 2, command="python -m distland") == "mpirun -np 2 python -m distland surface c.yaml"


def test_directive_values_use_sbatch_quoting() -> None:
    # sbatch strips double quotes and backslash escapes on #SBATCH lines, but keeps single quotes literally.
    lines = render_sbatch("c.yaml", SlurmOptions(job_name='my "big" run', output="logs dir/%x-%j.out")).splitlines()
    assert '#SBATCH --job-name="my \\"big\\" run"' in lines
    assert '#SBATCH --output="logs dir/%x-%j.out"' in lines
    assert "#SBATCH --output=logs/%x-%j.out" in render_sbatch("c.yaml", SlurmOptions()).splitlines()


@pytest.mark.parametrize("bad", [
    {"job_name": "a\nsrun rm -rf /"},
    {"env": {"X": "1\n2"}},
    {"setup": ["ok", "two\nlines"]},
])
def test_line_breaks_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError, match="line breaks"):
        options_from_dict(bad)


# ------------------------------------------------------------------------------------------------ options
def test_unknown_option_lists_valid_ones() -> None:
    with pytest.raises(ValueError) as info:
        options_from_dict({"ntasks": 4})
    message = str(info.value)
    assert "'ntasks'" in message
    for name in ("ntasks_per_node", "gpus_per_task", "launcher", "extra_sbatch"):
        assert name in message
    with pytest.raises(ValueError, match="valid options: job_name, nodes"):
        parse_opts(["walltime=01:00:00"])


def test_parse_opts_types() -> None:
    opts = options_from_dict(parse_opts([
        "nodes=2", "overcommit=yes", "time=00:10:00", "modules=gcc", "modules=openmpi", "env.A=1", "env.B=x=y",
        "setup=source .venv/bin/activate",
    ]))
    assert opts.nodes == 2 and opts.overcommit is True and opts.time == "00:10:00"
    assert opts.modules == ["gcc", "openmpi"] and opts.env == {"A": "1", "B": "x=y"}
    assert opts.setup == ["source .venv/bin/activate"]


@pytest.mark.parametrize("items, match", [
    (["nodes"], "key=value"),
    (["nodes=two"], "integer"),
    (["overcommit=maybe"], "true or false"),
    (["env=A"], "env.NAME=value"),
    (["nodes.x=1"], "dotted"),
    (["launcher=ssh"], "launcher"),
    (["time=1h"], "HH:MM:SS"),
    (["nodes=0"], ">= 1"),
    (["gpus_per_task=-1"], ">= 0"),
    (["extra_sbatch=--exclusive"], "#SBATCH"),
])
def test_bad_opts(items: List[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        options_from_dict(parse_opts(items))


def test_yaml_sexagesimal_time_is_explained() -> None:
    with pytest.raises(ValueError, match="quote it"):
        options_from_dict({"time": 3600})


def test_direct_construction_is_checked() -> None:
    with pytest.raises(ValueError, match="nodes"):
        SlurmOptions(nodes="2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="env"):
        SlurmOptions(env={"1X": "a"})


# ------------------------------------------------------------------------------------------------ purity
def test_render_is_pure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first = render_sbatch("configs/demo.yaml", FOUR_NODE_8GPU_MPIRUN, OVERRIDES)
    assert render_sbatch("configs/demo.yaml", FOUR_NODE_8GPU_MPIRUN, OVERRIDES) == first
    mpirun_first = render_mpirun("configs/demo.yaml", 4, overrides=OVERRIDES)

    # A different environment and working directory, and no way to touch files or run programs.
    for name, value in {"SLURM_NTASKS": "99", "OMP_NUM_THREADS": "13", "HOME": "/elsewhere", "USER": "x",
                        "HDF5_USE_FILE_LOCKING": "FALSE", "SLURM_JOB_ACCOUNT": "other"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"rendering touched the outside world: {args!r}")

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", forbidden)
        m.setattr(os, "stat", forbidden)
        m.setattr(os, "getcwd", forbidden)
        m.setattr(launch.subprocess, "run", forbidden)
        again = render_sbatch("configs/demo.yaml", FOUR_NODE_8GPU_MPIRUN, OVERRIDES)
        mpirun_again = render_mpirun("configs/demo.yaml", 4, overrides=OVERRIDES)
    assert again == first and mpirun_again == mpirun_first


def test_render_does_not_mutate_options() -> None:
    opts = SlurmOptions(modules=["a"], env={"X": "1"}, setup=["s"])
    render_sbatch("c.yaml", opts, ["k=v"])
    assert opts == SlurmOptions(modules=["a"], env={"X": "1"}, setup=["s"])


# ------------------------------------------------------------------------------------------------ CLI
def cli(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="distland")
    launch.add_subcommand(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "my config.yaml"
    path.write_text("output: surface.h5\ngrid:\n  x: [-1, 1, 5]\n  y: [-1, 1, 5]\n")
    return str(path)


def test_cli_prints_script(config: str, capsys: pytest.CaptureFixture) -> None:
    args = cli(["launch", "slurm", config, "--nodes", "2", "--ntasks-per-node", "4", "--time", "00:20:00",
                "--launcher", "mpirun", "--opt", "account=proj", "--set", "grid.x=[-2,2,9]"])
    assert args.func is launch.run_cli
    assert args.func(args) == 0
    expected = render_sbatch(config, SlurmOptions(nodes=2, ntasks_per_node=4, time="00:20:00", launcher="mpirun",
                                                  account="proj"), ["grid.x=[-2,2,9]"])
    assert capsys.readouterr().out == expected


def test_cli_flag_wins_over_opt(config: str, capsys: pytest.CaptureFixture) -> None:
    args = cli(["launch", "slurm", config, "--opt", "nodes=3", "--nodes", "5"])
    assert args.func(args) == 0
    assert "#SBATCH --nodes=5" in capsys.readouterr().out.splitlines()


def test_cli_writes_file_and_log_dir(config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = cli(["launch", "slurm", config, "--opt", "output=joblogs/%x-%j.out", "--out", "job.sbatch"])
    assert args.func(args) == 0
    assert (tmp_path / "job.sbatch").read_text() == render_sbatch(config, SlurmOptions(output="joblogs/%x-%j.out"))
    assert (tmp_path / "joblogs").is_dir()   # sbatch would not create it


def test_cli_rejects_unknown_option(config: str, capsys: pytest.CaptureFixture) -> None:
    args = cli(["launch", "slurm", config, "--opt", "gpus=4"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "unknown option 'gpus'" in err and "gpus_per_task" in err


def test_cli_checks_config_and_overrides(config: str, capsys: pytest.CaptureFixture) -> None:
    args = cli(["launch", "slurm", config, "--set", "grid.w=[0,1,3]"])
    assert args.func(args) == 2
    assert "grid.w" in capsys.readouterr().err
    args = cli(["launch", "slurm", "missing.yaml"])
    assert args.func(args) == 2
    args = cli(["launch", "slurm", "missing.yaml", "--no-check"])
    assert args.func(args) == 0


def test_cli_submit_prints_job_id(config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture) -> None:
    calls = []

    def fake_run(cmd: List[str], **kwargs: object) -> object:
        calls.append((cmd, kwargs))
        return argparse.Namespace(returncode=0, stdout="4242;cluster\n", stderr="")

    monkeypatch.setattr(launch.subprocess, "run", fake_run)
    monkeypatch.chdir(tmp_path)
    args = cli(["launch", "slurm", config, "--submit"])
    assert args.func(args) == 0
    assert capsys.readouterr().out == "4242\n"
    (cmd, kwargs), = calls
    assert cmd == ["sbatch", "--parsable"] and kwargs["input"] == render_sbatch(config, SlurmOptions())
    assert (tmp_path / "logs").is_dir()


def test_cli_submit_without_sbatch(config: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    def missing(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("sbatch")

    monkeypatch.setattr(launch.subprocess, "run", missing)
    monkeypatch.chdir(tmp_path)
    args = cli(["launch", "slurm", config, "--submit"])
    assert args.func(args) == 1
    assert "sbatch not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ shell files
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["launch/distland.sbatch", "launch/mpirun.sh", ".ci/slurm_up.sh", ".ci/slurm_down.sh"])
def test_shell_files_parse(name: str) -> None:
    done = subprocess.run(["bash", "-n", str(ROOT / name)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_mpirun_wrapper_rejects_bad_usage() -> None:
    for argv in ([], ["configs/x.yaml"], ["-np", "0", "c.yaml"], ["-np", "2", "--bogus", "c.yaml"]):
        done = subprocess.run(["bash", str(ROOT / "launch" / "mpirun.sh"), *argv], capture_output=True, text=True)
        assert done.returncode == 2, (argv, done.stderr)
