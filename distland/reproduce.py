"""``distland reproduce DIR``: run a whole config set and check the paper's claims on it.

For every surface config ``DIR/*.yaml`` (sorted): train the checkpoints it needs that are missing (its
``checkpoint`` and an interpolation's ``directions.target``, each produced by the config under ``DIR/train/`` whose
``out_dir`` holds it, or by the config's ``train:``), then compute the surface (resuming a partial file, skipping a
finished one). Then rank 0 draws every comparison of ``DIR/claims.yaml``, prints the side-by-side table of each
and one verdict line per claim. Every step is resumable (training from ``last.pt``, surfaces from their ``done``
mask), so rerunning the command after an interruption continues where it stopped. Under ``mpirun`` each surface
is spread over all ranks; training runs on rank 0 while the others wait.

``DIR/claims.yaml``::

    claims:
      - claim: small batch gives the flatter minimum (Fig. 3/4, weight decay 0)
        less: democnn_sb_wd0_2d.yaml     # the file whose number should be smaller
        more: democnn_lb_wd0_2d.yaml
        number: mean_increase           # a key of distland.analysis.compare.numbers
    plots:                              # extra figures: a list of config groups (one file: a single plot)
      - [democnn_interp_wd0.yaml]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

MANIFEST = "claims.yaml"


class ReproduceError(ValueError):
    """A config set cannot be run as asked; the message names the file and the fix."""


def add_subcommand(subparsers: Any) -> None:
    from .cli import add_overrides

    p = subparsers.add_parser("reproduce", help="run a config set (train, surfaces, plots) and check its claims",
                              description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", metavar="DIR", help="a config set, e.g. configs/small")
    p.add_argument("--only", metavar="TEXT", default="", help="only the surface configs whose name contains TEXT")
    add_overrides(p, "engine.threads=1", "a key of every surface config")
    p.add_argument("--no-plot", action="store_true", help="compute and compare, draw nothing")
    p.add_argument("--figures", metavar="DIR", help="where the figures go (default: next to the surfaces)")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    from .comm import get_comm

    comm = get_comm("auto")
    text = reproduce(args.directory, args.only, args.overrides, not args.no_plot, args.figures, comm)
    if text:
        print(text)
    return 0


def load_set(directory: str, only: str = "", overrides: Sequence[str] = ()) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(surface configs by file name, the manifest) of a config set; every config is validated here."""
    from .config import load_config, read_yaml

    root = Path(directory)
    if not root.is_dir():
        raise ReproduceError(f"{directory} is not a folder of configs; pass e.g. configs/small")
    configs = {}
    for path in sorted(root.glob("*.yaml")):
        if path.name == MANIFEST or (only and only not in path.name):
            continue
        configs[path.name] = load_config(path, list(overrides))
    if not configs:
        raise ReproduceError(f"{directory} holds no surface configs (*.yaml){' matching ' + only if only else ''}")
    manifest = read_yaml(root / MANIFEST) if (root / MANIFEST).is_file() else {}
    for claim in manifest.get("claims", []) or []:
        for side in ("less", "more"):
            if claim.get(side) not in configs and not only:
                raise ReproduceError(f"{root / MANIFEST}: claim {claim.get('claim')!r} names {claim.get(side)!r}, "
                                     f"which is not a config in {directory}")
    return configs, manifest


def trainers(directory: str) -> Dict[str, Path]:
    """{checkpoint path: the training config under DIR/train/ that writes it}."""
    from .config import load
    from .train import TrainConfig

    out: Dict[str, Path] = {}
    for path in sorted((Path(directory) / "train").glob("*.yaml")):
        cfg = load(TrainConfig, path)
        out[str(Path(cfg.out_dir) / "final.pt")] = path
    return out


def _train_missing(cfg: Any, known: Dict[str, Path]) -> None:
    from .config import load
    from .train import TrainConfig, train

    needed = ([cfg.checkpoint] + ([cfg.directions.target] if cfg.directions.between_models else [])
              + ([cfg.directions.target2] if cfg.directions.kind == "plane" else []))
    for ckpt in needed:
        if not ckpt or Path(ckpt).exists():
            continue
        source = known.get(str(Path(ckpt))) or (Path(cfg.train) if cfg.train and ckpt == cfg.checkpoint else None)
        if source is None:
            raise ReproduceError(f"checkpoint {ckpt} is missing and no training config in the set writes it; "
                                 "add one under train/ whose out_dir holds it")
        print(f"distland reproduce: training {source} -> {ckpt}", flush=True)
        train(load(TrainConfig, source))


def reproduce(directory: str, only: str = "", overrides: Sequence[str] = (), plot: bool = True,
              figures: Optional[str] = None, comm: Any = None) -> str:
    """Everything the command does; returns the report on rank 0 ("" elsewhere)."""
    from .comm import get_comm
    from .sweep import run_surface

    comm = comm or get_comm("off")
    configs, manifest = comm.on_root(lambda: load_set(directory, only, overrides))   # one error on every rank
    known = comm.on_root(lambda: trainers(directory))
    for name, cfg in configs.items():
        comm.on_root(lambda: _train_missing(cfg, known))
        summary = run_surface(cfg, comm=comm)
        if summary is not None:
            print(summary.text(), flush=True)
    if not comm.is_root:
        return ""
    return report(directory, configs, manifest, plot, figures)


def report(directory: str, configs: Dict[str, Any], manifest: Dict[str, Any], plot: bool = True,
           figures: Optional[str] = None) -> str:
    """The comparison tables, figures and verdicts of a computed config set."""
    from .analysis import compare
    from .surfacefile import read

    datas = {name: read(cfg.output) for name, cfg in configs.items()}
    nums = {name: compare.numbers(d) for name, d in datas.items()}
    label = {name: name.rsplit(".", 1)[0] for name in configs}
    lines: List[str] = []
    groups: List[List[str]] = []
    verdicts: List[str] = []
    for claim in manifest.get("claims", []) or []:
        a, b = claim["less"], claim["more"]
        if a not in datas or b not in datas:
            continue
        if not any(set(g) == {a, b} for g in groups):   # one table and figure per pair, however many claims
            groups.append([a, b])
            lines += ["", compare.table([(label[a], nums[a]), (label[b], nums[b])])]
            lines += [f"note: {n}" for n in compare.grid_note([(label[a], datas[a]), (label[b], datas[b])])]
        text, _ = compare.verdict(claim["claim"], (label[a], nums[a]), (label[b], nums[b]), claim["number"])
        verdicts.append(text)
    for group in manifest.get("plots", []) or []:
        group = [g for g in group if g in datas]
        if group and group not in groups:
            groups.append(group)
    if plot:
        from .plot.cli import plot_files
        from .plot.common import PlotOptions

        for group in groups:
            kinds = ["1d"] if datas[group[0]].ndim == 1 else ["contour", "contourf"]
            for path in plot_files([configs[g].output for g in group], PlotOptions(), kinds=kinds, out=figures):
                lines.append(f"wrote {path}")
    lines += ["", "verdicts:"] + verdicts
    return "\n".join(lines)
