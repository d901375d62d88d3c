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
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import feed

Tensors = Mapping[str, torch.Tensor]


@dataclass
class Engine:
    """How forward passes run on this rank (recorded in the surface file)."""

    device: str = "cpu"
    batch_size: int = 128
    channels_last: bool = False
    fold_bn: bool = False
    compile: str = "off"        # on | off | auto (decided after the first points, see sweep)
    threads: int = 0
    precision: str = "fp32"
    stream_data: str = "auto"   # auto | on | off (resolved to on/off by the evaluator, see :mod:`distland.feed`)


def cross_entropy_eval(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int,
                       poll: Optional[Callable[[], None]] = None, autocast: Optional[torch.dtype] = None
                       ) -> Tuple[float, float]:
    """Mean cross-entropy (float64 accumulation) and accuracy in percent over all samples, in eval mode."""
    n = int(targets.shape[0])
    batches = ((inputs[s:s + batch_size], targets[s:s + batch_size]) for s in range(0, n, batch_size))
    return eval_batches(model, batches, n, inputs.device, poll, autocast)


def eval_batches(model: nn.Module, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], n: int,
                 device: torch.device, poll: Optional[Callable[[], None]] = None,
                 autocast: Optional[torch.dtype] = None) -> Tuple[float, float]:
    """:func:`cross_entropy_eval` over ``batches`` (on ``device``) holding ``n`` samples in all."""
    if n == 0:
        raise ValueError("the data split is empty; check data.max_samples and the data set")
    # Sums stay on the device until the end: no host synchronisation per batch on a GPU.
    total = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=autocast or torch.bfloat16,
                                                enabled=autocast is not None):
        for x, y in batches:
            out = model(x).float()
            total += F.cross_entropy(out, y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
            if poll is not None:
                poll()  # lets the coordinator on rank 0 answer workers between batches
    return float(total) / n, 100.0 * int(correct) / n


# ---------------------------------------------------------------------------------------------- BN folding
def find_conv_bn_pairs(model: nn.Module) -> Tuple[Optional[torch.fx.GraphModule], List[Tuple[str, str]]]:
    """Trace ``model`` and return it with the (conv, bn) module-name pairs that fold exactly.

    A pair folds only when nothing else can see the conv's raw output or share its weights: the conv module is
    called exactly once, that call's only user is a call of a BatchNorm2d with running statistics, that BN module is
    called exactly once, and no other module holds the conv's weight or bias. A conv called at two places, each
    followed by its own BN, is therefore left alone (folding both BNs into the one conv would apply both scales)."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - untraceable models simply run unfolded
        return None, []
    mods = dict(gm.named_modules())
    calls: Dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    # Parameters held by more than one module (tied weights) would be rescaled for every holder.
    holders: Dict[int, int] = {}
    for _, param in gm.named_parameters(remove_duplicate=False):
        holders[id(param)] = holders.get(id(param), 0) + 1
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and isinstance(mods.get(src.target), nn.Conv2d)):
            continue
        conv, bn = mods[src.target], mods[node.target]
        exact = (calls[str(src.target)] == 1 and calls[str(node.target)] == 1 and len(src.users) == 1
                 and len(node.args) == 1 and not node.kwargs and bn.track_running_stats
                 and bn.running_var is not None and conv.out_channels == bn.num_features
                 and all(holders[id(p)] == 1 for p in conv.parameters(recurse=False)))
        if exact:
            pairs.append((str(src.target), str(node.target)))
    return gm, pairs


def fold_outputs_match(folded: nn.Module, unfolded: nn.Module, inputs: torch.Tensor, rtol: float = 1e-4) -> bool:
    """Whether the folded model computes the unfolded one's outputs on ``inputs`` (float32 rounding allowed)."""
    with torch.inference_mode():
        ref = unfolded(inputs).double()
        got = folded(inputs).double()
    if ref.shape != got.shape or not bool(torch.isfinite(got).all()):
        return False
    return bool(((got - ref).abs().max() <= rtol * max(float(ref.abs().max()), 1.0)))


def _bn_scale_shift(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(
        bn.running_var + bn.eps)
    shift = (bn.bias.detach() if bn.affine else 0.0) - bn.running_mean * scale
    return scale.double(), shift.double()


# ---------------------------------------------------------------------------------------------- evaluator
class SurfaceEvaluator:
    """Evaluates the metrics of one grid point at a time on one device."""

    def __init__(self, model: nn.Module, reference: Tensors, directions: Sequence[Tensors],
                 splits: Mapping[str, Tuple[torch.Tensor, torch.Tensor]], engine: Engine) -> None:
        self.engine = engine
        self.device = torch.device(engine.device)
        exec_model = copy.deepcopy(model).eval()
        base = {k: v.detach().clone() for k, v in reference.items()}
        dirs = [{k: v.detach().clone() for k, v in d.items()} for d in directions]
        if engine.fold_bn:
            exec_model, base, dirs = self._checked_fold(exec_model, base, dirs, splits)
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
        with torch.no_grad():
            for key, theta in base.items():
                target = live[key]
                target.data.copy_(theta.to(target.dtype))
                moving = [d[key] for d in dirs]
                if not theta.is_floating_point() or not any(bool(m.any()) for m in moving):
                    continue  # integer buffers (num_batches_tracked) never move
                fmt = torch.channels_last if (engine.channels_last and target.dim() == 4) else torch.contiguous_format
                self._live.append(target.data)
                self._base.append(theta.to(self.device, target.dtype).contiguous(memory_format=fmt))
                self._dirs.append([m.to(self.device, target.dtype).contiguous(memory_format=fmt) for m in moving])
        self._eager = exec_model
        self.model = exec_model
        self.compiled = False
        nbytes = sum(x.numel() * x.element_size() + y.numel() * y.element_size() for x, y in splits.values())
        stream = feed.should_stream(engine.stream_data, nbytes, self.device)
        self.engine.stream_data = "on" if stream else "off"   # resolved, as recorded in the file
        self.data: Dict[str, feed.Split] = {
            name: feed.place(x, y, self.device, engine.channels_last, engine.batch_size, stream)
            for name, (x, y) in splits.items()}
        self._autocast = torch.bfloat16 if engine.precision == "bf16" else None
        if engine.compile == "on":
            self.compile_model()

    def _checked_fold(self, model: nn.Module, base: Dict[str, torch.Tensor], dirs: List[Dict[str, torch.Tensor]],
                      splits: Mapping[str, Tuple[torch.Tensor, torch.Tensor]]):
        """Fold BN (on copies), then run the folded and the unfolded model at θ* on a few samples: on a mismatch
        warn and keep the unfolded model, as the compile path does; folding is a speed-up, never a risk."""
        import warnings

        folded, fbase, fdirs = self._fold(copy.deepcopy(model), dict(base), [dict(d) for d in dirs])
        if not self.engine.fold_bn:
            return model, base, dirs
        inputs = next(iter(splits.values()))[0][:8] if splits else None
        if inputs is not None and len(inputs):
            # On the evaluation device: a wide net's few forward passes would be slow on a GPU job's host CPU.
            inputs = inputs.to(self.device)
            folded.to(self.device)
            unfolded = copy.deepcopy(model).to(self.device)
            with torch.no_grad():
                live, flive = unfolded.state_dict(keep_vars=True), folded.state_dict(keep_vars=True)
                for key, theta in base.items():
                    live[key].data.copy_(theta.to(live[key].dtype))
                for key, theta in fbase.items():
                    flive[key].data.copy_(theta.to(flive[key].dtype))
            # Reduced precision (tf32) rounds both passes differently; a wrong fold is off by far more than 1e-2.
            rtol = 1e-4 if self.engine.precision == "fp32" else 1e-2
            if not fold_outputs_match(folded.eval(), unfolded.eval(), inputs, rtol):
                warnings.warn("BatchNorm folding changed the model's outputs at θ*; running unfolded")
                self.engine.fold_bn = False
                return model, base, dirs
        return folded, fbase, fdirs

    def _fold(self, model: nn.Module, base: Dict[str, torch.Tensor], dirs: List[Dict[str, torch.Tensor]]):
        gm, pairs = find_conv_bn_pairs(model)
        if gm is None or not pairs:
            self.engine.fold_bn = False
            return model, base, dirs
        mods = dict(gm.named_modules())
        for conv_name, bn_name in pairs:
            bn_keys = [k for k in base if k.startswith(bn_name + ".")]
            if any(bool(d[k].any()) for d in dirs for k in bn_keys if k in d):
                # A direction moves BatchNorm (ignore: none or type: states): folding would not be exact.
                self.engine.fold_bn = False
                return model, base, dirs
        for conv_name, bn_name in pairs:
            conv, bn = mods[conv_name], mods[bn_name]
            for k in list(base):
                if k.startswith(bn_name + "."):
                    del base[k]
                    for d in dirs:
                        d.pop(k, None)
            scale, shift = _bn_scale_shift(bn)
            s4 = scale.view(-1, 1, 1, 1)
            wkey, bkey = f"{conv_name}.weight", f"{conv_name}.bias"
            # θ·s + Σ c_k (d_k·s): the perturbation of the folded weight is the scaled perturbation.
            base[wkey] = (base[wkey].double() * s4).float()
            for d in dirs:
                if wkey in d:
                    d[wkey] = (d[wkey].double() * s4).float()
            old_bias = base.pop(bkey).double() if bkey in base else torch.zeros_like(shift)
            for d in dirs:
                if bkey in d:
                    d[bkey] = (d[bkey].double() * scale).float()
                else:
                    d[bkey] = torch.zeros_like(shift, dtype=torch.float32)
            base[bkey] = (old_bias * scale + shift).float()
            if conv.bias is None:
                conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype))
            bn_node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == bn_name)
            bn_node.replace_all_uses_with(bn_node.args[0])
            gm.graph.erase_node(bn_node)
        gm.graph.lint()
        gm.recompile()
        for _, bn_name in pairs:
            gm.delete_submodule(bn_name)
        return gm, base, dirs

    def compile_model(self) -> bool:
        """Switch to a ``torch.compile``d forward pass, checked against the eager one on every split at the
        current weights (so every batch shape is compiled now, not mid-sweep); on any failure or mismatch
        (> 1e-4 relative) stay eager, with a warning."""
        import warnings

        if self.compiled:
            return True
        try:
            compiled = torch.compile(self._eager)
            for name in self.data:
                ref = self._eval(self._eager, name, None, self._autocast)
                got = self._eval(compiled, name, None, self._autocast)
                if abs(got[0] - ref[0]) > 1e-4 * max(abs(ref[0]), 1e-12):
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
            for live, base, dirs in zip(self._live, self._base, self._dirs):
                torch.add(base, dirs[0], alpha=float(coeffs[0]), out=live)
                for c, d in zip(coeffs[1:], dirs[1:]):
                    live.add_(d, alpha=float(c))

    def precision_check(self, points: Sequence[Sequence[float]]) -> Dict[str, float]:
        """Reduced precision is opt-in, and its error is measured rather than assumed: the metrics at each of
        ``points`` in the engine's precision and in exact float32 (eager model, no autocast, no TF32), as
        ``max_rel_loss_error`` and ``max_acc_diff`` (percentage points). Empty for ``precision: fp32``."""
        if self.engine.precision == "fp32":
            return {}
        cuda = self.device.type == "cuda"
        worst_loss, worst_acc = 0.0, 0.0
        for coeffs in points:
            reduced = self.evaluate(coeffs)
            saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) if cuda else None
            try:
                if cuda:
                    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
                exact = {}
                for name in self.data:
                    exact[f"{name}_loss"], exact[f"{name}_acc"] = self._eval(self._eager, name, None, None)
            finally:
                if saved is not None:
                    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
            for key, value in exact.items():
                if key.endswith("_loss"):
                    worst_loss = max(worst_loss, abs(reduced[key] - value) / max(abs(value), 1e-12))
                else:
                    worst_acc = max(worst_acc, abs(reduced[key] - value))
        return {"max_rel_loss_error": worst_loss, "max_acc_diff": worst_acc, "points": float(len(points))}

    def evaluate(self, coeffs: Sequence[float], poll: Optional[Callable[[], None]] = None) -> Dict[str, float]:
        """``{"<split>_loss": mean loss, "<split>_acc": percent}`` at the point ``coeffs``."""
        self.set_point(coeffs)
        out: Dict[str, float] = {}
        for name in self.data:
            out[f"{name}_loss"], out[f"{name}_acc"] = self._eval(self.model, name, poll, self._autocast)
        return out

    def _eval(self, model: nn.Module, name: str, poll: Optional[Callable[[], None]],
              autocast: Optional[torch.dtype]) -> Tuple[float, float]:
        split = self.data[name]
        return eval_batches(model, split.batches(self.engine.batch_size), split.n, self.device, poll, autocast)
