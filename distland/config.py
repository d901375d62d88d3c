"""Strict, typed configuration: dataclasses loaded from YAML with dotted ``--set key=value`` overrides.

An unknown key is an error that lists the valid ones; values are type-checked; the resolved config is saved as YAML
text into every output file. The same machinery loads the training config (:mod:`distland.train`).
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Type, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem; the message names the key and what would be valid."""


# --------------------------------------------------------------------------------------------------- sections
@dataclass
class DataSource:
    """Where samples come from (the training config's whole ``data`` section)."""

    name: str = "digits"            # digits | synthetic | cifar10 | "package.module:function"
    max_samples: int = 0            # per split; 0 = all
    root: str = ""                  # cifar10: the .tar.gz or the extracted cifar-10-batches-py/ folder
    options: Dict[str, Any] = field(default_factory=dict)   # extra keyword arguments for a built-in loader


@dataclass
class DataConfig(DataSource):
    """A surface job's data: the source, which splits to evaluate, and the batch size."""

    split: str = "train"            # train | test | both
    batch_size: int = 0             # 0 = chosen by the engine for the device
    subset: int = 0                 # a random subset of N samples of each split (0 = all), drawn with subset_seed
    subset_seed: int = 0
    split_index: List[int] = field(default_factory=list)   # [k, n]: the k-th of n equal chunks of the train
                                    # split (the authors' --split_idx k --data_split n); [] = all


NORMS = ("filter", "layer", "weight", "dfilter", "dlayer", "none")   # directions.norm (see distland.directions)


LOSSES = ("cross_entropy", "mse")   # the built-in criteria of distland.losses


def check_loss(key: str, value: str) -> None:
    """A built-in criterion or a plug-in ``module:function`` (imported only when a job uses it)."""
    if ":" not in value and value not in LOSSES:
        raise ConfigError(f"{key}: {value!r} is not valid; choose {', '.join(LOSSES)} or a plug-in "
                          "'package.module:function' returning per-sample losses")


def check_device(key: str, value: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (what :func:`distland.engine.pick_device` understands)."""
    if not (value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value)):
        raise ConfigError(f"{key}: {value!r} is not valid; choose auto, cpu, cuda or cuda:N")


@dataclass
class DirectionsConfig:
    kind: str = "random"            # random | interp (path to `target`) | plane (θ*, target, target2) | file
    norm: str = "filter"            # filter | layer | weight | dfilter | dlayer | none
    ignore: str = "biasbn"          # biasbn | none
    type: str = "auto"              # auto | weights (parameters) | states (state_dict incl. BN running stats);
                                    # auto: states for interp and plane (the end points' BN statistics), else weights
    seed: int = 0
    same_dir: bool = False
    file: str = ""                  # reuse directions from a file (ours or the loss-landscape layout)
    target: str = ""                # interp / plane: the second checkpoint θ′ (x = 1)
    target2: str = ""               # plane: the third checkpoint θ″ (y = 1); the plane is θ* + x(θ′−θ*) + y(θ″−θ*)
    ynorm: str = ""                 # the y axis's norm when random ("" = norm); the authors' --ynorm
    yignore: str = ""               # the y axis's ignore when random ("" = ignore); the authors' --yignore

    @property
    def between_models(self) -> bool:
        """An interpolation or a plane: the axes run from θ* to other trained models (``target``, ``target2``)."""
        return self.kind in ("interp", "plane")

    def resolved_type(self) -> str:
        """``type`` with ``auto`` resolved: an interpolation or a plane must carry BatchNorm's running statistics
        along, or x = 1 is θ′'s weights with θ*'s statistics, not θ′; random and file directions move parameters
        only."""
        if self.type != "auto":
            return self.type
        return "states" if self.between_models else "weights"

    def axis(self, index: int) -> Tuple[str, str]:
        """(norm, ignore) of axis ``index`` (0 = x, 1 = y): the y axis may override both."""
        if index == 1:
            return self.ynorm or self.norm, self.yignore or self.ignore
        return self.norm, self.ignore


INTERP_X = (-0.5, 1.5, 401)   # the default 1-D interpolation grid: beyond both end points
PLANE_AXIS = (-0.5, 1.5, 41)  # the default axes of a plane through three models (0 and 1 are grid points)


@dataclass
class GridConfig:
    x: List[float] = field(default_factory=lambda: [-1.0, 1.0, 21])
    y: Optional[List[float]] = field(default_factory=lambda: [-1.0, 1.0, 21])
    z: Optional[List[float]] = None                            # a third axis: a 3-D landscape (a volume)
    more: List[List[float]] = field(default_factory=list)      # axes 4, 5, … ([min, max, num] each), after z

    def extra_axes(self) -> List[List[float]]:
        """The axes after ``y``: ``z``, then ``more``."""
        return ([] if self.z is None else [self.z]) + list(self.more)


@dataclass
class EngineConfig:
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    threads: int = 0                # CPU threads per rank; 0 = cores on the node / ranks on the node
    channels_last: str = "auto"     # auto | on | off
    fold_bn: str = "auto"           # auto | on | off: fold eval-mode BatchNorm into the preceding conv (exact)
    compile: str = "auto"           # auto | on | off: torch.compile the forward pass (auto: for long sweeps)
    precision: str = "fp32"         # fp32 | tf32 | bf16 (reduced precision is opt-in and recorded)
    stream_data: str = "auto"       # auto | on | off: keep data on the host and stream it to the GPU in chunks
                                    # (auto: when it would take more than half the GPU's free memory)


@dataclass
class SweepConfig:
    chunk: int = 0                  # grid points per work unit; 0 = adaptive
    mpi: str = "auto"               # auto | on | off: use MPI (auto: when started by mpirun/srun)
    io: str = "auto"                # auto | mpio | root: parallel HDF5, or rank 0 writes everything
    progress: bool = True


@dataclass
class HessianConfig:
    """``distland hessian``: the Hessian of the mean loss at θ* (see distland/hessian/)."""

    params: str = "ndim2"           # ndim2 (tensors with >= 2 dims, as the paper) | all
    samples: int = 0                # the first N samples of the split (0: all the data section loads)
    batch_size: int = 0             # samples per double backward (0: data.batch_size, else 128 CPU / 512 GPU)
    tol: float = 1e-3               # Ritz pairs converge when ‖Hv − λv‖ <= tol·max|λ| (see distland/hessian)
    max_iter: int = 200             # at most this many Hessian-vector products per Lanczos run
    map_tol: float = 1e-2           # quantities: [hessian] maps (λmax/λmin per grid point): the paper authors' tol
    top_k: int = 5                  # eigenpairs (descending)
    axes: List[int] = field(default_factory=lambda: [0, 1])   # which eigenpairs are the file's directions
                                    # x, y (, z, …): indices into the top-k, 0 = the largest eigenvalue
    trace_probes: int = 50          # Hutchinson probes (0: no trace)
    density_probes: int = 4         # stochastic Lanczos quadrature probes (0: no density)
    lanczos_steps: int = 80         # Lanczos steps per density probe
    seed: int = 0
    direction_norm: str = "unit"    # unit (eigenvectors as they are) | filter (filter-normalized like the paper)
    cache: str = "auto"             # auto | on | off: keep each batch's first-order graph between products
    output: str = ""                # "" = <output stem>_hessian.h5 next to the surface file

    def validate(self) -> None:
        _choice("hessian.params", self.params, ("ndim2", "all"))
        _choice("hessian.direction_norm", self.direction_norm, ("unit", "filter"))
        _choice("hessian.cache", self.cache, ("auto", "on", "off"))
        for key in ("samples", "batch_size", "trace_probes", "density_probes"):
            if getattr(self, key) < 0:
                raise ConfigError(f"hessian.{key} must be >= 0")
        for key in ("max_iter", "top_k", "lanczos_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"hessian.{key} must be >= 1")
        for key in ("tol", "map_tol"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"hessian.{key} must be > 0, got {getattr(self, key)}")
        if not self.axes or len(set(self.axes)) != len(self.axes) or not all(0 <= i < self.top_k for i in self.axes):
            raise ConfigError(f"hessian.axes {self.axes} must list distinct eigenpair indices from 0 to "
                              f"hessian.top_k - 1 = {self.top_k - 1} (0 = the largest eigenvalue); raise hessian.top_k "
                              "to use later ones")


@dataclass
class Config:
    """One surface job. Every key here is public: it is what users write in YAML."""

    model: str = "democnn"
    model_args: Dict[str, Any] = field(default_factory=dict)
    loss: str = "cross_entropy"     # cross_entropy | mse | "package.module:function" (see distland.losses)
    plugins: List[str] = field(default_factory=list)   # modules (or package prefixes) whose code a
                                                        # "module:function" model or data.name may run
    checkpoint: str = ""
    train: str = ""                 # training config that produces `checkpoint` if it does not exist yet
    data: DataConfig = field(default_factory=DataConfig)
    directions: DirectionsConfig = field(default_factory=DirectionsConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    output: str = "surface.h5"
    quantities: List[str] = field(default_factory=lambda: ["loss"])   # what each grid point computes
    engine: EngineConfig = field(default_factory=EngineConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    hessian: HessianConfig = field(default_factory=HessianConfig)

    def validate(self) -> "Config":
        _choice("data.split", self.data.split, ("train", "test", "both"))
        _choice("directions.kind", self.directions.kind, ("random", "interp", "plane", "file"))
        _choice("directions.norm", self.directions.norm, NORMS)
        _choice("directions.ignore", self.directions.ignore, ("biasbn", "none"))
        if self.directions.ynorm:
            _choice("directions.ynorm", self.directions.ynorm, NORMS)
        if self.directions.yignore:
            _choice("directions.yignore", self.directions.yignore, ("biasbn", "none"))
        _choice("directions.type", self.directions.type, ("auto", "weights", "states"))
        check_device("engine.device", self.engine.device)
        _choice("engine.channels_last", self.engine.channels_last, ("auto", "on", "off"))
        _choice("engine.fold_bn", self.engine.fold_bn, ("auto", "on", "off"))
        _choice("engine.compile", self.engine.compile, ("auto", "on", "off"))
        _choice("engine.precision", self.engine.precision, ("fp32", "tf32", "bf16"))
        _choice("engine.stream_data", self.engine.stream_data, ("auto", "on", "off"))
        _choice("sweep.mpi", self.sweep.mpi, ("auto", "on", "off"))
        _choice("sweep.io", self.sweep.io, ("auto", "mpio", "root"))
        if self.sweep.chunk < 0:
            raise ConfigError("sweep.chunk must be >= 0 (0 = adaptive)")
        if self.directions.file and self.directions.kind == "random":
            self.directions.kind = "file"  # a direction file given means: use it
        if self.data.subset < 0:
            raise ConfigError("data.subset must be >= 0 (0 = all samples)")
        if self.data.split_index and not (len(self.data.split_index) == 2
                                          and 0 <= self.data.split_index[0] < self.data.split_index[1]):
            raise ConfigError(f"data.split_index must be [k, n] with 0 <= k < n (the k-th of n chunks of the train "
                              f"split), got {self.data.split_index}")
        if self.data.max_samples < 0 or self.data.batch_size < 0:
            raise ConfigError("data.max_samples and data.batch_size must be >= 0 (0 = all / automatic)")
        check_axis("grid.x", self.grid.x)
        if self.grid.y is not None:
            check_axis("grid.y", self.grid.y)
        if self.grid.z is not None:
            check_axis("grid.z", self.grid.z)
        for k, extra in enumerate(self.grid.more):
            check_axis(f"grid.more[{k}]", extra)
        if self.grid.more and self.grid.z is None:
            raise ConfigError("grid.more lists axes 4, 5, …: set grid.z (the third axis) first")
        if self.grid.z is not None and self.grid.y is None:
            raise ConfigError("grid.z needs grid.y: a landscape's axes are x, y, z, … in this order")
        if self.directions.kind == "interp":
            if not self.directions.target:
                raise ConfigError("directions.kind 'interp' needs directions.target: the checkpoint to interpolate to")
            if self.grid.z is not None:
                raise ConfigError("directions.kind 'interp' has at most a random y axis: remove grid.z (and "
                                  "grid.more)")
        if self.directions.kind == "plane":
            if not (self.directions.target and self.directions.target2):
                raise ConfigError("directions.kind 'plane' needs directions.target (θ′, x = 1) and directions.target2 "
                                  "(θ″, y = 1): the plane through checkpoint, target and target2")
            if self.grid.y is None or self.grid.z is not None:
                raise ConfigError("directions.kind 'plane' is 2-D: set grid.y, e.g. [-0.5, 1.5, 41], and no grid.z")
        elif self.directions.target2:
            raise ConfigError("directions.target2 is used by directions.kind 'plane' only; set kind: plane or remove it")
        if self.directions.kind == "file" and not self.directions.file:
            raise ConfigError("directions.kind 'file' needs directions.file")
        if not self.output:
            raise ConfigError("output must name the surface file to write")
        if self.output.endswith(("/", "\\")) or Path(self.output).is_dir():
            raise ConfigError(f"output {self.output!r} names a directory; give the surface file's name, "
                              f"e.g. {self.output.rstrip('/')}/surface.h5")
        check_plugins(self.plugins)
        check_loss("loss", self.loss)
        from .quantities import REGISTRY as known  # the list of quantities lives with them

        for name in self.quantities:
            if ":" not in name:  # a plug-in "module:Class" is checked when the job builds it
                _choice("quantities", name, tuple(known))
        if not self.quantities or len(set(self.quantities)) != len(self.quantities):
            raise ConfigError(f"quantities must list each quantity once, from {', '.join(known)}; "
                              f"got {self.quantities}")
        self.hessian.validate()
        return self

    @property
    def splits(self) -> Tuple[str, ...]:
        return ("train", "test") if self.data.split == "both" else (self.data.split,)


def check_plugins(plugins: List[str]) -> None:
    """``plugins:`` entries are module names or package prefixes outside the standard library."""
    import sys

    for name in plugins:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", name or ""):
            raise ConfigError(f"plugins: {name!r} is not a module name (e.g. mypackage or mypackage.models)")
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in sys.builtin_module_names or top.startswith("_"):
            raise ConfigError(f"plugins: {name!r} is part of Python's standard library; plug-ins never come from it")


def _choice(key: str, value: str, valid: Tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{key}: {value!r} is not valid; choose one of {', '.join(valid)}")


def check_axis(key: str, axis: Any) -> Tuple[float, float, int]:
    """Validate ``[min, max, num]``; returns it typed."""
    if not isinstance(axis, (list, tuple)) or len(axis) != 3:
        raise ConfigError(f"{key} must be [min, max, num], got {axis!r}")
    lo, hi, num = axis
    if isinstance(num, float) and num.is_integer():
        num = int(num)
    if not isinstance(num, int) or isinstance(num, bool) or num < 1:
        raise ConfigError(f"{key}: num must be an integer >= 1, got {num!r}")
    try:
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: min and max must be numbers, got {axis!r}") from None
    if not (lo == lo and hi == hi) or abs(lo) == float("inf") or abs(hi) == float("inf"):
        raise ConfigError(f"{key}: min and max must be finite, got {axis!r}")
    if lo > hi:
        raise ConfigError(f"{key}: min {lo} is greater than max {hi}")
    if num > 1 and lo == hi:
        raise ConfigError(f"{key}: {num} points need min < max, got min == max == {lo}")
    return lo, hi, num


# --------------------------------------------------------------------------------------------------- loading
def from_dict(cls: Type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, strictly: unknown keys and wrong types raise :class:`ConfigError`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}; valid keys{' in ' + where if where else ''}: "
                          f"{', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_coerce(inner, v, key) for v in value]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no as booleans; our switches are strings
            return "on" if value else "off"
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def to_dict(cfg: Any) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def apply_overrides(data: Dict[str, Any], overrides: List[str]) -> Dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) onto a nested mapping, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set grid.x=[-1,1,51]")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({e})") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def read_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a YAML mapping with errors that name the file and the fix."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found; pass the path to a YAML file (see configs/)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(p)!r} is not a text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of keys, got {type(data).__name__}")
    return data


def load(cls: Type[T], path: Optional[Union[str, Path]] = None, overrides: Optional[List[str]] = None) -> T:
    """Load ``cls`` from an optional YAML file plus ``--set`` overrides, then validate it (if it can)."""
    data = read_yaml(path) if path else {}
    apply_overrides(data, list(overrides or []))
    cfg = from_dict(cls, data)
    validate = getattr(cfg, "validate", None)
    return validate() if validate else cfg


def load_config(path: Optional[Union[str, Path]] = None, overrides: Optional[List[str]] = None) -> Config:
    """The surface-job config. An omitted ``grid.y`` means a 1-D job; an omitted ``grid`` means 21×21 over
    [-1, 1]², or 401 points over [-0.5, 1.5] for ``directions.kind: interp``."""
    data = read_yaml(path) if path else {}
    apply_overrides(data, list(overrides or []))
    return config_from_mapping(data)


def config_from_mapping(data: Dict[str, Any]) -> Config:
    """The surface-job config from a YAML-shaped mapping (what :func:`load_config` read, or the Python API's
    keyword arguments), with the same defaults, strict checks and messages."""
    grid = data.get("grid")
    directions = data.get("directions") if isinstance(data.get("directions"), dict) else {}
    if grid is None:
        data["grid"] = ({"x": list(INTERP_X), "y": None} if directions.get("kind") == "interp"
                        else {"x": list(PLANE_AXIS), "y": list(PLANE_AXIS)} if directions.get("kind") == "plane"
                        else {"x": [-1.0, 1.0, 21], "y": [-1.0, 1.0, 21]})
    elif isinstance(grid, dict) and "y" not in grid:
        grid["y"] = None
    return from_dict(Config, data).validate()


def config_from_yaml_text(text: str) -> Config:
    """Rebuild a :class:`Config` from the YAML text stored in a surface file."""
    return from_dict(Config, yaml.safe_load(text)).validate()
