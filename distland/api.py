"""The Python API: loss landscapes of in-memory models from notebooks and scripts, on the CLI's own pipeline.

``distland.surface(model, data, ...)`` builds the same :class:`~distland.config.Config` a YAML file would (the same
strict checks and messages), hands the in-memory model, data and interpolation target to
:func:`distland.sweep.run_surface` — the one evaluation path, also the CLI's — and returns a :class:`Surface`.

* The model passed in is never modified: the pipeline gets a deep copy (in eval mode, on the host), so neither an
  exception nor a KeyboardInterrupt in the middle of a sweep can leave perturbed weights or BatchNorm statistics
  behind.
* ``output=None`` keeps the results in memory: the job writes a temporary file that is read back and deleted (the
  same writer, resume logic and summary as a file job). A path is the usual surface file: rerunning the same call
  (the same weights and data — both are hashed into the file's identity) resumes it, e.g. after a kernel restart.
* Under ``mpirun`` every rank calls the same function with the same arguments; the grid is shared out as for the
  CLI, rank 0 gets the :class:`Surface` and the other ranks get ``None``.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .config import INTERP_X, ConfigError, config_from_mapping

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torch import nn

    from .analysis.trajectory import Trajectory
    from .surfacefile import SurfaceData

IN_MEMORY = "<in memory>"   # data.name of in-memory tensors, output of in-memory results
SPLIT_KEYS = ("train", "test")


# ------------------------------------------------------------------------------------------------ results
class Surface:
    """A computed or read surface: coordinates ``x`` (and ``y``) and every stored quantity as numpy arrays with
    ``[i, j] ↔ (x_i, y_j)``; points not done yet are NaN (``done`` says which are). ``surface["train_loss"]`` or
    ``surface.train_loss`` give one array, ``surface.values`` all of them."""

    def __init__(self, data: "SurfaceData", path: Optional[str] = None, summary: str = "") -> None:
        self.data = data            # what the plotting and analysis functions take
        self.path = path            # None: in memory only
        self.summary = summary      # the CLI's summary text, for a surface just computed

    # -------------------------------------------------------------------- arrays
    @property
    def x(self) -> np.ndarray:
        return self.data.x

    @property
    def y(self) -> Optional[np.ndarray]:
        return self.data.y

    @property
    def values(self) -> Dict[str, np.ndarray]:
        return self.data.metrics

    @property
    def done(self) -> np.ndarray:
        return self.data.done

    @property
    def quantities(self) -> List[str]:
        return list(self.data.metrics)

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.data.shape

    @property
    def complete(self) -> bool:
        return self.data.complete

    @property
    def attrs(self) -> Dict[str, Any]:
        return self.data.attrs

    @property
    def config(self) -> Dict[str, Any]:
        return self.data.config

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.data.metrics:
            raise KeyError(f"this surface has no {name!r}; it has {', '.join(self.data.metrics) or 'nothing'}")
        return self.data.metrics[name]

    def __getattr__(self, name: str) -> np.ndarray:
        data = self.__dict__.get("data")
        if data is not None and name in data.metrics:
            return data.metrics[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_numpy(self) -> Dict[str, np.ndarray]:
        """``x``, ``y`` (2-D), ``z``, … (K-D), every quantity and ``done`` as plain arrays (copies)."""
        out = {name: a.copy() for name, a in zip(self.data.names, self.data.axes)}   # x, y, z, … as the file has them
        out.update({k: v.copy() for k, v in self.values.items()})
        out["done"] = self.done.copy()
        return out

    def to_xarray(self) -> Any:
        """An ``xarray.Dataset``: axes ``x`` (and ``y``, ``z``, …), one variable per quantity, provenance in ``attrs``."""
        try:
            import xarray as xr
        except ImportError as e:
            raise ImportError("Surface.to_xarray needs xarray: pip install 'distland[xarray]'") from e
        dims = tuple(self.data.names)   # x, y, z, … (a K-D surface has one dimension per axis)
        coords = dict(zip(dims, self.data.axes))
        attrs = {k: v for k, v in self.attrs.items() if isinstance(v, (str, int, float)) and not k.startswith("_")}
        attrs["path"] = self.path or IN_MEMORY
        return xr.Dataset({k: (dims, v) for k, v in self.values.items()}, coords=coords, attrs=attrs)

    # -------------------------------------------------------------------- analysis and plots
    def sharpness(self, metric: Optional[str] = None, radius: float = 0.25, threshold: float = 0.1,
                  fit_radius: Optional[float] = None) -> Dict[str, float]:
        """The sharpness report (:mod:`distland.analysis.sharpness`) of ``metric`` (default: the first loss)."""
        from .analysis.sharpness import sharpness_report

        report = sharpness_report(self.data, metric or self._loss_metric(), radius, threshold, fit_radius)
        return {k: float(v) for k, v in report.items()}

    def slice(self, **fixed: Union[float, str]) -> "Surface":
        """The plane (or line) of a K-D surface with the named axes fixed: ``s.slice(z=0.5)`` at the grid coordinate
        0.5, ``s.slice(z="@2")`` at index 2; no arguments: every axis after y at its point nearest 0 (see
        :mod:`distland.slicing`). The result's ``data.labels`` name its axes, ``data.section`` the fixed ones."""
        from . import slicing

        return Surface(slicing.take(self.data, {k: str(v) for k, v in fixed.items()}), self.path)

    def plot(self, kind: Union[str, Sequence[str], None] = None, metric: Optional[str] = None, log: bool = False,
             ax: Any = None, trajectory: Optional[str] = None, **options: Any) -> Union["Figure", List["Figure"]]:
        """Matplotlib figure(s): ``kind`` is ``1d`` (1-D surfaces, the default) or ``contour`` (the 2-D default),
        ``contourf``, ``heatmap``, ``surface3d``; a list of kinds gives a list of figures. Figures are made
        without pyplot (no global state; Jupyter shows a returned figure); pass ``ax`` to draw into your own axes.
        ``trajectory``: a file from :func:`trajectory` to draw over a 2-D plot. Other options: ``vmin``, ``vmax``,
        ``levels``, ``zmax``, ``vlevel``, ``xlim`` (as ``distland plot``); ``metric`` may be ``train_err`` /
        ``test_err`` (100 − accuracy)."""
        from .plot import PlotOptions
        from .plot import surface as draw
        from .plot.common import add_errors, choose_levels, pick_metric, values

        if metric is not None and metric.endswith("_err") and metric not in self.data.metrics:
            add_errors(self.data)

        if kind is not None and not isinstance(kind, str):
            return [self.plot(k, metric, log, None, trajectory, **options) for k in kind]
        if self.ndim > 2:   # a K-D surface: the (x, y) plane through the points nearest 0 (others: slice first)
            return self.slice().plot(kind, metric, log, ax, trajectory, **options)
        kind = kind or ("1d" if self.ndim == 1 else "contour")
        opts = PlotOptions(metric=metric, log=log, **options)
        if self.ndim == 1 and kind != "1d":
            raise ValueError(f"a 1-D surface is drawn with kind='1d', not {kind!r}")
        if ax is not None:
            if kind == "1d":
                draw._draw_1d(ax, self.data, opts)
            else:
                draw._check_2d(self.data, kind)
                name = pick_metric(self.data, metric)
                levels = choose_levels([values(self.data, name, log)], opts, name)
                draw.draw_2d(ax, self.data, kind, name, opts, levels)
            return ax.figure
        if kind == "1d":
            return draw.plot_1d(self.data, opts)
        traj = None
        if trajectory is not None:
            from .plot.trajectory import read_trajectory

            traj = read_trajectory(str(trajectory))
        return draw.plot_2d(self.data, kind, opts, traj)

    def _loss_metric(self) -> str:
        losses = [m for m in self.values if m.endswith("_loss")]
        if not losses:
            raise ValueError(f"this surface has no loss to analyse; it has {', '.join(self.values) or 'nothing'}")
        return "train_loss" if "train_loss" in losses else losses[0]

    def __repr__(self) -> str:
        def axis(v: np.ndarray) -> str:
            return f"[{v[0]:g}, {v[-1]:g}]" if len(v) > 1 else f"{v[0]:g}"

        grid = ", ".join(f"{name} {axis(a)}" for name, a in zip(self.data.names, self.data.axes))
        shape = "×".join(map(str, self.shape))
        done = int(np.count_nonzero(self.done))
        cfg = self.config
        directions = cfg.get("directions") if isinstance(cfg.get("directions"), dict) else {}
        model = cfg.get("model") or self.attrs.get("model") or "?"
        seed = self.attrs.get("seed", directions.get("seed", "?"))
        kind = directions.get("kind", "")
        lines = [f"<distland.Surface {self.ndim}-D {shape} ({grid}): {done}/{self.done.size} points done "
                 f"({100.0 * done / max(1, self.done.size):.0f}%)",
                 f"  model {model}, directions {kind or '?'}"
                 + (f" (seed {seed}, {directions.get('norm', '?')}-normalized)" if kind == "random" else ""),
                 f"  quantities: {', '.join(self.values) or 'none'}",
                 f"  {'file ' + self.path if self.path else 'in memory'}"
                 + (" (the paper authors' layout)" if self.data.layout != "distland" else "") + ">"]
        return "\n".join(lines)


def read(path: Union[str, os.PathLike]) -> Surface:
    """A surface file (distland's, or the paper authors' tool's) as a :class:`Surface`."""
    from .surfacefile import read as read_file

    return Surface(read_file(str(path)), str(path))


# ------------------------------------------------------------------------------------------------ jobs
def surface(model: Union["nn.Module", str], data: Any, *, grid: Optional[Mapping[str, Any]] = None,
            directions: Optional[Mapping[str, Any]] = None, output: Optional[Union[str, os.PathLike]] = None,
            overwrite: bool = False, progress: Optional[bool] = None, verbose: bool = False,
            **config: Any) -> Optional[Surface]:
    """The loss surface of ``model`` around its current weights θ*.

    ``model``: an ``nn.Module`` (evaluated on a copy at its current weights; never modified) or a zoo name /
    ``"package.module:function"`` plug-in as in the YAML (then ``checkpoint=`` and ``model_args=`` apply).
    ``data``: an ``(inputs, targets)`` pair of tensors (the ``train`` split), a mapping — the YAML's ``data``
    section, where ``train`` and ``test`` may hold ``(inputs, targets)`` pairs, e.g.
    ``{"train": (x, y), "test": (xt, yt), "batch_size": 256}`` — or a data name (``"digits"``).
    ``grid``, ``directions`` and the other keyword arguments (``engine=``, ``sweep=``, ``quantities=``,
    ``checkpoint=`` ...) are the YAML's sections and keys, checked as strictly; ``directions["target"]`` may be an
    ``nn.Module`` (``kind: interp``, see :func:`interpolate`).
    ``output``: None keeps the results in memory; a path writes the surface file and resumes it when it exists.
    ``progress``: a bar (tqdm's notebook bar where installed), or False for none (default: ``sweep.progress``).
    Returns the :class:`Surface` — on rank 0 under ``mpirun``; the other ranks get None.
    """
    import torch

    from .comm import get_comm
    from .data import as_split
    from .surfacefile import read as read_file
    from .sweep import run_surface

    mapping: Dict[str, Any] = {k: copy.deepcopy(v) for k, v in config.items()}
    for key in ("model", "data", "output"):
        if key in mapping:
            raise ConfigError(f"{key} is an argument of distland.surface itself, not a keyword setting")
    in_memory = isinstance(model, torch.nn.Module)
    if in_memory:
        for key in ("checkpoint", "model_args", "train"):
            if mapping.get(key):
                raise ConfigError(f"{key} applies to a model given by name; an nn.Module is evaluated at its "
                                  "current weights (load the checkpoint into it first)")
        mapping["model"] = f"<in-memory {type(model).__name__}>"
    elif isinstance(model, str):
        mapping["model"] = model
    else:
        raise TypeError(f"model must be a torch.nn.Module or a model name, got {type(model).__name__}")
    tensors = _data_section(data, mapping)
    direction_section = dict(directions or {})
    target = direction_section.get("target")
    if isinstance(target, torch.nn.Module):
        direction_section["target"] = f"<in-memory {type(target).__name__}>"
    elif target is not None and not isinstance(target, (str, os.PathLike)):
        raise TypeError(f"directions target must be an nn.Module or a checkpoint path, got {type(target).__name__}")
    elif target is not None:
        direction_section["target"] = str(target)
    if directions is not None:
        mapping["directions"] = direction_section
    if grid is not None:
        mapping["grid"] = dict(grid)
    if progress is not None:
        mapping["sweep"] = {**dict(mapping.get("sweep") or {}), "progress": bool(progress)}
    mapping["output"] = str(output) if output is not None else IN_MEMORY
    cfg = config_from_mapping(mapping)

    clone = _evaluation_copy(model, "model") if in_memory else None
    target_model = None
    if isinstance(target, torch.nn.Module):
        target_model = _evaluation_copy(target, "the interpolation target")
    elif target is not None and in_memory and cfg.directions.kind == "interp":
        from .checkpoint import apply_state_dict, load_state_dict

        target_model = _evaluation_copy(model, "model")  # the architecture, then the target's weights
        apply_state_dict(target_model, load_state_dict(cfg.directions.target), f"directions target {target!r}")
    splits = None
    if tensors is not None:
        splits = {name: as_split(pair, f"data {name!r}", cfg.data.max_samples, ":" not in cfg.loss)
                  for name, pair in tensors.items()}

    comm = get_comm(cfg.sweep.mpi)
    if comm.size > 1:
        _check_same_everywhere(comm, clone, splits)
    tmpdir = None
    if output is None:
        if comm.size > 1:
            if cfg.sweep.io == "mpio":
                raise ConfigError("sweep.io 'mpio' needs output=PATH: results kept in memory are gathered by rank 0")
            cfg.sweep.io = "root"  # the temporary file lives on rank 0's node only
        tmpdir = tempfile.mkdtemp(prefix="distland-") if comm.is_root else None
        cfg.output = os.path.join(comm.bcast(tmpdir) or "", "surface.h5")
    report = _progress_bar() if cfg.sweep.progress and comm.is_root else None
    try:
        summary = run_surface(cfg, overwrite=overwrite, verbose=verbose, comm=comm, model=clone, splits=splits,
                              target_model=target_model, report=report)
        if summary is None:
            return None
        result = read_file(cfg.output)
        if output is None:  # the temporary file is gone when the caller sees these
            result.path = summary.path = IN_MEMORY
        return Surface(result, None if output is None else str(output), summary.text())
    finally:
        if report is not None:
            report.close()
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def interpolate(model_a: Union["nn.Module", str], model_b: Union["nn.Module", str], data: Any, *,
                grid: Optional[Mapping[str, Any]] = None, directions: Optional[Mapping[str, Any]] = None,
                **kwargs: Any) -> Optional[Surface]:
    """The 1-D loss along the straight line θ_a + α(θ_b − θ_a) (default α ∈ [-0.5, 1.5], 401 points):
    ``directions.kind: interp`` with ``model_b`` (an ``nn.Module`` or a checkpoint path) as the target. Other
    arguments as :func:`surface`; the result's sharpness report includes the barrier between the two."""
    section = dict(directions or {})
    if section.get("kind", "interp") != "interp":
        raise ConfigError(f"distland.interpolate uses directions.kind 'interp', not {section['kind']!r}")
    section.update(kind="interp", target=model_b)
    if grid is None:
        grid = {"x": list(INTERP_X), "y": None}
    return surface(model_a, data, grid=grid, directions=section, **kwargs)


def trajectory(checkpoints: Union[str, os.PathLike], final: Union[str, os.PathLike], *,
               output: Optional[Union[str, os.PathLike]] = None, kind: str = "weights", ignore: str = "biasbn",
               center: bool = False, model: Union["nn.Module", str, None] = None,
               lr_drops: Sequence[int] = (), overwrite: bool = False) -> "Trajectory":
    """PCA directions of a training run (``distland trajectory``): ``checkpoints`` is a directory or a glob of
    per-epoch checkpoints, ``final`` the final one. With ``output`` the direction file is written, for
    ``surface(..., directions={"kind": "file", "file": output})`` and ``Surface.plot(trajectory=output)``; an
    earlier trajectory file there is replaced, any other file only with ``overwrite=True``.
    Returns the :class:`~distland.analysis.trajectory.Trajectory` (directions, ``coords``, ``pca.ratio``)."""
    import torch

    from .analysis import trajectory as traj

    name = model if isinstance(model, str) else (type(model).__name__ if model is not None else "")
    instance = model
    if isinstance(model, str):
        from .models import build_model

        instance = build_model(model)
    elif model is not None and not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or a model name, got {type(model).__name__}")
    result = traj.compute(str(checkpoints), str(final), kind, ignore, center, instance, name, list(lr_drops))
    if output is not None:
        traj.write(str(output), result, overwrite)
    return result


# ------------------------------------------------------------------------------------------------ helpers
def _data_section(data: Any, mapping: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Put the ``data`` section into ``mapping``; return the in-memory (inputs, targets) pairs by split, if any."""
    if isinstance(data, str):
        mapping["data"] = {"name": data}
        return None
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise ValueError(f"data: expected (inputs, targets), got a sequence of {len(data)} items")
        mapping["data"] = {"name": IN_MEMORY, "split": "train"}
        return {"train": data}
    if isinstance(data, Mapping):
        section = dict(data)
        tensors = {k: section.pop(k) for k in SPLIT_KEYS if k in section}
        if tensors:
            for key in ("name", "split", "root", "options"):
                if key in section:
                    raise ConfigError(f"data.{key} cannot be combined with in-memory train/test tensors "
                                      "(the keys given say which splits are evaluated)")
            section["name"] = IN_MEMORY
            section["split"] = "both" if len(tensors) == 2 else next(iter(tensors))
        mapping["data"] = section
        return {s: tensors[s] for s in SPLIT_KEYS if s in tensors} or None
    raise TypeError(f"data must be (inputs, targets), a mapping of splits or settings, or a data name; "
                    f"got {type(data).__name__}")


def _evaluation_copy(model: "nn.Module", what: str) -> "nn.Module":
    """A deep copy on the host in eval mode: the pipeline moves, perturbs and folds it, never the original."""
    try:
        clone = copy.deepcopy(model)
    except Exception as e:  # noqa: BLE001 - any failure means we cannot protect the caller's model
        raise ValueError(f"{what}: distland evaluates a copy of the model, and copy.deepcopy failed ({e}); make the "
                         "module deep-copyable (e.g. remove non-copyable attributes)") from None
    return clone.cpu().eval()


def _check_same_everywhere(comm: Any, model: Optional["nn.Module"], splits: Optional[Mapping[str, Any]]) -> None:
    """Under MPI each rank evaluates its own objects: they must be rank 0's, or the surface would mix two jobs."""
    from .sweep import data_digest, state_digest

    mine = (state_digest(model) if model is not None else "", data_digest(splits) if splits else "")
    everyone = comm.allgather(mine)
    differing = [r for r, other in enumerate(everyone) if other != everyone[0]]
    if differing:  # every rank sees the same list, so all of them stop here alike
        raise ValueError(f"the in-memory model or data of rank(s) {differing} differ from rank 0's; "
                         "under mpirun every rank must pass the same weights and data (seed the training, or load "
                         "a checkpoint, on every rank)")


class _Bar:
    """A progress reporter for :class:`distland.schedule.Progress`: tqdm's bar (its notebook widget in Jupyter),
    one per quantity."""

    def __init__(self, tqdm: Any) -> None:
        self.tqdm = tqdm
        self.bar: Any = None
        self.label: Optional[str] = None

    def __call__(self, p: Any) -> None:
        if self.bar is None or self.label != p.label:
            self.close()
            self.label = p.label
            self.bar = self.tqdm(total=p.total, unit="pt", desc=f"distland {p.label}", leave=True)
        self.bar.n = p.done
        self.bar.refresh()
        if p.done >= p.total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _progress_bar() -> Optional[_Bar]:
    """tqdm's bar where installed; else None: the CLI's progress line (:func:`distland.schedule.report_line`)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return _Bar(tqdm)
