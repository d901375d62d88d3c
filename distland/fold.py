"""Folding eval-mode BatchNorm into the convolution before it: an exact speed-up of the forward pass.

Eval-mode BN is affine per channel, s = γ/√(σ²+ε): conv(x; W)·s + (β − μ·s) = conv(x; W·s) + b′. When the
directions leave BN alone (``ignore: biasbn``) the perturbed weight folds the same way,
(θ + αδ + βη)·s = θ·s + α(δ·s) + β(η·s), so a grid point only rewrites the folded conv weights. Which pairs fold
is decided on the traced graph (torch.fx), not on the order modules were registered in.
"""
from __future__ import annotations

import copy
import warnings
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

Tensors = Dict[str, torch.Tensor]


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


def bn_affine(gamma: Optional[torch.Tensor], beta: Optional[torch.Tensor], mean: torch.Tensor, var: torch.Tensor,
              eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as a per-channel affine map y = x·scale + shift, from its parts (None: not affine);
    differentiable in them, so the Hessian fast path folds with it too (distland/hessian/rewrite.py)."""
    root = torch.sqrt(var + eps)
    scale = 1.0 / root if gamma is None else gamma / root
    shift = -mean * scale
    return scale, shift if beta is None else shift + beta


def bn_scale_shift(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """The per-channel affine map of eval-mode ``bn``, as constants (float64): y = x·scale + shift."""
    scale, shift = bn_affine(bn.weight.detach() if bn.affine else None, bn.bias.detach() if bn.affine else None,
                             bn.running_mean, bn.running_var, bn.eps)
    return scale.double(), shift.double()


def fold_batchnorm(model: nn.Module, base: Tensors, dirs: List[Tensors]
                   ) -> Optional[Tuple[nn.Module, Tensors, List[Tensors]]]:
    """Fold every foldable BN of ``model``; ``base`` (θ*) and ``dirs`` (the directions) are rewritten to the folded
    model's keys. None when nothing can be folded exactly: an untraceable model, no conv→BN pair, or a
    direction that moves a BN (``ignore: none`` or ``type: states``). The returned graph module shares its convs
    with ``model`` (a bias may be added to them): pass a copy."""
    gm, pairs = find_conv_bn_pairs(model)
    if gm is None or not pairs:
        return None
    for _, bn_name in pairs:
        bn_keys = [k for k in base if k.startswith(bn_name + ".")]
        if any(bool(d[k].any()) for d in dirs for k in bn_keys if k in d):
            return None
    base = dict(base)
    dirs = [dict(d) for d in dirs]
    mods = dict(gm.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = mods[conv_name], mods[bn_name]
        for k in [k for k in base if k.startswith(bn_name + ".")]:
            del base[k]
            for d in dirs:
                d.pop(k, None)
        scale, shift = bn_scale_shift(bn)
        s4 = scale.view(-1, 1, 1, 1)
        wkey, bkey = f"{conv_name}.weight", f"{conv_name}.bias"
        # θ·s + Σ c_k (d_k·s): the perturbation of the folded weight is the scaled perturbation.
        base[wkey] = (base[wkey].double() * s4).float()
        for d in dirs:
            if wkey in d:
                d[wkey] = (d[wkey].double() * s4).float()
        old_bias = base.pop(bkey).double() if bkey in base else torch.zeros_like(shift)
        for d in dirs:
            d[bkey] = (d[bkey].double() * scale).float() if bkey in d else torch.zeros_like(shift, dtype=torch.float32)
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


def checked_fold(model: nn.Module, base: Tensors, dirs: List[Tensors], inputs: Optional[torch.Tensor],
                 device: torch.device, precision: str = "fp32") -> Optional[Tuple[nn.Module, Tensors, List[Tensors]]]:
    """:func:`fold_batchnorm` on a copy of ``model``, then the folded and the unfolded model run at θ* on
    ``inputs`` (a few samples) on ``device``: on a mismatch warn and return None (run unfolded), as the compile
    path does — folding is a speed-up, never a risk."""
    folded = fold_batchnorm(copy.deepcopy(model), base, dirs)
    if folded is None or inputs is None or not len(inputs):
        return folded
    gm, fbase, _ = folded
    unfolded = copy.deepcopy(model)
    with torch.no_grad():
        for net, weights in ((unfolded, base), (gm, fbase)):
            live = net.state_dict(keep_vars=True)
            for key, theta in weights.items():
                live[key].data.copy_(theta.to(live[key].dtype))
    # On the evaluation device: a wide net's few forward passes would be slow on a GPU job's host CPU.
    # Reduced precision (tf32) rounds both passes differently; a wrong fold is off by far more than 1e-2.
    rtol = 1e-4 if precision == "fp32" else 1e-2
    if not fold_outputs_match(gm.to(device).eval(), unfolded.to(device).eval(), inputs.to(device), rtol):
        warnings.warn("BatchNorm folding changed the model's outputs at θ*; running unfolded")
        return None
    return folded
