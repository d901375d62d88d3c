"""Cluster launch: SLURM batch scripts and mpirun command lines for ``distland surface``, and ``distland launch``.

Rendering is pure, as in submitit: :func:`render_sbatch` and :func:`render_mpirun` read no files and no environment,
so the same options always give the same text, which is what the snapshot tests pin down. Only :func:`run_cli`
touches the outside world (checks the config, writes the script, creates the log folder, calls ``sbatch``).
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

LAUNCHERS = ("srun", "mpirun")

_TIME = re.compile(r"(?:\d+-)?\d{1,3}:[0-5]\d:[0-5]\d")
_MEM = re.compile(r"\d+[KMGT]?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD = re.compile(r"[A-Za-z0-9_.-]+")
# Characters that an #SBATCH value may hold without quoting (sbatch splits on blanks and treats # as a comment).
_DIRECTIVE_SAFE = re.compile(r"[A-Za-z0-9_./%:@+,=-]+")


@dataclass
class SlurmOptions:
    """What a SLURM job script for ``distland surface`` asks for and how it starts the ranks."""

    job_name: str = "distland"
    nodes: int = 1
    ntasks_per_node: int = 1        # MPI ranks per node: one per GPU
    gpus_per_task: int = 1          # 0 = CPU-only; with mpirun, requested per node (see render_sbatch)
    cpus_per_task: int = 1          # cores per rank; also each rank's OMP_NUM_THREADS
    time: str = "01:00:00"          # HH:MM:SS or D-HH:MM:SS
    account: str = ""               # "" = your default account
    partition: str = ""             # "" = the cluster's default partition
    mem: str = ""                   # per node, e.g. 64G; "" = the partition's default
    output: str = "logs/%x-%j.out"  # stdout+stderr of the job; %x = job name, %j = job id
    launcher: str = "srun"          # srun (ranks talk to srun through PMI) | mpirun (inside the allocation)
    mpi: str = "pmix"               # srun's --mpi plugin; `srun --mpi=list` shows what the cluster has
    overcommit: bool = False        # allow more tasks than cores (tests, small nodes)
    hdf5_file_locking: bool = True  # false: export HDF5_USE_FILE_LOCKING=FALSE (NFS/Lustre without locks)
    command: str = "distland"       # how the compute nodes run distland, e.g. "python -m distland"
    modules: List[str] = field(default_factory=list)       # `module load` each, in order
    setup: List[str] = field(default_factory=list)         # shell lines run first, e.g. "source .venv/bin/activate"
    env: Dict[str, str] = field(default_factory=dict)      # variables exported for every rank
    extra_sbatch: List[str] = field(default_factory=list)  # raw lines, e.g. "#SBATCH --constraint=a100"

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> "SlurmOptions":
        """Raise ValueError naming the first option that cannot go into a job script; else return self."""
        for name, tp in _HINTS.items():
            _check_type(name, tp, getattr(self, name))
        for name in ("nodes", "ntasks_per_node", "cpus_per_task"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_task < 0:
            raise ValueError(f"gpus_per_task must be >= 0 (0 = CPU-only), got {self.gpus_per_task}")
        if not self.job_name:
            raise ValueError("job_name must not be empty")
        if not _TIME.fullmatch(self.time):
            raise ValueError(f"time must be HH:MM:SS or D-HH:MM:SS, got {self.time!r}")
        if self.mem and not _MEM.fullmatch(self.mem):
            raise ValueError(f"mem must be a size such as 64G or 16000M, got {self.mem!r}")
        if not self.output:
            raise ValueError("output must name the job's log file, e.g. logs/%x-%j.out")
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {self.launcher!r}")
        if not _WORD.fullmatch(self.mpi):
            raise ValueError(f"mpi must name an srun MPI plugin such as pmix or pmix_v4, got {self.mpi!r}")
        try:
            words = shlex.split(self.command)
        except ValueError as e:
            raise ValueError(f"command {self.command!r} is not a valid shell command line: {e}") from None
        if not words:
            raise ValueError("command must not be empty; use distland or 'python -m distland'")
        for name in self.env:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"env: {name!r} is not a valid variable name")
        for line in self.extra_sbatch:
            if not re.match(r"#SBATCH\s+-", line):
                raise ValueError(f"extra_sbatch lines must look like '#SBATCH --option=value', got {line!r}")
        return self


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(SlurmOptions))
_HINTS = typing.get_type_hints(SlurmOptions)   # field name -> resolved annotation, in field order


def _kind(tp: Any) -> type:
    """The plain container or scalar type behind a field annotation."""
    origin = typing.get_origin(tp)
    return origin if origin in (list, dict) else tp


def _check_type(name: str, tp: Any, value: Any) -> None:
    kind = _kind(tp)
    if kind is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif kind is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ValueError(f"{name} must be of type {tp}, got {value!r}")
    # A newline would end the directive or command it lands in and start a line of its own.
    texts = value if kind is list else [t for kv in value.items() for t in kv] if kind is dict else [value]
    if any("\n" in str(t) or "\r" in str(t) for t in texts):
        raise ValueError(f"{name} must not contain line breaks, got {value!r}")


# ------------------------------------------------------------------------------------------------ options parsing
def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown option {name!r}; valid options: {', '.join(OPTION_NAMES)}")


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert a value from YAML or from ``--opt`` text to the field's type, or raise ValueError saying why."""
    kind = _kind(tp)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            return int(value)
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if kind is str:
        if name == "time" and not isinstance(value, str):
            # YAML 1.1 reads an unquoted 01:00:00 as the number 3600 (base 60).
            raise ValueError(f"time must be a string such as \"01:00:00\" (quote it in YAML), got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str):
            return value
        raise ValueError(f"{name} must be a string, got {value!r}")
    if kind is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise ValueError(f"{name} must be a list of strings, got {value!r}")
        return list(items)
    if kind is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{name} must be a mapping of NAME: value, got {value!r}")
        out = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise ValueError(f"{name}.{k} must be a string (quote it in YAML), got {v!r}")
            out[str(k)] = str(v)
        return out
    raise TypeError(f"no conversion for option {name} of type {tp}")


def options_from_dict(d: Mapping[str, Any], base: Optional[SlurmOptions] = None) -> SlurmOptions:
    """Build options from a mapping (a YAML section or parsed ``--opt``), on top of ``base`` or the defaults.

    Unknown keys raise ValueError listing the valid ones; values are converted and checked.
    """
    for name in d:
        if name not in _HINTS:
            raise _unknown(str(name))
    values = {name: _coerce(name, _HINTS[name], value) for name, value in d.items()}
    return dataclasses.replace(base or SlurmOptions(), **values)


def parse_opts(items: Sequence[str]) -> Dict[str, Any]:
    """Turn ``--opt key=value`` strings into a mapping for :func:`options_from_dict`.

    Values stay text (converted by field type later). A list option repeats to append
    (``--opt modules=cuda --opt modules=openmpi``); ``env.NAME=value`` sets one variable.
    """
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--opt {item!r}: expected key=value, e.g. --opt time=02:00:00")
        name, dot, sub = key.partition(".")
        if name not in _HINTS:
            raise _unknown(name)
        kind = _kind(_HINTS[name])
        if kind is dict:
            if not dot or not sub:
                raise ValueError(f"--opt {item!r}: set one variable at a time: --opt {name}.NAME=value")
            out.setdefault(name, {})[sub] = value
        elif dot:
            raise ValueError(f"--opt {item!r}: only env takes a dotted key (--opt env.NAME=value)")
        elif kind is list:
            out.setdefault(name, []).append(value)
        else:
            out[name] = value
    return out


# ------------------------------------------------------------------------------------------------ rendering
def _directive_quote(value: str) -> str:
    """Quote a value for an ``#SBATCH`` line.

    sbatch does not parse these lines with a shell: it splits on blanks, strips double quotes, honours backslash
    escapes and treats an unquoted ``#`` as a comment. shlex.quote's single quotes would be kept literally.
    """
    if _DIRECTIVE_SAFE.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _distland_argv(command: str, config_path: str, overrides: Sequence[str]) -> List[str]:
    if not config_path:
        raise ValueError("config_path must name the YAML config of the surface job")
    argv = [shlex.quote(w) for w in shlex.split(command)]
    argv += ["surface", shlex.quote(config_path)]
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. --set grid.x=[-1,1,51]")
        argv += ["--set", shlex.quote(item)]
    return argv


_PITFALL = """\
# Launcher pitfall (Open MPI + SLURM). With srun, the ranks find each other through srun's PMI plugin: --mpi must
# name one that the MPI library speaks (Open MPI 4/5: pmix; check `srun --mpi=list`). On a mismatch, MPI_Init
# either fails ("OMPI was not built with SLURM's PMI support") or, worse, every task starts as its own
# single-rank job: N copies that each sweep the whole grid into the same file. distland compares the MPI world
# size to the task count srun started and stops with an error in that case. If the cluster has no working PMIx,
# render with --launcher mpirun: mpirun reads the allocation from SLURM and needs no PMI plugin."""

_LOG_DIR_NOTE = """\
# SLURM does not create the folder of --output: if it is missing, the job fails without any log.
# (`distland launch slurm --out FILE` and `--submit` create it, relative to the folder you submit from.)"""

_HDF5_NOTE = """\
# HDF5 file locking: on NFS or Lustre mounted without lock support, opening the surface file fails with
# errno 11 or 38. Turning locking off is safe as long as nothing else opens the file while the job writes it;
# keep it on where the file system supports locks."""


def render_sbatch(config_path: str, opts: SlurmOptions, overrides: Sequence[str] = ()) -> str:
    """A complete SLURM batch script that runs ``distland surface CONFIG --set ...`` on the requested ranks."""
    opts.check()
    q = _directive_quote
    out = [
        "#!/bin/bash",
        "# distland surface job, rendered by `distland launch slurm`; edit freely. Submit with: sbatch THIS_FILE",
        f"#SBATCH --job-name={q(opts.job_name)}",
        f"#SBATCH --nodes={opts.nodes}",
    ]
    if opts.overcommit:
        # SLURM 22.05 refuses --ntasks-per-node above a node's CPU count even with --overcommit; a total works.
        out.append(f"#SBATCH --ntasks={opts.nodes * opts.ntasks_per_node}")
    else:
        out.append(f"#SBATCH --ntasks-per-node={opts.ntasks_per_node}")
    if opts.gpus_per_task and opts.launcher == "mpirun":
        out.append(f"#SBATCH --gpus-per-node={opts.gpus_per_task * opts.ntasks_per_node}")
    elif opts.gpus_per_task:
        out.append(f"#SBATCH --gpus-per-task={opts.gpus_per_task}")
    out += [f"#SBATCH --cpus-per-task={opts.cpus_per_task}", f"#SBATCH --time={q(opts.time)}"]
    if opts.account:
        out.append(f"#SBATCH --account={q(opts.account)}")
    if opts.partition:
        out.append(f"#SBATCH --partition={q(opts.partition)}")
    if opts.mem:
        out.append(f"#SBATCH --mem={q(opts.mem)}")
    out.append(f"#SBATCH --output={q(opts.output)}")
    if opts.overcommit:
        out.append("#SBATCH --overcommit")
    out += opts.extra_sbatch
    out += ["#", _LOG_DIR_NOTE, "#", _PITFALL, ""]

    if opts.modules or opts.setup:
        # -u comes after the environment setup: module (Lmod) and conda activation scripts read unset variables.
        out.append("set -eo pipefail")
        out += [f"module load {shlex.quote(m)}" for m in opts.modules]
        out += opts.setup   # shell code by design, so not quoted
        out.append("set -u")
    else:
        out.append("set -euo pipefail")
    out += ["", f"export OMP_NUM_THREADS={opts.cpus_per_task}   # = --cpus-per-task: torch threads per rank"]
    out += [f"export {name}={shlex.quote(value)}" for name, value in opts.env.items()]
    out += [_HDF5_NOTE]
    hdf5 = "export HDF5_USE_FILE_LOCKING=FALSE"
    out.append(hdf5 if not opts.hdf5_file_locking else f"# {hdf5}   # or render with --opt hdf5_file_locking=false")
    out += ["", 'echo "distland: job ${SLURM_JOB_ID} on ${SLURM_JOB_NODELIST}: ${SLURM_NTASKS} ranks"']

    argv = " ".join(_distland_argv(opts.command, config_path, overrides))
    if opts.launcher == "srun":
        out += [
            "# --cpus-per-task again: some SLURM versions (22.05, for one) do not pass sbatch's value on to srun.",
            "# --kill-on-bad-exit: one failed rank ends the step instead of leaving the others waiting in MPI.",
            f"srun --mpi={opts.mpi} --kill-on-bad-exit=1 --cpus-per-task={opts.cpus_per_task} {argv}",
        ]
    else:
        out += [
            "# mpirun takes nodes and slots from the allocation and starts its daemons through SLURM itself.",
            "# --bind-to none: Open MPI's default binding (one core per rank for 1-2 ranks) would squeeze all",
            "# OMP_NUM_THREADS threads of a rank onto one core.",
        ]
        if opts.gpus_per_task:
            out += [
                "# GPUs are requested per node above: mpirun's daemon on each node is a single SLURM task, and",
                "# --gpus-per-task would leave it, and so every rank it starts, one GPU. Each rank sees all GPUs of",
                "# its node and distland picks cuda:<node-local rank>.",
            ]
        out.append(f'mpirun -np "$SLURM_NTASKS" --bind-to none {argv}')
    return "\n".join(out) + "\n"


def render_mpirun(config_path: str, np: int, hosts: Union[None, str, Sequence[str]] = None,
                  overrides: Sequence[str] = (), *, command: str = "distland") -> str:
    """The ``mpirun -np N [--host ...] distland surface CONFIG --set ...`` command line, shell-quoted.

    ``hosts`` entries may carry slot counts (``node1:4``); Open MPI gives a host one slot otherwise.
    """
    if isinstance(np, bool) or not isinstance(np, int) or np < 1:
        raise ValueError(f"np must be an integer >= 1, got {np!r}")
    argv = ["mpirun", "-np", str(np)]
    if hosts:
        host_list = [hosts] if isinstance(hosts, str) else list(hosts)
        argv += ["--host", shlex.quote(",".join(host_list))]
    return " ".join(argv + _distland_argv(command, config_path, overrides))


# ------------------------------------------------------------------------------------------------ CLI
# Flags of `distland launch slurm` that are shortcuts for --opt; a flag wins over the same --opt.
_FLAG_OPTIONS = ("nodes", "ntasks_per_node", "gpus_per_task", "time", "account", "partition", "launcher")


def add_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``distland launch slurm`` on the top-level subparsers."""
    from .cli import add_overrides

    launch = subparsers.add_parser("launch", help="write (and submit) cluster job scripts",
                                   description="Write job scripts that run `distland surface` on a cluster.")
    targets = launch.add_subparsers(dest="launch_target", metavar="TARGET", required=True)
    p = targets.add_parser(
        "slurm", help="render a SLURM batch script", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Render a SLURM batch script for `distland surface CONFIG`; print it, write it (--out) or "
                    "submit it (--submit).",
        epilog="options for --opt (see distland.launch.SlurmOptions):\n  " + ", ".join(OPTION_NAMES) +
               "\n\nexamples:\n"
               "  distland launch slurm configs/demo.yaml --nodes 4 --ntasks-per-node 8 --account proj --submit\n"
               "  distland launch slurm configs/demo.yaml --opt gpus_per_task=0 --opt modules=openmpi "
               "--opt 'setup=source .venv/bin/activate' --out job.sbatch")
    p.add_argument("config", metavar="CONFIG", help="YAML config of the surface job")
    p.add_argument("--nodes", type=int, help="nodes (default 1)")
    p.add_argument("--ntasks-per-node", type=int, help="MPI ranks per node, one per GPU (default 1)")
    p.add_argument("--gpus-per-task", type=int, help="GPUs per rank; 0 = CPU-only (default 1)")
    p.add_argument("--time", help="time limit HH:MM:SS (default 01:00:00)")
    p.add_argument("--account", help="account to charge")
    p.add_argument("--partition", help="partition (queue)")
    p.add_argument("--launcher", choices=LAUNCHERS, help="srun --mpi=pmix (default) or mpirun inside the job")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="any option (list below); lists repeat to append, env.NAME=VALUE sets a variable")
    add_overrides(p, what="a config key, passed on to `distland surface`")
    p.add_argument("--out", metavar="FILE", help="write the script here instead of printing it")
    p.add_argument("--submit", action="store_true", help="submit with sbatch and print the job id")
    p.add_argument("--no-check", action="store_true",
                   help="do not load CONFIG with the overrides here first (e.g. it exists only on the cluster)")
    p.set_defaults(func=run_cli)
    return launch


def _options_from_args(args: argparse.Namespace) -> SlurmOptions:
    values = parse_opts(args.opt)
    for name in _FLAG_OPTIONS:
        flag = getattr(args, name, None)
        if flag is not None:
            values[name] = flag
    return options_from_dict(values)


def _make_log_dir(output: str) -> None:
    """Create the folder of the job log, which sbatch will not do; skipped when it holds %-patterns."""
    parent = Path(output).parent
    if "%" not in str(parent) and str(parent) not in ("", "."):
        parent.mkdir(parents=True, exist_ok=True)


def _sbatch(script: str, path: Optional[str]) -> str:
    """Submit the script (the file if written, else on stdin) and return the job id."""
    cmd = ["sbatch", "--parsable"] + ([path] if path else [])
    try:
        done = subprocess.run(cmd, input=None if path else script, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise RuntimeError("sbatch not found: submit from a SLURM login node, or use --out and submit there") from None
    if done.returncode != 0:
        raise RuntimeError(f"sbatch failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    # --parsable prints "jobid" or "jobid;cluster".
    return done.stdout.strip().split(";")[0]


def run_cli(args: argparse.Namespace) -> int:
    """``distland launch slurm``: render, then print, write or submit the script."""
    try:
        opts = _options_from_args(args)
        if not args.no_check:
            # Catch a bad config or --set now rather than after the job has waited in the queue.
            from distland.config import load_config
            load_config(args.config, args.overrides)
        script = render_sbatch(args.config, opts, args.overrides)
    except ValueError as e:   # distland.config.ConfigError is a ValueError too
        print(f"distland launch slurm: {e}", file=sys.stderr)
        return 2

    if args.out:
        Path(args.out).write_text(script)
        print(f"distland launch slurm: wrote {args.out}", file=sys.stderr)
    elif not args.submit:
        sys.stdout.write(script)
        return 0
    _make_log_dir(opts.output)
    if args.submit:
        try:
            job_id = _sbatch(script, args.out)
        except RuntimeError as e:
            print(f"distland launch slurm: {e}", file=sys.stderr)
            return 1
        print(job_id)
    return 0
