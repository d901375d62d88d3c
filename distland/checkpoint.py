"""Checkpoints: load a state_dict safely (``weights_only=True``), normalize its keys, hash it for provenance."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Mapping, Union

import torch
from torch import nn

StateDict = Dict[str, torch.Tensor]
_PREFIXES = ("module.", "_orig_mod.")   # DataParallel/DDP and torch.compile wrappers


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and the fix."""


def sha256(path: Union[str, Path], block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Drop ``module.`` / ``_orig_mod.`` prefixes (in any nesting) from every key."""
    out: StateDict = OrderedDict()
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = value
    return out


def load_state_dict(path: Union[str, Path]) -> StateDict:
    """Read a state_dict, or a dict holding one under ``state_dict`` / ``model``, with tensors only."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} not found; check the `checkpoint` path "
                              "(or leave it empty to use the model's initial weights)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's weights-only unpickler raises many types on corrupt bytes
        raise CheckpointError(f"checkpoint {str(p)!r} cannot be read ({type(e).__name__}: {str(e)[:300]}); "
                              "it may be truncated or not a torch.save file — re-save it with "
                              "torch.save(model.state_dict(), path)") from None
    if isinstance(obj, nn.Module):  # pragma: no cover - weights_only refuses modules, kept for clarity
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {str(p)!r} holds no state_dict (a mapping of names to tensors, "
                              "possibly under 'state_dict' or 'model')")
    return strip_prefixes(obj)


def apply_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` strictly, with an error that lists missing/unexpected/mis-shaped keys."""
    own = model.state_dict()
    state = _fill_counters(_renamed(state, own, getattr(model, "legacy_key_renames", {})), own)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches {_few(shapes)}")
        raise CheckpointError(f"{source} does not match the model ({'; '.join(parts)}); check that `model` "
                              "(and `model_args`) name the architecture the checkpoint was trained with")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{source} has NaN/inf values in {_few(bad)}; the training run diverged — "
                              "use an earlier checkpoint")
    model.load_state_dict(state, strict=True)


def _renamed(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor],
             renames: Mapping[str, str]) -> Mapping[str, torch.Tensor]:
    # A model may name key prefixes of its own older layouts (distland's ResNets called the classifier `fc`
    # before adopting the authors' `linear`). The renaming is used only when it makes every key match exactly,
    # so no key is ever dropped and a checkpoint of another model is still refused with the usual error.
    if not renames or set(state) == set(own):
        return state
    out: StateDict = OrderedDict()
    for key, value in state.items():
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out if set(out) == set(own) and len(out) == len(state) else state


def _fill_counters(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    # Checkpoints saved before PyTorch 0.4.1 (the paper authors' among them) have no BatchNorm
    # `num_batches_tracked`; that counter only sets the momentum of training with momentum=None and never enters
    # an evaluation, so a missing one (and only that key) is filled with 0 instead of refusing the checkpoint.
    absent = [k for k in own if k not in state and k.endswith(".num_batches_tracked")
              and k[:-len("num_batches_tracked")] + "running_mean" in state]
    if not absent:
        return state
    filled = OrderedDict(state)
    for key in absent:
        filled[key] = torch.zeros_like(own[key])
    return filled


def _few(items: list, n: int = 5) -> str:
    shown = ", ".join(map(str, items[:n]))
    return f"[{shown}{', …' if len(items) > n else ''}] ({len(items)} in all)"
