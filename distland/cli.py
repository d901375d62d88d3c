"""Command line: ``distland <command> ...`` (also ``python -m distland``).

Core commands live here; the others are registered by their own modules, imported only when that command runs,
so ``distland --help`` and MPI start-up stay fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Dict, List, Optional, Tuple

from . import __version__

# command -> (module that registers it via add_subcommand, one-line help)
PLUGGED: Dict[str, Tuple[str, str]] = {
    "train": ("distland.train", "train a model and save per-epoch checkpoints"),
    "plot": ("distland.plot.cli", "plot surface files (contours, 3-D, 1-D, comparisons, ParaView, HTML)"),
    "trajectory": ("distland.analysis.trajectory", "PCA directions of an optimization trajectory"),
    "launch": ("distland.launch", "render (and submit) SLURM job scripts"),
    "reproduce": ("distland.reproduce", "run a config set (train, surfaces, plots) and check its claims"),
    "hessian": ("distland.hessian.job", "the Hessian at θ*: top eigenpairs, trace, eigenvalue density"),
}
EXIT_USAGE = 2


def add_overrides(p: argparse.ArgumentParser, example: str = "grid.x=[-1,1,51]", what: str = "a config key"
                  ) -> None:
    """Every command's ``--set KEY=VALUE`` (repeatable; values parsed as YAML), stored as ``args.overrides``."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override {what}, e.g. --set {example} (repeatable)")


def _add_surface(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("surface", help="compute a loss surface and write its HDF5 file",
                       description="Compute L(θ*+αδ+βη) and accuracy on the grid of CONFIG. Under mpirun/srun "
                                   "the grid is spread over all ranks and written into one parallel-HDF5 file.")
    p.add_argument("config", help="YAML job config (see configs/ and README)")
    add_overrides(p)
    p.add_argument("--overwrite", action="store_true", help="discard an existing output file of a different job")
    p.add_argument("--verbose", action="store_true", help="every rank reports its device and engine")
    p.set_defaults(func=cmd_surface)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="built-in default: train a small net on digits, compute and plot its surface")
    add_overrides(p)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-plot", action="store_true", help="skip the plot")
    p.set_defaults(func=cmd_demo)


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions and devices; with files, their grid, completion and provenance",
                       description="Versions and devices; with a surface file, its grid, completion, provenance, "
                                   "convergence at θ* and sharpness numbers; with several, also a side-by-side "
                                   "table of their numbers.")
    p.add_argument("surface", nargs="*", help="surface file(s); two or more are also compared side by side")
    p.set_defaults(func=cmd_info)


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model zoo with parameter counts")
    p.set_defaults(func=cmd_models)


CORE: Dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "surface": _add_surface, "demo": _add_demo, "info": _add_info, "models": _add_models}


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, plugged commands other than that one are listed but not imported."""
    parser = argparse.ArgumentParser(prog="distland", description="Distributed loss-landscape evaluator "
                                     "(Li et al., NeurIPS 2018).")
    parser.add_argument("--version", action="version", version=f"distland {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in CORE.values():
        add(sub)
    for name, (module, help_text) in PLUGGED.items():
        if only in (None, name) and only is not None:
            importlib.import_module(module).add_subcommand(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in PLUGGED else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("distland: interrupted; finished points are saved — rerun the same command to resume",
              file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, FileNotFoundError, OSError) as e:
        if _is_root():
            print(f"distland: error: {e}", file=sys.stderr)
        return EXIT_USAGE


def _is_root() -> bool:
    from .comm import launcher_rank

    return launcher_rank() == 0


# ------------------------------------------------------------------------------------------------ commands
def cmd_surface(args: argparse.Namespace) -> int:
    from .config import load_config
    from .sweep import run_surface

    cfg = load_config(args.config, args.overrides)
    summary = run_surface(cfg, overwrite=args.overwrite, verbose=args.verbose)
    if summary is not None:
        print(summary.text())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .config import load_config
    from .presets import demo_config_path
    from .sweep import run_surface

    cfg = load_config(demo_config_path(), args.overrides)
    summary = run_surface(cfg, overwrite=args.overwrite)
    if summary is None:
        return 0
    print(summary.text())
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("distland: plotting is unavailable (matplotlib missing?)", file=sys.stderr)
        else:
            main(["plot", cfg.output])
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .info import describe_environment, describe_surface

    print(describe_environment())   # once, however many files
    paths = [args.surface] if isinstance(args.surface, str) else list(args.surface or [])
    for path in paths:
        print(describe_surface(path))
    if len(paths) > 1:
        from .info import compare_surfaces

        print(compare_surfaces(paths))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import torch

    from .models import aliases_of, authors_layout, available, count_parameters

    rows = []
    for name, factory in available().items():
        with torch.device("meta"):  # shapes only: no memory and no initialisation for the 50 M-parameter nets
            count = count_parameters(factory())
        note = "  loss-landscape layout" if authors_layout(name) else ""
        aliases = aliases_of(name)
        if aliases:
            note += f"{';' if note else ' '} alias {', '.join(aliases)}"
        rows.append((name, count, note))
    width = max(len(n) for n, _, _ in rows)
    for name, n, note in rows:
        print(f"{name:<{width}}  {n / 1e6:8.3f} M parameters{note}")
    print("loss-landscape layout: the state_dict (keys, shapes, order) and forward function of the model of the same "
          "name in the paper authors' code, so their checkpoints load as they are; names are case-insensitive")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
