"""Evaluation of L(θ* + αδ + βη) and accuracy: the per-point hot path, pure of files and processes.

:class:`SurfaceEvaluator` owns one execution copy of the model on the rank's device, the data (moved there once),
θ* and the directions as flat lists of device tensors. A point writes θ* + Σ c_k d_k into the model's tensors in
place (no state_dict reloads, no copies, no host↔device traffic) and runs forward passes in eval mode.

Exact speed-ups (see :mod:`distland.engine` for how they are chosen): channels_last memory format, and BatchNorm
folded into the preceding conv — valid because eval-mode BN is affine per channel, s = γ/√(σ²+ε):
conv(x; W)·s + (β − μ·s) = conv(x; W·s) + b′, and when the directions leave BN alone (``ignore: biasbn``)
the perturbed weight folds the same way, (θ + αδ + βη)·s = θ·s + α(δ·s) + β(η·s).
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from . import feed
from .engine import Engine, exact_float32
from .fold import checked_fold
from .losses import Criterion, resolve

CROSS_ENTROPY = resolve("cross_entropy")

Tensors = Mapping[str, torch.Tensor]

# How far a compiled pass may move the loss (relative) from the eager one at the same precision. Float32 and
# TF32 differ only by the order of float32 sums; bf16 rounds every stored activation to 8 bits of mantissa (3.9e-3)
# and a compiled pass keeps fused intermediates in float32 where eager rounds them, so the two differ by about
# bf16's own error (1e-3 relative measured on CPUs), which is what `precision_check` reports in any case.
COMPILE_TOLERANCE = {"fp32": 1e-4, "tf32": 1e-3, "bf16": 1e-2}


def split_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int,
               criterion: Optional[Criterion] = None, poll: Optional[Callable[[], None]] = None,
               autocast: Optional[torch.dtype] = None) -> Tuple[float, Optional[float]]:
    """Mean loss (float64 accumulation; cross-entropy unless ``criterion``) and accuracy in percent (None when the
    criterion has none) over all samples, in eval mode."""
    n = int(targets.shape[0])
    batches = ((inputs[s:s + batch_size], targets[s:s + batch_size]) for s in range(0, n, batch_size))
    return eval_batches(model, batches, n, inputs.device, criterion, poll, autocast)


def eval_batches(model: nn.Module, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], n: int,
                 device: torch.device, criterion: Optional[Criterion] = None,
                 poll: Optional[Callable[[], None]] = None,
                 autocast: Optional[torch.dtype] = None) -> Tuple[float, Optional[float]]:
    """:func:`split_loss` over ``batches`` (on ``device``) holding ``n`` samples in all."""
    if n == 0:
        raise ValueError("the data split is empty; check data.max_samples and the data set")
    criterion = criterion or CROSS_ENTROPY
    # Sums stay on the device until the end: no host synchronisation per batch on a GPU.
    total = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=autocast or torch.bfloat16,
                                                enabled=autocast is not None):
        for x, y in batches:
            out = model(x).float()
            total += criterion.per_sample(out, y).double().sum()
            if criterion.correct is not None:
                correct += criterion.correct(out, y).sum()
            if poll is not None:
                poll()  # lets the coordinator on rank 0 answer workers between batches
    return float(total) / n, (100.0 * int(correct) / n if criterion.correct is not None else None)


# ---------------------------------------------------------------------------------------------- evaluator
class SurfaceEvaluator:
    """Evaluates the metrics of one grid point at a time on one device."""

    def __init__(self, model: nn.Module, reference: Tensors, directions: Sequence[Tensors],
                 splits: Mapping[str, Tuple[torch.Tensor, torch.Tensor]], engine: Engine,
                 criterion: Optional[Criterion] = None, log_keys: Sequence[str] = ()) -> None:
        """``log_keys``: variances moved geometrically, var = exp(ln θ* + Σ c_k δ_k) with δ_k = ln(θ* + d_k) − ln θ*
        (see :func:`distland.directions.variance_keys`), in float64 so both ends are exact in float32."""
        self.criterion = criterion or CROSS_ENTROPY
        self.device = torch.device(engine.device)
        exec_model = copy.deepcopy(model).eval()
        base = {k: v.detach().clone() for k, v in reference.items()}
        dirs = [{k: v.detach().clone() for k, v in d.items()} for d in directions]
        folded = (checked_fold(exec_model, base, dirs, next(iter(splits.values()))[0][:8] if splits else None,
                               self.device, engine.precision) if engine.fold_bn else None)
        if folded is not None:
            exec_model, base, dirs = folded
        exec_model.to(self.device)
        if engine.channels_last:
            exec_model = exec_model.to(memory_format=torch.channels_last)
        live = dict(exec_model.state_dict(keep_vars=True))
        missing = [k for k in base if k not in live]
        if missing:
            raise KeyError(f"reference keys not in the model: {missing[:3]}")
        # Only tensors that some direction moves are rewritten per point; the rest stay at θ*.
        self._live: List[torch.Tensor] = []
        self._base: List[torch.Tensor] = []
        self._dirs: List[List[torch.Tensor]] = []
        self._log: List[bool] = []
        with torch.no_grad():
            for key, theta in base.items():
                target = live[key]
                target.data.copy_(theta.to(target.dtype))
                moving = [d[key] for d in dirs]
                if not theta.is_floating_point() or not any(bool(m.any()) for m in moving):
                    continue  # integer buffers (num_batches_tracked) never move
                if key in log_keys:
                    tiny = torch.finfo(torch.float32).tiny   # a dead channel's 0 variance stays ~0, not -inf
                    log0 = theta.to(self.device, torch.float64).clamp_min(tiny).log()
                    self._live.append(target.data)
                    self._base.append(log0)
                    self._dirs.append([(theta.to(self.device, torch.float64) + m.to(self.device, torch.float64))
                                       .clamp_min(tiny).log() - log0 for m in moving])
                    self._log.append(True)
                    continue
                fmt = torch.channels_last if (engine.channels_last and target.dim() == 4) else torch.contiguous_format
                self._log.append(False)
                self._live.append(target.data)
                self._base.append(theta.to(self.device, target.dtype).contiguous(memory_format=fmt))
                self._dirs.append([m.to(self.device, target.dtype).contiguous(memory_format=fmt) for m in moving])
        self._eager = exec_model
        self.model = exec_model
        self.compiled = False
        nbytes = sum(x.numel() * x.element_size() + y.numel() * y.element_size() for x, y in splits.values())
        stream = feed.should_stream(engine.stream_data, nbytes, self.device, engine.ranks_on_device)
        # What only the model and the data could decide, resolved here: the engine as it really runs.
        self.engine = dataclasses.replace(engine, fold_bn=folded is not None, stream_data="on" if stream else "off")
        self.data: Dict[str, feed.DeviceSplit] = {
            name: feed.place(x, y, self.device, engine.channels_last, engine.batch_size, stream)
            for name, (x, y) in splits.items()}
        self._autocast = torch.bfloat16 if engine.precision == "bf16" else None
        if engine.compile == "on":
            self.compile_model()

    def compile_model(self) -> bool:
        """Switch to a ``torch.compile``d forward pass, checked against the eager one on every split at the
        current weights (so every batch shape is compiled now, not mid-sweep); on any failure or mismatch
        (beyond COMPILE_TOLERANCE for the precision) stay eager, with a warning."""
        import warnings

        if self.compiled:
            return True
        try:
            compiled = torch.compile(self._eager)
            for name in self.data:
                ref = self._eval(self._eager, name, None, self._autocast)
                got = self._eval(compiled, name, None, self._autocast)
                if abs(got[0] - ref[0]) > COMPILE_TOLERANCE[self.engine.precision] * max(abs(ref[0]), 1e-12):
                    warnings.warn(f"torch.compile changed the {name} loss from {ref[0]} to {got[0]}; running eagerly")
                    return False
        except Exception as e:  # noqa: BLE001 - compilation is an optimisation, never a requirement
            warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); running eagerly")
            return False
        self.model, self.compiled = compiled, True
        return True

    def set_point(self, coeffs: Sequence[float]) -> None:
        """Write θ* + Σ coeffs[k]·d_k into the model's tensors, in place."""
        with torch.no_grad():
            for live, base, dirs, geometric in zip(self._live, self._base, self._dirs, self._log):
                if geometric:   # a variance, moved in log space (float64: exact at both ends)
                    logvar = torch.add(base, dirs[0], alpha=float(coeffs[0]))
                    for c, d in zip(coeffs[1:], dirs[1:]):
                        logvar.add_(d, alpha=float(c))
                    live.copy_(logvar.exp_())
                    continue
                torch.add(base, dirs[0], alpha=float(coeffs[0]), out=live)
                for c, d in zip(coeffs[1:], dirs[1:]):
                    live.add_(d, alpha=float(c))

    def precision_check(self, points: Sequence[Sequence[float]]) -> Dict[str, float]:
        """Reduced precision is opt-in, and its error is measured rather than assumed: the metrics at each of
        ``points`` in the engine's precision and in exact float32 (eager model, no autocast, no TF32), as
        ``max_rel_loss_error`` and ``max_acc_diff`` (percentage points). Empty for ``precision: fp32``."""
        if self.engine.precision == "fp32":
            return {}
        worst_loss, worst_acc = 0.0, 0.0
        for coeffs in points:
            reduced = self.evaluate(coeffs)
            with exact_float32(self.device):
                exact = self._metrics(self._eager, None, None)
            for key, value in exact.items():
                if value is None:
                    continue
                if key.endswith("_loss"):
                    worst_loss = max(worst_loss, abs(reduced[key] - value) / max(abs(value), 1e-12))
                else:
                    worst_acc = max(worst_acc, abs(reduced[key] - value))
        return {"max_rel_loss_error": worst_loss, "max_acc_diff": worst_acc, "points": float(len(points))}

    def evaluate(self, coeffs: Sequence[float], poll: Optional[Callable[[], None]] = None
                 ) -> Dict[str, Optional[float]]:
        """``{"<split>_loss": mean loss, "<split>_acc": percent}`` at the point ``coeffs`` (accuracy None when the
        criterion has none)."""
        self.set_point(coeffs)
        return self._metrics(self.model, poll, self._autocast)

    def _metrics(self, model: nn.Module, poll: Optional[Callable[[], None]], autocast: Optional[torch.dtype]
                 ) -> Dict[str, Optional[float]]:
        out: Dict[str, Optional[float]] = {}
        for name in self.data:
            out[f"{name}_loss"], out[f"{name}_acc"] = self._eval(model, name, poll, autocast)
        return out

    def _eval(self, model: nn.Module, name: str, poll: Optional[Callable[[], None]],
              autocast: Optional[torch.dtype]) -> Tuple[float, Optional[float]]:
        split = self.data[name]
        return eval_batches(model, split.batches(self.engine.batch_size), split.n, self.device, self.criterion,
                            poll, autocast)
