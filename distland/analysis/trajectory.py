"""PCA directions of an optimization trajectory (Li et al. 2018, §7), for plotting the path on a loss surface.

With checkpoints θ_1 … θ_K (sorted by epoch) and the final weights θ_n, the offsets d_k = θ_k − θ_n are flattened
over the chosen tensors into the rows of D (K × P). By default every floating-point tensor takes part, 1-D ones
(biases, BatchNorm) included, as in the authors' ``plot_trajectory.py`` (its ``--ignore`` is empty unless given);
under ``ignore: biasbn`` 1-D tensors are left out. Integer buffers always are. Left-out entries are zero in the
directions.

PCA without a dense SVD: the K × K Gram matrix G = D Dᵀ is accumulated over column blocks of D, eigendecomposed in
float64 (G u_i = λ_i u_i, λ_1 ≥ λ_2 ≥ …), and the directions are v_i = Dᵀ u_i / √λ_i (unit vectors: ‖Dᵀu‖² = uᵀGu
= λ), built block by block so each P-sized vector is made once. ``explained_variance_ratio`` = λ_i / tr(G).

Centering. Default: centered, as the authors' tool (scikit-learn's ``PCA``, which subtracts the mean offset):
G ← C G C with C = I − 11ᵀ/K, and the explained-variance ratios are relative to the centered total, so they are
comparable with the paper's. ``--no-center`` gives the SVD of the offsets themselves: the subspace through θ_n that
best holds the offsets (minimizing Σ‖d_k − proj d_k‖²), the literal reading of §7's "PCA of the matrix
[θ_0 − θ_n; …; θ_{n−1} − θ_n]"; its ratios are relative to Σ‖d_k‖² and not comparable with the authors'. Either way
the eigenvectors with λ > 0 of the centered G are orthogonal to 1, so v = Dᵀu / √λ needs no centered copy of D, and
the path's coordinates are those of the raw offsets (the authors project them the same way).

A component with λ_i ≤ 1e-10 · λ_1 (the path is a line, or K < 2) has no direction of its own: it is filled with
a seeded random unit vector orthogonal to the earlier ones, its ratio is 0 and ``random_axes`` names it, so a 2-D
surface can still be drawn. Signs are fixed so that the first checkpoint has a positive coordinate.

Coordinates. ``trajectory/coords`` are the least-squares coordinates c_k of d_k in the basis V = (v_x, v_y),
from the 2 × 2 normal equations (V Vᵀ) c_k = V d_k, which holds for any basis, not only an orthonormal one;
``trajectory/residual`` = ‖d_k − Vᵀc_k‖, computed directly (not as a difference of squares, which cancels).

Memory: D is the only K × P array (float64 up to 256 MiB, float32 beyond; a temporary file via numpy.memmap when
it is larger than ``memory_limit``); checkpoints are loaded one at a time.
"""
from __future__ import annotations

import argparse
import glob
import math
import re
import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..checkpoint import CheckpointError, StateDict, load_state_dict

SUFFIXES = (".pt", ".pth", ".ckpt", ".tar", ".t7", ".bin")
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")   # BatchNorm buffers, told by name
DEGENERATE_RTOL = 1e-10
_BLOCK_BYTES = 64 << 20


# ----------------------------------------------------------------------------------------------- finding files
def epoch_of(path: Union[str, Path]) -> Optional[int]:
    """The epoch in a file name: the number after ``epoch`` if present, else the last number; None if none."""
    name = Path(path).name
    m = re.search(r"epoch[_=\-]?(\d+)", name, re.IGNORECASE)
    if m:
        return int(m.group(1))
    for suffix in SUFFIXES:   # "model_10.pth.tar": drop known suffixes so they are not taken for numbers
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    numbers = re.findall(r"\d+", name)
    return int(numbers[-1]) if numbers else None


def find_checkpoints(spec: str) -> Tuple[List[Tuple[int, Path]], List[Path]]:
    """((epoch, path) sorted numerically by epoch, files skipped for having no number) of a directory or glob."""
    p = Path(spec)
    if p.is_dir():
        files = [f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(SUFFIXES)]
    else:
        files = [Path(f) for f in glob.glob(spec) if Path(f).is_file()]
    if not files:
        raise CheckpointError(f"no checkpoints found at {spec!r}; pass a directory holding "
                              f"{'/'.join(SUFFIXES)} files or a quoted glob such as 'run/model_*.pt'")
    numbered = [(epoch_of(f), f) for f in files]
    skipped = sorted(f for e, f in numbered if e is None)
    found = sorted(((e, f) for e, f in numbered if e is not None), key=lambda t: (t[0], t[1].name))
    if not found:
        raise CheckpointError(f"none of the {len(files)} files at {spec!r} has an epoch number in its name "
                              f"(e.g. {files[0].name!r}); name them like model_10.pt so they can be ordered")
    return found, skipped


# ----------------------------------------------------------------------------------------------- which tensors
def select_keys(final: StateDict, kind: str = "weights", model: Optional[torch.nn.Module] = None) -> List[str]:
    """The state_dict keys a direction holds, in model order (``named_parameters`` or ``state_dict``)."""
    if kind not in ("weights", "states"):
        raise ValueError(f"--type {kind!r} is not valid; choose weights or states")
    if model is None:
        # Without the model, parameters are told from buffers by dtype and by the BatchNorm buffer names.
        if kind == "states":
            return list(final)
        return [k for k, v in final.items() if v.is_floating_point() and not k.endswith(BUFFER_SUFFIXES)]
    own = OrderedDict(model.named_parameters()) if kind == "weights" else model.state_dict()
    missing = [k for k in own if k not in final]
    shapes = [k for k in own if k in final and tuple(final[k].shape) != tuple(own[k].shape)]
    if missing or shapes:
        raise CheckpointError(f"the final checkpoint does not match the model: missing {missing[:3]}, shape "
                              f"mismatches {shapes[:3]} ({len(missing)} missing, {len(shapes)} mis-shaped); "
                              "check --model and --model-args")
    return list(own)


def moves(t: torch.Tensor, ignore: str) -> bool:
    """Whether a tensor takes part in the PCA: floating point, and not 1-D under ``ignore: biasbn``."""
    if ignore not in ("biasbn", "none"):
        raise ValueError(f"--ignore {ignore!r} is not valid; choose biasbn or none")
    return t.is_floating_point() and not (ignore == "biasbn" and t.dim() <= 1)


# ----------------------------------------------------------------------------------------------- PCA on arrays
@dataclass
class PCA:
    """``directions`` (n × P, unit rows), ``eigenvalues`` (n,), ``ratio`` (n,), ``random_axes`` (indices filled)."""

    directions: np.ndarray
    eigenvalues: np.ndarray
    ratio: np.ndarray
    random_axes: List[int] = field(default_factory=list)


def _blocks(P: int, K: int) -> List[slice]:
    step = max(1, _BLOCK_BYTES // (8 * max(K, 1)))
    return [slice(s, min(s + step, P)) for s in range(0, P, step)]


def gram(D: np.ndarray) -> np.ndarray:
    """G = D Dᵀ in float64, accumulated over column blocks so only a K × block slice is converted at a time."""
    K, P = D.shape
    G = np.zeros((K, K))
    for sl in _blocks(P, K):
        B = np.asarray(D[:, sl], dtype=np.float64)
        G += B @ B.T
    return G


def pca_directions(D: np.ndarray, n: int = 2, center: bool = False, seed: int = 0) -> PCA:
    """The first ``n`` principal directions of the rows of D via its Gram matrix (see the module docstring)."""
    K, P = D.shape
    G = gram(D)
    Gc = G
    if center:
        C = np.eye(K) - 1.0 / K
        Gc = C @ G @ C
    lam, U = torch.linalg.eigh(torch.from_numpy(Gc))   # ascending, float64
    lam, U = lam.numpy()[::-1].copy(), U.numpy()[:, ::-1].copy()
    total = float(np.trace(Gc))
    if not lam.size or lam[0] <= 0 or total <= 0:
        what = "every offset equals the mean offset (one checkpoint, or all identical)" if center else \
            "every offset is zero: all checkpoints equal the final one (after --ignore)"
        raise ValueError(f"{what}, so the trajectory has no direction; check --final and the checkpoint files")
    real = [i for i in range(min(n, K)) if lam[i] > DEGENERATE_RTOL * lam[0]]
    for i in real:
        if (G @ U[:, i])[0] < 0:   # the first checkpoint gets a positive coordinate: a reproducible sign
            U[:, i] = -U[:, i]
    V = np.zeros((n, P))
    for sl in _blocks(P, K):
        B = np.asarray(D[:, sl], dtype=np.float64)
        for i in real:
            V[i, sl] = (U[:, i] @ B) / math.sqrt(lam[i])
    rng = np.random.default_rng(seed)
    fill = [i for i in range(n) if i not in real]
    for i in fill:   # no variance left: any unit vector orthogonal to the others spans a usable plane
        v = rng.standard_normal(P)
        for j in range(i):
            v -= (V[j] @ v) * V[j]
        V[i] = v / np.linalg.norm(v)
    eig = np.array([lam[i] if i in real else 0.0 for i in range(n)])
    return PCA(V, eig, eig / total, fill)


def project(D: np.ndarray, V: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(coords K × n, residual K): least-squares coordinates of each row of D in the basis V, and what is left."""
    K, P = D.shape
    M = V @ V.T
    b = np.zeros((K, V.shape[0]))
    for sl in _blocks(P, K):
        b += np.asarray(D[:, sl], dtype=np.float64) @ V[:, sl].T
    coords = np.linalg.lstsq(M, b.T, rcond=None)[0].T   # = solve(M, b) for a basis; lstsq also survives a bad one
    res2 = np.zeros(K)
    for sl in _blocks(P, K):
        res2 += ((np.asarray(D[:, sl], dtype=np.float64) - coords @ V[:, sl]) ** 2).sum(axis=1)
    return coords, np.sqrt(res2)


# ----------------------------------------------------------------------------------------------- the pipeline
@dataclass
class Trajectory:
    """Everything ``write`` stores; ``directions`` maps x/y to ``{key: float32 array}`` in key order."""

    directions: Dict[str, Dict[str, np.ndarray]]
    pca: PCA
    coords: np.ndarray
    residual: np.ndarray
    norms: np.ndarray
    labels: List[int]
    checkpoints: List[str]
    final: str
    kind: str
    ignore: str
    center: bool
    model: str = ""
    lr_drops: List[int] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    projected_on: str = ""   # the surface / direction file whose directions were given (no PCA), else ""


def compute(spec: str, final: str, kind: str = "weights", ignore: str = "none", center: bool = True,
            model: Optional[torch.nn.Module] = None, model_name: str = "", lr_drops: Sequence[int] = (),
            memory_limit: int = 4 << 30, tmpdir: Optional[str] = None) -> Trajectory:
    """Load the checkpoints at ``spec`` one by one and compute the PCA directions and coordinates."""
    found, skipped = find_checkpoints(spec)
    ref = load_state_dict(final)
    keys = select_keys(ref, kind, model)
    used = [k for k in keys if moves(ref[k], ignore)]
    if not used:
        raise CheckpointError(f"no tensor of {final!r} takes part (all are 1-D or integer); try --ignore none")
    theta = {k: ref[k].detach().to(torch.float64).reshape(-1).numpy() for k in used}
    spans, P = {}, 0
    for k in used:
        spans[k] = slice(P, P + theta[k].size)
        P += theta[k].size
    K = len(found)
    dtype = np.float64 if K * P * 8 <= 256 << 20 else np.float32   # float32 offsets are still exact to 1e-7 rel.
    with tempfile.TemporaryDirectory(dir=tmpdir) as tmp:
        if K * P * np.dtype(dtype).itemsize > memory_limit:
            D = np.memmap(Path(tmp) / "offsets.bin", dtype=dtype, mode="w+", shape=(K, P))
        else:
            D = np.empty((K, P), dtype=dtype)
        norms = np.zeros(K)
        for row, (_, path) in enumerate(found):
            state = load_state_dict(path)
            _check_like(state, ref, used, path)
            for k in used:
                offset = state[k].detach().to(torch.float64).reshape(-1).numpy() - theta[k]
                D[row, spans[k]] = offset
                norms[row] += offset @ offset
            del state
        pca = pca_directions(D, 2, center)
        coords, residual = project(D, pca.directions)
        del D
    directions = {axis: OrderedDict((k, _tensor(pca.directions[i], spans.get(k), tuple(ref[k].shape))) for k in keys)
                  for i, axis in enumerate("xy")}
    return Trajectory(directions, pca, coords, residual, np.sqrt(norms), [e for e, _ in found],
                      [str(p) for _, p in found], str(final), kind, ignore, center, model_name, list(lr_drops),
                      [str(p) for p in skipped])


def read_directions(path: str, final: StateDict, kind: str = "weights", model: Optional[torch.nn.Module] = None
                    ) -> Dict[str, Dict[str, np.ndarray]]:
    """The x and y directions of a surface file, a direction file or a trajectory file (``directions/x/<key>``),
    or of the authors' direction files (``xdirection/0 … k−1`` in the order of :func:`select_keys`), as stored."""
    import h5py

    if not Path(path).is_file():
        raise CheckpointError(f"direction file {path!r} not found; pass a surface file, a direction file or a "
                              "trajectory file")
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as e:
        raise CheckpointError(f"direction file {path!r} is not a readable HDF5 file ({e})") from None
    out: Dict[str, Dict[str, np.ndarray]] = {}
    with f:
        for axis, legacy in (("x", "xdirection"), ("y", "ydirection")):
            if f"directions/{axis}" in f:
                group = f[f"directions/{axis}"]
                out[axis] = OrderedDict((k, np.asarray(group[k][()])) for k in group)
            elif legacy in f:
                keys = select_keys(final, kind, model)
                names = sorted(f[legacy].keys(), key=lambda n: int(n) if n.isdigit() else -1)
                if len(names) != len(keys):
                    raise CheckpointError(f"direction file {path!r} group {legacy} has {len(names)} tensors, the "
                                          f"final checkpoint has {len(keys)} for --type {kind}; check --type and "
                                          "--model")
                out[axis] = OrderedDict((k, np.asarray(f[legacy][n][()])) for k, n in zip(keys, names))
            else:
                raise CheckpointError(f"{path!r} has no directions/{axis} (nor the authors' {legacy}): it is not a "
                                      "2-D surface or direction file")
    for axis, tensors in out.items():
        bad = [k for k in tensors if k not in final or tuple(final[k].shape) != tuple(tensors[k].shape)]
        if bad:
            raise CheckpointError(f"direction {axis} of {path!r} does not match the final checkpoint at {bad[:3]} "
                                  f"({len(bad)} tensors); were the directions made for another model?")
    return out


def project_onto(spec: str, final: str, dir_file: str, kind: str = "weights", ignore: str = "none",
                 model: Optional[torch.nn.Module] = None, model_name: str = "", lr_drops: Sequence[int] = ()
                 ) -> Trajectory:
    """The path of the checkpoints at ``spec`` in the plane of given directions (the authors' ``plot_trajectory.py
    --dir_file``): no PCA. The coordinates are least-squares (α_k, β_k) with θ_final + α_k d_x + β_k d_y closest to
    θ_k — the surface's own units, so the path lies where the surface puts those weights. (The authors divide
    ⟨θ_k − θ_final, d⟩ by ‖d‖, which agrees for their orthonormal PCA directions but not for normalized random
    ones.) The directions are copied as they are, so ``distland plot SURFACE --trajectory`` accepts the file.
    ``--final`` must be the surface's centre θ*; the tensors taking part are the directions' floating-point ones
    (not 1-D ones under ``ignore: biasbn``)."""
    found, skipped = find_checkpoints(spec)
    ref = load_state_dict(final)
    given = read_directions(dir_file, ref, kind, model)
    keys = list(given["x"])
    used = [k for k in keys if k in given["y"] and moves(ref[k], ignore)
            and np.issubdtype(given["x"][k].dtype, np.floating)]
    if not used:
        raise CheckpointError(f"no tensor of {dir_file!r} takes part (all are 1-D or integer); try --ignore none")
    spans, P = {}, 0
    for k in used:
        spans[k] = slice(P, P + ref[k].numel())
        P += ref[k].numel()
    V = np.zeros((2, P))
    for i, axis in enumerate("xy"):
        for k in used:
            V[i, spans[k]] = np.asarray(given[axis][k], dtype=np.float64).reshape(-1)
    if not (np.linalg.norm(V[0]) > 0 and np.linalg.norm(V[1]) > 0):
        raise CheckpointError(f"a direction of {dir_file!r} is zero on every tensor taking part; check --ignore")
    D = np.empty((len(found), P))
    theta = {k: ref[k].detach().to(torch.float64).reshape(-1).numpy() for k in used}
    for row, (_, path) in enumerate(found):
        state = load_state_dict(path)
        _check_like(state, ref, used, path)
        for k in used:
            D[row, spans[k]] = state[k].detach().to(torch.float64).reshape(-1).numpy() - theta[k]
        del state
    coords, residual = project(D, V)
    nan2 = np.full(2, np.nan)   # no PCA: no explained variance
    return Trajectory(given, PCA(V, nan2, nan2), coords, residual, np.linalg.norm(D, axis=1),
                      [e for e, _ in found], [str(p) for _, p in found], str(final), kind, ignore, False, model_name,
                      list(lr_drops), [str(p) for p in skipped], projected_on=str(dir_file))


def _tensor(flat: np.ndarray, span: Optional[slice], shape: Tuple[int, ...]) -> np.ndarray:
    # Tensors left out of the PCA (1-D under biasbn, integer buffers) get a zero direction.
    return np.zeros(shape, np.float32) if span is None else flat[span].reshape(shape).astype(np.float32)


def _check_like(state: StateDict, ref: StateDict, used: List[str], path: Path) -> None:
    # Every checkpoint must come from the same architecture as the final one.
    missing = [k for k in ref if k not in state]
    extra = [k for k in state if k not in ref]
    shapes = [f"{k}: {tuple(state[k].shape)} vs final {tuple(ref[k].shape)}"
              for k in ref if k in state and tuple(state[k].shape) != tuple(ref[k].shape)]
    if missing or extra or shapes:
        raise CheckpointError(f"checkpoint {str(path)!r} does not match the final checkpoint: missing keys "
                              f"{missing[:3]}, unexpected keys {extra[:3]}, shape mismatches {shapes[:3]}; are all "
                              "files from one training run?")
    bad = [k for k in used if not bool(torch.isfinite(state[k]).all())]
    if bad:
        raise CheckpointError(f"checkpoint {str(path)!r} has NaN/inf values in {bad[:3]}; the run diverged there — "
                              "leave it out of the glob")


def is_trajectory_file(path: Union[str, Path]) -> bool:
    """A ``distland trajectory`` output (``trajectory/coords``, no surface grid)."""
    from ..surfacefile import holds_without_grid

    return holds_without_grid(str(path), "trajectory/coords")


def write(path: str, traj: Trajectory, overwrite: bool = False) -> None:
    """Store the directions (the layout ``directions.kind: file`` reads) and the projected path.

    Written to a temporary file and renamed into place, so a failure leaves any earlier file as it was. An existing
    file that is not a trajectory file (a surface, a Hessian file, someone's direction file) is refused unless
    ``overwrite``; an earlier trajectory output is replaced (it is derived from the checkpoints)."""
    from ..surfacefile import write_atomically

    out = Path(path)
    if out.exists() and not overwrite and not is_trajectory_file(out):
        raise ValueError(f"{out} exists and is not a distland trajectory file; pass --overwrite to replace it, or "
                         "choose another --out")
    # The output's folder is created, like `distland surface`'s.
    write_atomically(str(out), lambda f: _fill(f, traj))


def _fill(f: Any, traj: Trajectory) -> None:
    """The file's contents, into ``f`` (an open h5py file)."""
    import h5py

    text = h5py.string_dtype()
    f.attrs["direction_type"] = traj.kind
    f.attrs["final_checkpoint"] = traj.final
    names = traj.checkpoints if sum(map(len, traj.checkpoints)) < 48_000 else \
        [Path(p).name for p in traj.checkpoints]   # HDF5 attributes are limited to 64 KiB
    f.attrs["checkpoints"] = np.array(names, dtype=text)
    f.attrs["explained_variance_ratio"] = traj.pca.ratio
    f.attrs["explained_variance"] = traj.pca.eigenvalues
    f.attrs["random_axes"] = ",".join("xy"[i] for i in traj.pca.random_axes)
    f.attrs["centered"] = traj.center
    f.attrs["ignore"] = traj.ignore
    f.attrs["model"] = traj.model
    f.attrs["source"] = ("distland trajectory (PCA of checkpoint offsets, Li et al. 2018 §7)" if not traj.projected_on
                         else f"distland trajectory --dir-file {traj.projected_on} (least-squares projection)")
    f.attrs["projected_on"] = traj.projected_on
    group = f.create_group("directions", track_order=True)
    for axis, tensors in traj.directions.items():
        sub = group.create_group(axis, track_order=True)   # keeps the model's key order on iteration
        for key, value in tensors.items():
            sub.create_dataset(key, data=value)
    t = f.create_group("trajectory")
    t["coords"] = traj.coords
    t["residual"] = traj.residual
    t["norms"] = traj.norms
    t["labels"] = np.asarray(traj.labels, dtype=np.int64)
    t["lr_drops"] = np.asarray(traj.lr_drops, dtype=np.int64)
    t["checkpoints"] = np.array(traj.checkpoints, dtype=text)


# ----------------------------------------------------------------------------------------------- CLI
def add_subcommand(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register ``distland trajectory``."""
    p = subparsers.add_parser(
        "trajectory", help="PCA directions of a training trajectory (paper §7)",
        description="Compute the two PCA directions of the offsets θ_k − θ_final of a run's checkpoints and the "
                    "path's coordinates in them; the output file is a direction file for `distland surface`.")
    p.add_argument("checkpoints", metavar="CKPT_DIR_OR_GLOB",
                   help="a directory of checkpoints or a quoted glob; ordered by the epoch number in the name")
    p.add_argument("--final", required=True, metavar="CKPT", help="the final weights: the centre of the plot")
    p.add_argument("--out", default="traj.h5", help="output HDF5 file (default: traj.h5; an earlier trajectory "
                   "file there is replaced, any other file only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace --out even if it is not a trajectory file")
    p.add_argument("--model", default="", help="zoo name or package.module:function; gives the key order and "
                   "tells parameters from buffers exactly (without it, the final checkpoint's keys are used)")
    p.add_argument("--model-args", default="", metavar="YAML", help="keyword arguments for --model, e.g. '{width: 8}'")
    p.add_argument("--type", default="weights", choices=("weights", "states"),
                   help="weights: parameters only; states: the whole state_dict incl. BatchNorm statistics")
    p.add_argument("--ignore", default="none", choices=("biasbn", "none"),
                   help="none (default, as the authors' plot_trajectory.py): every float tensor takes part; "
                        "biasbn: leave 1-D tensors (biases, BatchNorm) out of the PCA")
    p.add_argument("--center", action=argparse.BooleanOptionalAction, default=True,
                   help="subtract the mean offset before PCA, as the authors' tool (scikit-learn PCA) does "
                        "(default); --no-center: PCA of the raw offsets, whose explained-variance ratios are not "
                        "comparable with the paper's")
    p.add_argument("--dir-file", default="", metavar="FILE",
                   help="project onto the x/y directions of this surface, direction or trajectory file (the "
                        "authors' --dir_file) instead of computing PCA directions; --final must be its centre")
    p.add_argument("--lr-drops", default="", metavar="EPOCHS", help="comma-separated epochs, e.g. 150,225")
    p.add_argument("--tmpdir", default=None, help="where to put the offsets matrix when it exceeds memory")
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: argparse.Namespace) -> int:
    """Run ``distland trajectory``; prints the explained variance, the output file and the next command."""
    import yaml

    try:
        drops = [int(s) for s in str(args.lr_drops or "").replace(" ", "").split(",") if s]
    except ValueError:
        print(f"distland trajectory: error: --lr-drops {args.lr_drops!r} must be comma-separated integers",
              file=sys.stderr)
        return 2
    try:
        model = None
        if args.model:
            from ..models import build_model

            kwargs = yaml.safe_load(args.model_args) if args.model_args else {}
            if not isinstance(kwargs, dict):
                raise ValueError(f"--model-args must be a YAML mapping, got {args.model_args!r}")
            model = build_model(args.model, **kwargs)
        if args.dir_file:
            traj = project_onto(args.checkpoints, args.final, args.dir_file, args.type, args.ignore, model,
                                args.model, drops)
            _warn_other_centre(args.dir_file, args.final)
        else:
            traj = compute(args.checkpoints, args.final, args.type, args.ignore, args.center, model, args.model,
                           drops, tmpdir=args.tmpdir)
        write(args.out, traj, args.overwrite)
    except (CheckpointError, ValueError, OSError, yaml.YAMLError) as e:
        print(f"distland trajectory: error: {e}", file=sys.stderr)
        return 2
    print(summary(traj, args.out))
    return 0


def _warn_other_centre(dir_file: str, final: str) -> None:
    # A surface records θ*'s SHA-256: a path measured from another centre would sit in the wrong place on it.
    import h5py

    from ..checkpoint import sha256

    with h5py.File(dir_file, "r", locking=False) as f:
        stored = f.attrs.get("checkpoint_sha256")
    stored = stored.decode() if isinstance(stored, bytes) else stored
    if isinstance(stored, str) and len(stored) == 64 and stored != sha256(final):
        print(f"distland trajectory: warning: {dir_file} was computed around another checkpoint than --final "
              f"{final}; the path is measured from --final", file=sys.stderr)


def _pca_kind(traj: Trajectory) -> str:
    # Said next to every explained-variance number: only centered ratios compare with the authors' (and paper's).
    return "centered, as the authors" if traj.center else "uncentered, not comparable with the authors'"


def summary(traj: Trajectory, out: str) -> str:
    """What was computed, where it went, and how to draw the surface around it."""
    if traj.projected_on:
        return (f"trajectory: {len(traj.labels)} checkpoints (epochs {traj.labels[0]}…{traj.labels[-1]}) projected "
                f"onto the directions of {traj.projected_on} (no PCA), type {traj.kind}, ignore {traj.ignore}\n"
                f"wrote {out}: directions/x, directions/y (copied), trajectory/coords ({len(traj.labels)} × 2), "
                f"residual max {traj.residual.max():.3g} (offset norms up to {traj.norms.max():.3g})\n"
                f"next: distland plot {traj.projected_on} --trajectory {out}   (or distland plot {out}: the path "
                "alone)")
    r = traj.pca.ratio
    lines = [f"trajectory: {len(traj.labels)} checkpoints (epochs {traj.labels[0]}…{traj.labels[-1]}), "
             f"type {traj.kind}, ignore {traj.ignore}, {_pca_kind(traj)} PCA"]
    if traj.skipped:
        lines.append(f"  skipped {len(traj.skipped)} file(s) without an epoch number: {traj.skipped[:3]}")
    lines.append(f"explained variance ({_pca_kind(traj)}): x {100 * r[0]:.2f}%, y {100 * r[1]:.2f}% "
                 f"(together {100 * r.sum():.2f}%)")
    if traj.pca.random_axes:
        lines.append("  the path has no variance left for " + " and ".join("xy"[i] for i in traj.pca.random_axes)
                     + ": filled with a random orthogonal unit direction (a 1-D surface may suit better)")
    # The grid must hold the origin (the final weights) and the whole path, with a margin off the plot's edge.
    lo, hi = np.minimum(traj.coords.min(axis=0), 0.0), np.maximum(traj.coords.max(axis=0), 0.0)
    pad = 0.1 * np.maximum(hi - lo, 1e-12)
    axes = [_grid_through_origin(lo[k] - pad[k], hi[k] + pad[k]) for k in range(2)]
    lines.append(f"wrote {out}: directions/x, directions/y, trajectory/coords ({len(traj.labels)} × 2), "
                 f"residual max {traj.residual.max():.3g} (offset norms up to {traj.norms.max():.3g})")
    lines.append(f"next: distland surface CONFIG --set checkpoint={traj.final} --set directions.kind=file "
                 f"--set directions.file={out} --set directions.type={traj.kind} "
                 f"--set 'grid.x=[{axes[0][0]:.6g},{axes[0][1]:.6g},{axes[0][2]}]' "
                 f"--set 'grid.y=[{axes[1][0]:.6g},{axes[1][1]:.6g},{axes[1][2]}]' "
                 f"--set output={str(Path(out).with_suffix(''))}_surface.h5")
    return "\n".join(lines)


def _grid_through_origin(lo: float, hi: float, steps: int = 50) -> Tuple[float, float, int]:
    """[lo', hi', n] covering [lo, hi] in about ``steps`` steps, with 0 (the final weights) a grid point."""
    h = float(f"{(hi - lo) / steps:.2g}")
    a, b = math.floor(lo / h), math.ceil(hi / h)
    return a * h, b * h, b - a + 1
