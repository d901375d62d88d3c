"""Model zoo: plain ``nn.Module`` factories registered by name.

A model knows nothing of files, processes or MPI. :func:`build_model` resolves either a registered zoo name or a
plug-in spec ``"package.module:function"`` (imported by name; the current directory is importable) from a module the
user opted into (``plugins:`` in the config or ``DISTLAND_PLUGINS``), never from the standard library.

Models registered with ``authors=True`` are state_dict-compatible with the paper authors' ``loss-landscape`` code
(``cifar10/models``, names as in its ``cifar10/model_loader.py``): their checkpoints load as they are. Names are
matched case-insensitively, so the authors' factory names (``ResNet56``, ``WRN56_2``, ``VGG9``, ``DenseNet121``)
work too; other spellings are registered as aliases.
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Callable, Dict, List, Sequence, Set, Tuple

from torch import nn

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}
_ALIASES: Dict[str, str] = {}     # lower-case alias -> registered name
_SPELLED: Dict[str, List[str]] = {}   # registered name -> its aliases as written
_AUTHORS: Set[str] = set()        # names whose state_dict matches the authors' loss-landscape models
_LOADED = False


def register(name: str, aliases: Sequence[str] = (), authors: bool = False
             ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that adds a model factory to the zoo under ``name`` (and ``aliases``); ``authors`` marks a model
    whose state_dict keys, shapes and forward function are those of the authors' model of the same name."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        for alias in aliases:
            if _ALIASES.get(alias.lower(), name) != name:
                raise ValueError(f"model alias {alias!r} is registered twice")
            _ALIASES[alias.lower()] = name
            _SPELLED.setdefault(name, []).append(alias)
        if authors:
            _AUTHORS.add(name)
        return fn

    return wrap


def _load_zoo() -> None:
    # Import the zoo modules lazily so `import distland` stays cheap; each module registers its models.
    global _LOADED
    if _LOADED:
        return
    for mod in ("demo", "resnet", "vgg", "densenet"):
        importlib.import_module(f"{__name__}.{mod}")
    _LOADED = True


def available() -> Dict[str, Callable[..., nn.Module]]:
    """All registered zoo names mapped to their factories, sorted by name."""
    _load_zoo()
    return dict(sorted(_REGISTRY.items()))


def resolve(name: str) -> str:
    """The registered name for ``name``: itself, an alias, or a case-insensitive match (``ResNet56``)."""
    zoo = available()
    if name in zoo:
        return name
    lower = {n.lower(): n for n in zoo}
    key = name.lower()
    if key in lower:
        return lower[key]
    if key in _ALIASES:
        return _ALIASES[key]
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(zoo)} "
                     "(or a plug-in 'package.module:function')")


def aliases_of(name: str) -> List[str]:
    """The registered aliases of zoo model ``name``."""
    available()
    return list(_SPELLED.get(name, []))


def authors_layout(name: str) -> bool:
    """Whether zoo model ``name`` loads the authors' loss-landscape checkpoints as they are."""
    available()
    return name in _AUTHORS


PLUGINS_ENV = "DISTLAND_PLUGINS"


def allowed_plugins(listed: Sequence[str] = ()) -> Tuple[str, ...]:
    """The plug-in modules (names or package prefixes) a job opted into: its config's ``plugins:`` list plus the
    comma-separated ``DISTLAND_PLUGINS`` environment variable."""
    env = [p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(",")]
    return tuple(dict.fromkeys(p for p in (*listed, *env) if p))


def check_plugin(spec: str, what: str, allow: Sequence[str]) -> Tuple[str, str]:
    """Validate ``"package.module:attr"`` against ``allow`` *before* anything is imported (an import runs code)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{what} {spec!r}: a plug-in must be written 'package.module:function'")
    top = module_name.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names or top.startswith("_"):
        raise ValueError(f"{what} {spec!r}: {top!r} is part of Python's standard library; plug-ins never come from "
                         "it (a config must not run arbitrary code)")
    if not any(module_name == p or module_name.startswith(p + ".") for p in allow):
        raise ValueError(f"{what} {spec!r}: module {module_name!r} is not an opted-in plug-in; add it to the "
                         f"config's `plugins:` list (or to ${PLUGINS_ENV}) if you trust its code")
    return module_name, attr


def import_object(spec: str, what: str, allow: Sequence[str] = ()) -> Callable:
    """Import ``"package.module:attr"`` from an opted-in module (``allow`` and ``DISTLAND_PLUGINS``); the current
    directory is put on ``sys.path`` first."""
    module_name, attr = check_plugin(spec, what, allowed_plugins(allow))
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{what} {spec!r}: cannot import module {module_name!r} ({e}); "
                         "check the name and that it is importable from the current directory") from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}") from None


def build_model(name: str, *, allow: Sequence[str] = (), **kwargs) -> nn.Module:
    """Build a zoo model by name, or call a ``"package.module:function"`` plug-in from an opted-in module
    (``allow``: see :func:`allowed_plugins`); both get ``kwargs``."""
    if ":" in name:
        factory = import_object(name, "model", allow)
    else:
        factory = available()[resolve(name)]
    try:
        model = factory(**kwargs)
    except TypeError as e:
        try:
            valid = ", ".join(p for p in inspect.signature(factory).parameters if p not in ("self", "kwargs"))
        except (TypeError, ValueError):
            valid = "?"
        raise ValueError(f"model {name!r}: model_args do not fit ({e}); its arguments: {valid or 'none'}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameter elements."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
