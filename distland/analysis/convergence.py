"""Is the centre of a surface a minimizer? Convergence numbers at θ*, measured once per surface job.

Sharpness numbers (:mod:`.sharpness`) describe the neighbourhood of θ*; they compare minimizers only if θ* is one.
An under-trained net (say 88% train accuracy, loss 0.9) has a surface of its own, usually *flatter* than that of a
trained net, and its numbers would reverse a comparison without any other sign. So every surface job measures, on
the training data in eval mode (the function the surface plots), at θ*:

- ``train_loss``, ``train_acc`` (percent): the mean cross-entropy and accuracy over the training split;
- ``grad_norm``: ‖∇L(θ*)‖₂ over all parameters (data loss only: the weight decay of training is unknown here);
- ``weight_norm``, ``grad_norm_filters``: ‖θ_w‖ and ‖∇_w L‖ over the tensors filter normalization perturbs
  (parameters with more than one dimension: conv and linear weights);
- ``slope`` = ‖∇_w L‖·‖θ_w‖: by Cauchy–Schwarz, a bound on the first-order loss change per unit step along any
  filter-normalized direction (whose norm is ‖θ_w‖). Loose (curvature takes over within a fraction of a unit),
  so it is reported, not judged;
- ``descent``: how far the loss falls along the *downhill* filter-normalized direction d = filter-normalized −∇_w L
  (biases and BatchNorm left alone, as in the plots), max over t ∈ r·{2⁻⁷, 2⁻⁶, …, 1} of
  L(θ*) − L(θ* + t·d), with ``descent_step`` the t of that drop (0 when no step lowers the loss). Eight more forward
  passes over the training data.

**Criterion.** θ* is reported as *not a minimizer* when train_acc < ``MIN_TRAIN_ACC`` (99%: the net does not fit
its training data, so a lower loss exists) or descent > ``TAU`` (within r = 0.25 of θ*, the sharpness radius, in
the plots' own units, the loss falls by more than τ = 0.1, the basin threshold). Both match :mod:`.sharpness`'s
defaults: "not a minimizer" means that on the plots' scale θ* sits on a slope, not at the bottom of a basin —
random directions are nearly orthogonal to the gradient, so the surface itself rarely shows it.

Stored as root attributes ``convergence.<name>`` (plus ``convergence.minimizer`` 1/0 and ``convergence.split``).
"""
from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Sequence, Tuple

if TYPE_CHECKING:   # torch loads only to measure: plots and `distland info` read the attributes without it
    import torch
    from torch import nn

PREFIX = "convergence."
MIN_TRAIN_ACC = 99.0    # percent
RADIUS = 0.25           # the sharpness radius r (sharpness_report's default)
TAU = 0.1               # the basin threshold τ (sharpness_report's default)

Report = Dict[str, float]


def measure(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 256,
            device: str = "cpu", loss: str = "cross_entropy", plugins: Sequence[str] = ()) -> Report:
    """The numbers of the module docstring for ``model`` (left untouched: a copy runs on ``device``), with the
    job's ``loss`` (:mod:`distland.losses`; without accuracy, the accuracy rule does not apply)."""
    import torch

    from ..losses import resolve

    criterion = resolve(loss, plugins)

    n = int(targets.shape[0])
    if n == 0:
        raise ValueError("the training split is empty; convergence at θ* cannot be measured")
    net = copy.deepcopy(model).to(device).eval()   # eval: BatchNorm uses running statistics, as on the surface
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    total, correct = 0.0, 0
    for s in range(0, n, max(1, batch_size)):
        x, y = inputs[s:s + batch_size].to(device), targets[s:s + batch_size].to(device)
        out = net(x)
        batch_loss = criterion.per_sample(out.float(), y).sum()
        (batch_loss / n).backward()      # gradients accumulate into the gradient of the mean loss
        total += float(batch_loss.detach().double())
        if criterion.correct is not None:
            correct += int(criterion.correct(out.detach(), y).sum())
    grads = [p.grad.detach().double() if p.grad is not None else torch.zeros_like(p, dtype=torch.float64)
             for p in params]
    g_all = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    g_w = math.sqrt(sum(float(g.pow(2).sum()) for g, p in zip(grads, params) if p.dim() > 1))
    w = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in params if p.dim() > 1))
    acc = 100.0 * correct / n if criterion.correct is not None else math.nan
    report: Report = {"train_loss": total / n, "train_acc": acc, "grad_norm": g_all,
                      "grad_norm_filters": g_w, "weight_norm": w, "slope": g_w * w, "samples": float(n)}
    report.update(_descent(net, params, grads, inputs, targets, batch_size, device, report["train_loss"], criterion))
    report["minimizer"] = float(is_minimizer(report)[0])
    return report


def _descent(net: nn.Module, params: Any, grads: Any, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int,
             device: str, loss0: float, criterion: Any) -> Report:
    import torch

    from ..directions import _scale   # the plots' own filter normalization
    from ..evaluate import split_loss

    down = []
    for p, g in zip(params, grads):
        theta = p.detach().double()
        down.append(_scale(-g, theta, "filter").to(p.dtype) if p.dim() > 1 else torch.zeros_like(p))
    base = [p.detach().clone() for p in params]
    best, where = 0.0, 0.0
    with torch.no_grad():
        for frac in (2.0 ** -k for k in range(7, -1, -1)):
            t = RADIUS * frac
            for p, b, d in zip(params, base, down):
                torch.add(b, d, alpha=t, out=p.data)
            loss, _ = split_loss(net, inputs.to(device), targets.to(device), max(1, batch_size), criterion)
            if math.isfinite(loss) and loss0 - loss > best:
                best, where = loss0 - loss, t
        for p, b in zip(params, base):
            p.data.copy_(b)
    return {"descent": best, "descent_step": where}


def is_minimizer(report: Mapping[str, float]) -> Tuple[bool, str]:
    """(verdict, reason): the criterion of the module docstring; the reason is empty for a minimizer."""
    reasons = []
    acc, drop = report.get("train_acc", math.nan), report.get("descent", math.nan)
    if math.isfinite(acc) and acc < MIN_TRAIN_ACC:   # NaN: a loss without accuracy, the rule does not apply
        reasons.append(f"train accuracy {acc:.1f}% < {MIN_TRAIN_ACC:g}%")
    if not math.isfinite(drop) or drop > TAU:
        reasons.append(f"the loss falls by {drop:.3g} > τ = {TAU:g} within {report.get('descent_step', math.nan):g} "
                       "filter-normalized units downhill")
    return not reasons, "; ".join(reasons)


def at_centre(cfg: Any, model: nn.Module, splits: Mapping[str, Tuple[torch.Tensor, torch.Tensor]],
              batch_size: int = 256, device: str = "cpu") -> Report:
    """:func:`measure` for a surface job: on its training split (loaded here when the job evaluates only the test
    split), with the job's ``data.max_samples``."""
    if "train" in splits:
        x, y = splits["train"]
    else:
        from ..data import load_splits

        x, y = load_splits(cfg.data, ("train",), class_targets=":" not in cfg.loss, allow=cfg.plugins)["train"]
    return measure(model, x, y, batch_size, device, cfg.loss, cfg.plugins)


def to_attrs(report: Mapping[str, float]) -> Dict[str, Any]:
    return {PREFIX + k: float(v) for k, v in report.items()}


def read(attrs: Mapping[str, Any]) -> Report:
    """The ``convergence.*`` attributes of a file, prefix removed; empty for files made before they existed."""
    return {k[len(PREFIX):]: float(v) for k, v in attrs.items() if k.startswith(PREFIX)}


def warning(report: Mapping[str, float]) -> Optional[str]:
    """One line when θ* is not a minimizer (None when it is, or when nothing was measured)."""
    if not report:
        return None
    ok, why = is_minimizer(report)
    return None if ok else f"the centre θ* is NOT a minimizer ({why}): its sharpness numbers describe a slope"


def format_report(report: Mapping[str, float]) -> str:
    """One line of numbers, plus the warning line when θ* is not a minimizer."""
    if not report:
        return "convergence at θ*: not measured (file made before distland measured it)"
    r = report.get
    line = (f"convergence at θ* (train split, {int(r('samples', 0))} samples): loss {r('train_loss', math.nan):.4g}, "
            f"accuracy {r('train_acc', math.nan):.2f}%, ‖∇L‖ {r('grad_norm', math.nan):.3g}, "
            f"downhill drop within r={RADIUS:g} {r('descent', math.nan):.3g}")
    warn = warning(report)
    return line + (f"\nwarning: {warn}" if warn else " — a minimizer by distland's criterion")
