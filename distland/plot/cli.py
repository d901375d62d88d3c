"""``distland plot``: figures and exports from surface files.

Only argparse and the light :mod:`.common` are imported at module level: matplotlib, h5py and plotly load inside
:func:`run_cli`, so ``distland --help`` stays fast.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, List, Optional, Sequence

from .common import KINDS, KINDS_2D, METRICS, PlotError, PlotOptions, load, pick_metric, stem
from .trajectory import check_trajectory_plane

FORMATS = ("png", "pdf", "svg")
TOPOLOGY_KINDS = ("persistence",)   # persistence diagram + barcode of any surface (distland/plot/topology.py)
HESSIAN_KINDS = ("convexity",)      # |λmin/λmax| of a Hessian map, 1-D or 2-D (distland/plot/hessian.py)
EXTRA_KINDS = TOPOLOGY_KINDS + HESSIAN_KINDS

DESCRIPTION = """\
Render surface files written by `distland surface` (or by the paper authors' tool).
One file: one figure per kind. Several files: one comparison figure per kind, a panel per file, all on the same
colour scale. Exports (--vtk, --xdmf, --html) are written for every file. Output names are
STEM_KIND_METRIC[_log].FORMAT (comparisons: compare_STEM1_STEM2_...), STEM_METRIC[_log].vts|.html and
STEM.xmf; each path is printed as it is written.
A surface with 3 or more axes is drawn as the plane of two of them: --slice fixes the others (z=0.5: at that grid
point; z=@2: at that index), by default at the points nearest 0; --vtk and --xdmf write it as a volume (.vti, .xmf)."""


def _kinds(text: str) -> List[str]:
    if text.strip().lower() == "none":
        return []
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS + EXTRA_KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"unknown kind(s) {', '.join(bad) or repr(text)}; choose from "
                                         f"{', '.join(KINDS + EXTRA_KINDS)} (comma-separated) or none")
    return list(dict.fromkeys(kinds))


def _levels(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--levels must be an integer, got {text!r}") from None
    if n < 2:
        raise argparse.ArgumentTypeError(f"--levels must be at least 2, got {n}")
    return n


def add_subcommand(subparsers: Any) -> None:
    """Register ``plot`` on the ``distland`` command's subparsers."""
    p = subparsers.add_parser("plot", help="plot surface files (contours, heat maps, 3-D, 1-D; VTK/XDMF/HTML)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("surfaces", nargs="+", metavar="SURFACE.h5", help="surface file(s); two or more are compared")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the folder of the first surface file)")
    p.add_argument("--format", choices=FORMATS, default="png", help="image format (default: png)")
    p.add_argument("--metric", metavar="NAME",
                   help=f"dataset to draw: {', '.join(METRICS)}, train_err / test_err (100 − accuracy), max_eig, "
                        "min_eig and convexity = |min_eig/max_eig| from a Hessian map, or any other per-point "
                        "dataset in the file (default: train_loss, else the first present; 1-D: all of them)")
    p.add_argument("--kinds", type=_kinds, metavar="K[,K...]",
                   help=f"plots to make, from {', '.join(KINDS + EXTRA_KINDS)}, or none (default: 1d for a "
                        f"1-D surface, {','.join(KINDS_2D)} for a 2-D one, plus convexity when the file has a "
                        f"Hessian map; persistence: diagrams and barcodes side by side, with distances between "
                        f"files; convexity: |λmin/λmax| on the paper's 0-0.5 scale, blue = convex)")
    p.add_argument("--log", action="store_true",
                   help="log10 scale for the metric. Beware: a minimum at L = 5e-5 then looks deeper and sharper "
                        "than one at 0.06 (a decade per contour near zero); compare minima on a linear scale")
    p.add_argument("--vmin", type=float, help="lower end of the colour scale / contour levels (data units)")
    p.add_argument("--vmax", type=float, help="upper end of the colour scale / contour levels (data units)")
    p.add_argument("--levels", type=_levels, metavar="N", help="number of contour levels (default: 20)")
    p.add_argument("--vlevel", type=float, metavar="STEP",
                   help="contour spacing as a step (the authors' --vlevel): levels vmin, vmin+STEP, … (log10 "
                        "units with --log); replaces --levels")
    p.add_argument("--xlim", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="1-D plots: the x range shown (the authors' --xmin/--xmax)")
    p.add_argument("--upsample", type=int, default=1, metavar="K",
                   help="--vtk: write a K× finer grid, interpolated cubically (linearly on axes of < 4 points) "
                        "from the computed one; gaps stay gaps (the authors' h52vtp --interp)")
    p.add_argument("--zmax", type=float, help="clip surface heights (3-D plot, VTK, HTML) at this value")
    p.add_argument("--dpi", type=int, default=150, help="resolution of raster images (default: 150)")
    p.add_argument("--trajectory", metavar="TRAJ.h5",
                   help="draw this optimizer path (from `distland trajectory`) over the 2-D plots")
    p.add_argument("--slice", metavar="AXIS=V[,AXIS=V...]",
                   help="surfaces of 3+ axes: fix these axes (V a grid coordinate, or @INDEX) and draw the one or two "
                        "left free, in file order (default: every axis after y at the point nearest 0)")
    p.add_argument("--vtk", action="store_true",
                   help="also write a ParaView structured grid (.vts); a 3-D surface: a volume (.vti)")
    p.add_argument("--xdmf", action="store_true", help="also write an XDMF sidecar (.xmf) that opens the .h5")
    p.add_argument("--html", action="store_true", help="also write an interactive 3-D HTML page (needs plotly)")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    """Run ``distland plot``; 0 on success, 2 (like every distland command) with a one-line message on a user
    error."""
    try:
        plot_files(args.surfaces, options_from_args(args), kinds=args.kinds, out=args.out,
                   trajectory=args.trajectory, vtk=args.vtk, xdmf=args.xdmf, html=args.html, section=args.slice,
                   on_write=lambda path: print(f"wrote {path}", flush=True))
    except PlotError as e:
        print(f"distland plot: error: {e}", file=sys.stderr)
        return 2
    return 0


def options_from_args(args: argparse.Namespace) -> PlotOptions:
    if args.upsample < 1:
        raise PlotError(f"--upsample must be an integer >= 1, got {args.upsample}")
    if args.vlevel is not None and not args.vlevel > 0:
        raise PlotError(f"--vlevel must be a positive number, got {args.vlevel}")
    if args.xlim is not None and not args.xlim[0] < args.xlim[1]:
        raise PlotError(f"--xlim MIN MAX needs MIN < MAX, got {args.xlim[0]} {args.xlim[1]}")
    return PlotOptions(metric=args.metric, log=args.log, vmin=args.vmin, vmax=args.vmax, levels=args.levels,
                       zmax=args.zmax, fmt=args.format, dpi=args.dpi,
                       xlim=None if args.xlim is None else (args.xlim[0], args.xlim[1]), vlevel=args.vlevel,
                       upsample=args.upsample)


def _name(stems: Sequence[str], kind: str, metric: Optional[str], opts: PlotOptions) -> str:
    head = stems[0] if len(stems) == 1 else "compare_" + "_".join(stems[:3]) + ("_etc" if len(stems) > 3 else "")
    parts = [head, kind] + ([metric] if metric else []) + (["log"] if opts.log else [])
    return "_".join(parts)


def plot_files(paths: Sequence[str], opts: PlotOptions, kinds: Optional[Sequence[str]] = None,
               out: Optional[str] = None, trajectory: Optional[str] = None, vtk: bool = False, xdmf: bool = False,
               html: bool = False, on_write: Optional[Callable[[str], None]] = None,
               section: Optional[str] = None) -> List[str]:
    """Everything ``distland plot`` does, as a function: returns the paths written, in order.

    ``section``: the ``--slice`` text (see :mod:`distland.slicing`); surfaces of 3+ axes are drawn as a plane.

    ``on_write`` is called with each path as soon as it is written (big grids take a while per figure).
    """
    from . import export, surface            # matplotlib, plotly and h5py load here, not for `--help`
    from ..analysis.trajectory import is_trajectory_file   # `distland plot TRAJ.h5` draws it alone
    from .trajectory import plot_path, read_trajectory
    from distland import slicing

    if len(paths) == 1 and os.path.isfile(paths[0]) and is_trajectory_file(paths[0]):
        # A trajectory file alone: the path-only plot (the authors' plot_trajectory.py output).
        fig = plot_path(read_trajectory(paths[0]), opts.dpi)
        folder = out or os.path.dirname(os.path.abspath(paths[0]))
        out_path = os.path.join(folder, stem(paths[0]) + "_path." + opts.fmt)
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        surface.save(fig, out_path, opts.dpi)
        if on_write is not None:
            on_write(out_path)
        return [out_path]

    whole = [load(p) for p in paths]        # every input checked before anything is written
    try:
        fixed = slicing.parse(section) if section else None
        datas = [slicing.take(d, fixed) for d in whole]   # K-D: the plane drawn (2-D, 1-D: unchanged)
    except slicing.SliceError as e:
        raise PlotError(str(e)) from None
    deep = [d for d in whole if d.ndim > 3]
    if deep and (vtk or xdmf):
        raise PlotError(f"{deep[0].path} has {deep[0].ndim} axes: --vtk and --xdmf write volumes of 3; draw its "
                        "planes with --slice")
    ndims = {d.ndim for d in datas}
    if len(ndims) > 1:
        raise PlotError("cannot mix 1-D and 2-D surfaces: " + ", ".join(f"{d.path} ({d.ndim}-D)" for d in datas))
    ndim = ndims.pop()
    if kinds is None:
        kinds = (["1d"] if ndim == 1 else list(KINDS_2D)) + (
            list(HESSIAN_KINDS) if all("convexity" in d.metrics for d in datas) else [])
    kinds = list(kinds)
    wrong = [k for k in kinds if k not in EXTRA_KINDS and (k == "1d") != (ndim == 1)]
    if wrong:
        hint = "1d" if ndim == 1 else ",".join(KINDS_2D)
        raise PlotError(f"{', '.join(wrong)} cannot be drawn from a {ndim}-D surface; use --kinds {hint}")
    traj = None
    if trajectory:
        if len(datas) > 1 or ndim != 2:
            raise PlotError("--trajectory needs exactly one 2-D surface file (the one computed in its PCA plane, "
                            "or whose directions it was projected onto with --dir-file)")
        traj = read_trajectory(trajectory)
        check_trajectory_plane(datas[0].path, trajectory)
    out_dir = out or os.path.dirname(os.path.abspath(paths[0]))
    os.makedirs(out_dir, exist_ok=True)
    # A plane of a K-D surface is named after its section (s_z0.5), so planes of one volume never overwrite each other.
    stems = [stem(p) + "".join(f"_{n}{v:g}" for n, v in d.section.items()) for p, d in zip(paths, datas)]
    written: List[str] = []

    def wrote(path: str) -> None:
        written.append(path)
        if on_write is not None:
            on_write(path)

    for kind in kinds:
        if kind in TOPOLOGY_KINDS:
            from .topology import plot_persistence

            fig = plot_persistence(whole, opts)   # the topology of the whole surface, every axis
        elif kind in HESSIAN_KINDS:
            from .hessian import plot_convexity

            if len(datas) > 1:
                raise PlotError("--kinds convexity draws one file at a time; pass one surface file")
            fig = plot_convexity(datas[0], opts)
        elif len(datas) == 1:
            fig = surface.plot_1d(datas[0], opts) if kind == "1d" else \
                surface.plot_2d(datas[0], kind, opts, traj if kind != "surface3d" else None)
        else:
            fig = surface.plot_compare(datas, kind, opts)
        metric = ("ratio" if kind in HESSIAN_KINDS else opts.metric if kind == "1d"
                  else pick_metric(datas[0], opts.metric))
        path = os.path.join(out_dir, _name(stems, kind, metric, opts) + "." + opts.fmt)
        wrote(surface.save(fig, path, opts.dpi))
    for full, data, name in zip(whole, datas, stems):
        metric = pick_metric(data, opts.metric)
        log = ["log"] if opts.log else []
        tag = "_".join([name, metric] + log)
        if full.ndim == 3:   # a volume is the whole file, named after it (not after the plane drawn)
            if vtk:
                wrote(export.export_vti(full, os.path.join(out_dir, "_".join([stem(full.path), metric] + log)), opts))
            if xdmf:
                wrote(export.export_xdmf_volume(full, os.path.join(out_dir, stem(full.path) + ".xmf")))
        else:
            if vtk:
                wrote(export.export_vts(data, os.path.join(out_dir, tag), opts))
            if xdmf:
                wrote(export.export_xdmf(data, os.path.join(out_dir, name + ".xmf")))
        if html:
            wrote(export.export_html(data, os.path.join(out_dir, tag + ".html"), opts))
    return written
