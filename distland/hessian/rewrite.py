"""The model rewritten for Hessian-vector products: the same function of the same parameters, faster to differentiate
twice.

A product is a double backward through the first-order graph. PyTorch's own double backward of a convolution
(``_convolution_double_backward``) computes its weight term as a convolution over the batch-transposed tensors, with
layout copies around it: on a CPU it was the slowest part of a product (bench/README.md). Here every convolution
runs through three autograd functions that close under differentiation, each a single native kernel:

- :class:`_Conv` ``y = conv(x; W)``, whose backward is :class:`_InputGrad` and :class:`_WeightGrad`;
- :class:`_InputGrad` ``gx = convᵀ(gy; W)``, bilinear in (gy, W): its backward is a ``_Conv`` and a ``_WeightGrad``;
- :class:`_WeightGrad` ``gW = x ⋆ gy``, bilinear in (x, gy): its backward is a ``_Conv`` and an ``_InputGrad``.

So a product takes six kernels per convolution (two forward, two backward-data, two weight-gradient), the least an
exact product can take. Eval-mode BatchNorm after a convolution is folded *inside* the graph: the convolution runs
with ``W·s`` and shift ``β + (b − μ)·s``, ``s = γ/√(σ²+ε)`` computed from the live parameters and statistics, so the
derivatives with respect to W, γ and β stay exact and the per-pixel BatchNorm passes (forward, backward and double
backward) disappear. Parameters keep their objects and names: moving the model's weights moves the rewritten one.

A speed-up, never a risk: a model torch.fx cannot trace, or a rewrite whose outputs differ from the model's, runs
the model as it is (:func:`for_products` decides); a convolution or BatchNorm with hooks, of a subclass, or with
non-zero padding modes stays a module.
"""
from __future__ import annotations

import warnings
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.autograd import Function

from ..fold import bn_affine, find_conv_bn_pairs, fold_outputs_match

Geometry = Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...], int]   # stride, padding, dilation, groups
_aten = torch.ops.aten
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _forward(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], g: Geometry) -> torch.Tensor:
    stride, padding, dilation, groups = g
    return _aten.convolution(x, w, b, stride, padding, dilation, False, [0] * len(stride), groups)


def _backward(gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, g: Geometry, mask: List[bool]) -> Any:
    # x and w fix the shapes (a strided convolution's input size is not determined by its output's).
    stride, padding, dilation, groups = g
    return _aten.convolution_backward(gy, x, w, None, stride, padding, dilation, False, [0] * len(stride), groups,
                                      mask)


def _kernel(ctx: Any, gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, g: Geometry, which: int) -> torch.Tensor:
    # One output of convolution_backward (0: the input gradient, 1: the weight gradient), saving what the
    # function's own backward needs.
    ctx.g = g
    ctx.save_for_backward(gy, x, w)
    return _backward(gy, x, w, g, [which == 0, which == 1, False])[which]


class _Conv(Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], g: Geometry) -> torch.Tensor:
        ctx.g, ctx.has_bias = g, b is not None
        ctx.save_for_backward(x, w)
        return _forward(x, w, b, g)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        x, w = ctx.saved_tensors
        gx = _InputGrad.apply(gy, x, w, ctx.g) if ctx.needs_input_grad[0] else None
        gw = _WeightGrad.apply(gy, x, w, ctx.g) if ctx.needs_input_grad[1] else None
        gb = gy.sum([0] + list(range(2, gy.dim()))) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


class _InputGrad(Function):
    @staticmethod
    def forward(ctx: Any, gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, g: Geometry) -> torch.Tensor:
        return _kernel(ctx, gy, x, w, g, 0)

    @staticmethod
    def backward(ctx: Any, c: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        gy, x, w = ctx.saved_tensors   # x only for its shape: the output does not depend on its values
        d_gy = _Conv.apply(c, w, None, ctx.g) if ctx.needs_input_grad[0] else None
        d_w = _WeightGrad.apply(gy, c, w, ctx.g) if ctx.needs_input_grad[2] else None
        return d_gy, None, d_w, None


class _WeightGrad(Function):
    @staticmethod
    def forward(ctx: Any, gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, g: Geometry) -> torch.Tensor:
        return _kernel(ctx, gy, x, w, g, 1)

    @staticmethod
    def backward(ctx: Any, c: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        gy, x, w = ctx.saved_tensors   # w only for its shape
        d_gy = _Conv.apply(x, c, None, ctx.g) if ctx.needs_input_grad[0] else None
        d_x = _InputGrad.apply(gy, x, c, ctx.g) if ctx.needs_input_grad[1] else None
        return d_gy, d_x, None, None


def conv(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], stride: Sequence[int],
         padding: Sequence[int], dilation: Sequence[int], groups: int) -> torch.Tensor:
    """A convolution (any of 1-, 2-, 3-D, zero padding) with a native-kernel derivative of every order."""
    return _Conv.apply(x, w, b, (tuple(stride), tuple(padding), tuple(dilation), groups))


def conv_bn(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], gamma: Optional[torch.Tensor],
            beta: Optional[torch.Tensor], mean: torch.Tensor, var: torch.Tensor, eps: float, stride: Sequence[int],
            padding: Sequence[int], dilation: Sequence[int], groups: int) -> torch.Tensor:
    """``bn(conv(x))`` for an eval-mode BatchNorm, as one convolution with the BN folded into its weights."""
    s, shift = bn_affine(gamma, beta, mean, var, eps)
    if b is not None:
        shift = shift + b * s
    folded = w * s.view([-1] + [1] * (w.dim() - 1))
    return _Conv.apply(x, folded, shift, (tuple(stride), tuple(padding), tuple(dilation), groups))


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_pre_hooks or m._forward_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def rewrite(model: nn.Module) -> Optional[torch.fx.GraphModule]:
    """A graph module computing ``model`` with :func:`conv` / :func:`conv_bn` in place of its convolutions and their
    eval-mode BatchNorms, sharing the model's parameters and buffers; None when torch.fx cannot trace it or there is
    nothing to rewrite. Only for eval mode: folded BatchNorms use their running statistics."""
    gm, pairs = find_conv_bn_pairs(model)
    if gm is None:
        return None
    mods = dict(gm.named_modules())
    bn_after = dict(pairs)
    graph = gm.graph
    changed = False
    for node in list(graph.nodes):
        m = mods.get(node.target) if node.op == "call_module" else None
        # Exact module types only (a subclass or a parametrization may change forward()); string or non-zero
        # padding modes, and modules with hooks (e.g. weight_norm's pre-hook computes the weight), stay as they are.
        if type(m) not in CONVS or m.padding_mode != "zeros" or isinstance(m.padding, str) \
                or len(node.args) != 1 or node.kwargs or _hooked(m) or not isinstance(m.weight, nn.Parameter):
            continue
        geometry = (list(m.stride), list(m.padding), list(m.dilation), m.groups)
        bn_name = bn_after.get(str(node.target))
        if bn_name is not None and _hooked(mods[bn_name]):
            bn_name = None   # the BN keeps running as a module; its conv still goes fast
        with graph.inserting_before(node):
            w = graph.get_attr(f"{node.target}.weight")
            b = graph.get_attr(f"{node.target}.bias") if m.bias is not None else None
            if bn_name is None:
                new = graph.call_function(conv, (node.args[0], w, b, *geometry))
                node.replace_all_uses_with(new)
            else:
                bn = mods[bn_name]
                bn_node = next(iter(node.users))

                def attr(name: str) -> Optional[torch.fx.Node]:
                    return graph.get_attr(f"{bn_name}.{name}") if getattr(bn, name, None) is not None else None

                new = graph.call_function(conv_bn, (node.args[0], w, b, attr("weight"), attr("bias"),
                                                    attr("running_mean"), attr("running_var"), bn.eps, *geometry))
                bn_node.replace_all_uses_with(new)
                graph.erase_node(bn_node)
        graph.erase_node(node)
        changed = True
    if not changed:
        return None
    graph.lint()
    gm.recompile()
    return gm


def for_products(model: nn.Module, sample: Optional[torch.Tensor]) -> nn.Module:
    """The module a Hessian operator should differentiate: :func:`rewrite` of ``model`` when it computes the model's
    outputs on ``sample`` (a few inputs), else ``model`` itself (with a warning if the rewrite disagreed)."""
    net = rewrite(model)
    if net is None:
        return model
    net.eval()
    if sample is not None and len(sample):
        rtol = 1e-4 if sample.dtype != torch.float64 else 1e-10
        if not fold_outputs_match(net, model, sample, rtol):
            warnings.warn("the Hessian fast path changed the model's outputs; taking products through the model as is")
            return model
    return net
