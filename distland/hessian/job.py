"""``distland hessian CONFIG``: the Hessian at θ* — top-k eigenpairs, trace, eigenvalue density — in one HDF5 file.

The surface config names model, checkpoint and data; its ``hessian:`` section the rest (README: "The Hessian at
θ*"). Under mpirun the independent probes (trace and density) are split statically over the ranks — probe i on
rank i mod size, each probe's vector fixed by its index — and gathered, so the numbers do not depend on the number
of ranks; rank 0 also runs the top-k Lanczos and writes the file (written to a temporary name, then renamed: a
failed job never leaves a half file, an existing one is replaced only with ``--overwrite``).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from . import krylov
from ..grid import axis_names
from .operator import HessianError, HessianOperator, default_batch, make_batches



def output_path(cfg: Any) -> str:
    """``hessian.output``, or ``<surface output stem>_hessian.h5`` next to the surface file."""
    if cfg.hessian.output:
        return cfg.hessian.output
    out = Path(cfg.output)
    return str(out.with_name(out.stem + "_hessian.h5"))


def hessian_split(cfg: Any) -> str:
    """The split the Hessian is taken on: ``data.split``, or ``train`` for ``both``."""
    return "test" if cfg.data.split == "test" else "train"


@dataclass
class Result:
    """Everything ``distland hessian`` computes (rank 0)."""

    path: str
    model: str
    split: str
    samples: int
    dim: int
    params: str
    ranks: int
    eigenvalues: np.ndarray
    residuals: np.ndarray
    topk_hvps: int
    converged: bool
    lambda_min: float
    trace_samples: np.ndarray
    density: Optional[krylov.Density]
    nodes: List[Tuple[np.ndarray, np.ndarray]]
    seconds: float
    hvps: int
    checkpoint_sha256: str = ""
    plots: List[str] = field(default_factory=list)

    @classmethod
    def from_file(cls, path: str) -> "Result":
        """The result a file holds (``distland info``): everything :meth:`text` prints."""
        import h5py

        with h5py.File(path, "r", locking=False) as f:
            a, ev = f.attrs, f["eigenvalues"]
            density, nodes = None, []
            if "density" in f:
                g = f["density"]
                density = krylov.Density(g["grid"][()], g["density"][()], float(g.attrs["sigma"]))
                for t, w in zip(g["nodes"][()], g["weights"][()]):
                    keep = ~np.isnan(t)   # probes shorter than the longest are padded with NaN
                    nodes.append((t[keep], w[keep]))
            return cls(path=path, model=str(a["model"]), split=str(a["split"]), samples=int(a["samples"]),
                       dim=int(a["nparams"]), params=str(a["params"]), ranks=int(a["nranks"]),
                       eigenvalues=ev[()], residuals=f["eigenvalue_residuals"][()], topk_hvps=int(ev.attrs["hvps"]),
                       converged=bool(ev.attrs["converged"]), lambda_min=float(a["lambda_min"]),
                       trace_samples=f["trace_samples"][()] if "trace_samples" in f else np.zeros(0),
                       density=density, nodes=nodes, seconds=float(a["seconds"]), hvps=int(a["hvps"]),
                       checkpoint_sha256=str(a["checkpoint_sha256"]))

    @property
    def trace(self) -> Tuple[float, float]:
        if self.trace_samples.size == 0:
            return float("nan"), float("nan")
        return krylov.trace_estimate(self.trace_samples)

    def text(self, header: str = "") -> str:
        """The summary ``distland hessian`` prints (and ``distland info``, under its own ``header``)."""
        lines = [header or f"distland hessian: {self.path}",
                 f"  model {self.model}, {self.samples} {self.split} samples, {self.dim} parameters "
                 f"({self.params}), {self.ranks} rank(s), {self.hvps} Hessian-vector products in {self.seconds:.1f} s"]
        vals = ", ".join(f"{v:.6g}" for v in self.eigenvalues)
        lines.append(f"  top-{len(self.eigenvalues)} eigenvalues: {vals}  ({self.topk_hvps} products, "
                     + ("converged" if self.converged else "NOT converged: raise hessian.max_iter") + ")")
        lines.append(f"  λmin {self.lambda_min:.6g} (same run), |λmin/λmax| "
                     f"{abs(self.lambda_min / self.eigenvalues[0]) if self.eigenvalues[0] else float('nan'):.4g}")
        if self.trace_samples.size:
            tr, err = self.trace
            lines.append(f"  trace {tr:.6g} ± {err:.2g} (Hutchinson, {self.trace_samples.size} probes, standard "
                         f"error); mean eigenvalue {tr / self.dim:.4g}")
        if self.density is not None:
            moment = float(np.mean(krylov.first_moments(self.nodes)))
            lines.append(f"  density: {len(self.nodes)} probe(s) × {len(self.nodes[0][0])} Lanczos steps, "
                         f"eigenvalues in [{self.density.grid[0]:.4g}, {self.density.grid[-1]:.4g}], "
                         f"mean {moment:.4g}")
        for p in self.plots:
            lines.append(f"  plot {p}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the job
def _prepare(cfg: Any, overwrite: bool) -> None:
    """Rank-0 checks that can fail on user input, before any work."""
    out = Path(output_path(cfg))
    if out.exists() and not overwrite:
        raise HessianError(f"{out} exists; pass --overwrite to replace it, or set hessian.output to another file")
    if out.resolve() == Path(cfg.output).resolve():
        raise HessianError(f"hessian.output {str(out)!r} is the surface file; choose another name")


def _build(cfg: Any, comm: Any) -> Tuple[HessianOperator, torch.nn.Module, str]:
    from .. import engine as engines
    from ..sweep import build_reference_model, load_data

    model, digest = build_reference_model(cfg)
    split = hessian_split(cfg)
    x, y = load_data(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, split=split)))[split]
    if cfg.hessian.samples:
        x, y = x[:cfg.hessian.samples], y[:cfg.hessian.samples]
    # float32 whatever engine.precision says for surfaces (apply_process_settings then turns TF32 off on GPUs)
    eng = dataclasses.replace(engines.choose(cfg.engine, comm.local_rank, comm.local_size, 0, x.dim()),
                              precision="fp32")
    engines.apply_process_settings(eng)
    batch = cfg.hessian.batch_size or cfg.data.batch_size or default_batch(eng.device)
    model = model.to(eng.device)
    if eng.channels_last and x.dim() == 4:
        model = model.to(memory_format=torch.channels_last)
    batches = make_batches(x, y, batch, eng.device, eng.channels_last)
    op = HessianOperator(model, batches, cfg.loss, cfg.hessian.params, cfg.hessian.cache, allow=cfg.plugins)
    return op, model, digest


def run_hessian(cfg: Any, overwrite: bool = False, comm: Any = None, plot: bool = True) -> Optional[Result]:
    """Compute the Hessian quantities of ``cfg`` at θ* on every rank of ``comm``; rank 0 writes the file and
    returns the :class:`Result` (other ranks: None)."""
    from ..comm import get_comm

    comm = comm or get_comm(cfg.sweep.mpi)
    comm.on_root(lambda: _prepare(cfg, overwrite))
    try:
        return _run(cfg, comm, plot)
    except BaseException as e:  # noqa: BLE001 - under MPI one failing rank must stop all of them
        if comm.size > 1 and not isinstance(e, SystemExit):
            comm.fail(e)
        raise


def _run(cfg: Any, comm: Any, plot: bool) -> Optional[Result]:
    h = cfg.hessian
    t0 = time.monotonic()
    op, model, digest = _build(cfg, comm)
    like = op.params[0]
    topk: Optional[krylov.TopK] = None
    if comm.is_root:
        topk = krylov.top_eigenpairs(op, op.dim, h.top_k, h.tol, h.max_iter, h.seed, like, with_min=True)
    mine_t = list(range(comm.rank, h.trace_probes, comm.size))
    mine_d = list(range(comm.rank, h.density_probes, comm.size))
    trace = list(zip(mine_t, krylov.hutchinson_samples(op, op.dim, mine_t, h.seed, like)))
    dens = list(zip(mine_d, krylov.slq_probes(op, op.dim, mine_d, h.lanczos_steps, h.seed, like)))
    gathered = comm.allgather((trace, dens, op.products))
    if not comm.is_root:
        op.release()
        return None
    trace_all = sorted(p for part in gathered for p in part[0])
    dens_all = sorted((p for part in gathered for p in part[1]), key=lambda t: t[0])
    nodes = [p[1] for p in dens_all]
    res = Result(path=output_path(cfg), model=cfg.model, split=hessian_split(cfg), samples=op.n, dim=op.dim,
                 params=h.params, ranks=comm.size, eigenvalues=topk.values, residuals=topk.residuals,
                 topk_hvps=topk.hvps, converged=topk.converged, lambda_min=topk.lmin,
                 trace_samples=np.array([v for _, v in trace_all]), density=krylov.density(nodes) if nodes else None,
                 nodes=nodes, seconds=0.0, hvps=sum(part[2] for part in gathered), checkpoint_sha256=digest)
    res.seconds = time.monotonic() - t0
    vectors = _vectors(op, model, topk.vectors, h.direction_norm, h.params)
    write(res, vectors, cfg)
    op.release()
    if plot:
        res.plots = plot_result(res)
    return res


def _vectors(op: HessianOperator, model: torch.nn.Module, flat: torch.Tensor, norm: str, params: str
             ) -> List["OrderedDict[str, np.ndarray]"]:
    """Eigenvectors as directions: one tensor per ``named_parameters()`` key (zeros outside the chosen set)."""
    from .. import directions as dirs

    reference = dirs.reference_weights(model, "weights")
    out = []
    for v in flat:
        parts = {k: t.detach().cpu() for k, t in op.to_tensors(v).items()}
        d = OrderedDict((k, parts[k].to(ref.dtype) if k in parts else torch.zeros_like(ref))
                        for k, ref in reference.items())
        if norm == "filter":
            # Per filter to the norm of θ*'s filter, as the paper's random directions (no longer an exact
            # eigenvector, but on the same scale as a random surface); 1-D tensors stay zero under ndim2.
            d = dirs.normalize(d, reference, "filter", "biasbn" if params == "ndim2" else "none")
        out.append(OrderedDict((k, t.numpy()) for k, t in d.items()))
    return out


# ------------------------------------------------------------------------------------------------ the file
def write(res: Result, vectors: List[Dict[str, np.ndarray]], cfg: Any) -> None:
    """Write the result file (temporary name, then an atomic rename)."""
    from ..surfacefile import write_atomically

    write_atomically(res.path, lambda f: _fill(f, res, vectors, cfg))


def _fill(f: Any, res: Result, vectors: List[Dict[str, np.ndarray]], cfg: Any) -> None:
    import h5py

    from .. import __version__
    from ..config import to_yaml

    h = cfg.hessian
    attrs = {"config": to_yaml(cfg), "model": cfg.model, "checkpoint_sha256": res.checkpoint_sha256,
             "split": res.split, "samples": res.samples, "nparams": res.dim, "params": h.params, "loss": cfg.loss,
             "tol": h.tol, "seed": h.seed, "direction_norm": h.direction_norm, "nranks": res.ranks,
             "hvps": res.hvps, "seconds": res.seconds, "distland_version": __version__,
             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "lambda_min": res.lambda_min}
    for k, v in attrs.items():
        f.attrs[k] = v
    ev = f.create_dataset("eigenvalues", data=np.asarray(res.eigenvalues, dtype=np.float64))
    ev.attrs.update({"hvps": res.topk_hvps, "converged": int(res.converged)})
    f.create_dataset("eigenvalue_residuals", data=np.asarray(res.residuals, dtype=np.float64))
    for i, vec in enumerate(vectors):
        g = f.create_group(f"eigenvectors/{i}")
        for k, a in vec.items():
            g.create_dataset(k, data=a)
    # The direction-file layout (distland.directions.load_file): links, so nothing is stored twice.
    d = f.create_group("directions")
    d.attrs["eigenpairs"] = np.asarray(h.axes, dtype=np.int64)   # directions/x is eigenvector axes[0], …
    for axis, i in zip(axis_names(len(h.axes)), h.axes):
        if i < len(vectors):
            d[axis] = h5py.SoftLink(f"/eigenvectors/{i}")
    if res.trace_samples.size:
        tr, err = res.trace
        ds = f.create_dataset("trace_samples", data=res.trace_samples)
        f.attrs["trace"], f.attrs["trace_stderr"] = tr, err
        ds.attrs["probe"] = "rademacher"
    if res.density is not None:
        g = f.create_group("density")
        g.create_dataset("grid", data=res.density.grid)
        g.create_dataset("density", data=res.density.density)
        g.attrs["sigma"] = res.density.sigma
        steps = max(len(t) for t, _ in res.nodes)
        nodes = np.full((len(res.nodes), steps), np.nan)
        weights = np.zeros((len(res.nodes), steps))
        for i, (t, w) in enumerate(res.nodes):
            nodes[i, :len(t)], weights[i, :len(w)] = t, w
        g.create_dataset("nodes", data=nodes)
        g.create_dataset("weights", data=weights)


def read(path: str) -> Dict[str, Any]:
    """A result file's attributes and main datasets as a plain dict (tests, scripts); :meth:`Result.from_file`
    gives the :class:`Result`."""
    import h5py

    with h5py.File(path, "r") as f:
        out: Dict[str, Any] = {k: f.attrs[k] for k in f.attrs}
        out["eigenvalues"] = f["eigenvalues"][()]
        for name in ("trace_samples", "density/grid", "density/density", "density/nodes", "density/weights"):
            if name in f:
                out[name] = f[name][()]
    return out


def is_result_file(path: str) -> bool:
    """Whether ``path`` is a ``distland hessian`` result (not a surface): it has ``eigenvalues`` and no grid."""
    from ..surfacefile import holds_without_grid

    return holds_without_grid(path, "eigenvalues")


# ------------------------------------------------------------------------------------------------ plots
def plot_result(res: Result) -> List[str]:
    """The density (log scale) and the top eigenvalues, next to the file; returns the paths written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("distland: matplotlib missing; no plots", file=sys.stderr)
        return []
    stem = Path(res.path).with_suffix("")
    written = []
    if res.density is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        floor = 1e-12 * max(float(res.density.density.max()), 1e-300)
        ax.semilogy(res.density.grid, np.maximum(res.density.density, floor))
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density (log)")
        ax.set_title(f"{res.model}: Hessian eigenvalue density (SLQ, {len(res.nodes)} probe(s))")
        written.append(_save(plt, fig, f"{stem}_density.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    idx = np.arange(1, len(res.eigenvalues) + 1)
    ax.stem(idx, res.eigenvalues)
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue")
    ax.set_xticks(idx)
    ax.set_title(f"{res.model}: top-{len(idx)} Hessian eigenvalues")
    written.append(_save(plt, fig, f"{stem}_eigenvalues.png"))
    return written


def _save(plt: Any, fig: Any, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ command line
def add_subcommand(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register ``distland hessian``."""
    from ..cli import add_overrides

    p = subparsers.add_parser(
        "hessian", help="the Hessian at θ*: top eigenpairs, trace, eigenvalue density",
        description="Compute, at the checkpoint of a surface CONFIG, the top-k Hessian eigenpairs (Lanczos), the "
                    "trace (Hutchinson, with its standard error) and the eigenvalue density (stochastic Lanczos "
                    "quadrature); write them to an HDF5 file whose eigenvectors hessian.axes (default: the top "
                    "two) are surface directions. Under mpirun the probes are spread over the ranks.")
    p.add_argument("config", help="YAML job config (the surface config; its hessian: section)")
    add_overrides(p, "hessian.top_k=10")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-plot", action="store_true", help="skip the plots")
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: argparse.Namespace) -> int:
    from ..config import load_config

    cfg = load_config(args.config, args.overrides)
    res = run_hessian(cfg, overwrite=args.overwrite, plot=not args.no_plot)
    if res is not None:
        print(res.text())
    return 0
