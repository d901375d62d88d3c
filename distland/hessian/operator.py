"""The Hessian of the mean loss as a linear operator on one flat vector: v ↦ H v.

``H = ∇²_θ L(θ)`` with ``L = (1/N) Σ_i ℓ(f(x_i; θ), y_i)`` over a fixed data subset, the model in eval mode (so
BatchNorm uses its running statistics and the loss is a fixed function of the weights), θ restricted to a chosen
subset of the parameters (default: tensors with ≥ 2 dims, as the paper authors; or all). Everything stays in one
flat float tensor on the model's device: no numpy round trips, no per-product re-creation of vectors.

A product is a double backward (Pearlmutter): per batch, g_b = ∂L_b/∂θ with ``create_graph=True``, then
∂⟨g_b, v⟩/∂θ, accumulated over the batches, through :func:`.rewrite.for_products` of the model (convolutions with
native-kernel double backward, eval-mode BatchNorm folded inside the graph; the same function of the same
parameters). Two strategies, both exact (same sums, same order):

- ``recompute``: the forward pass and first backward are redone per product (memory: one batch's graph);
- ``cached``: the first-order graph of every batch is built once and kept (``retain_graph``), so each further
  product is only the double backward. Chosen by ``cache: auto`` when the graphs fit in ``cache_bytes`` (default:
  a quarter of the free memory of the device; the graph's size is measured on the first batch).

Measured on ResNet-20 (bench/hessian.py, bench/README.md): see there for which is faster on which device.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..losses import Criterion, resolve
from .rewrite import for_products

Batch = Tuple[torch.Tensor, torch.Tensor]
# A loss maps (model outputs, targets) of one batch to the *sum* of the per-sample losses (a scalar): the operator
# divides by the number of samples itself, so uneven last batches weigh what they should.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PARAM_SETS = ("ndim2", "all")
CACHE_MODES = ("auto", "on", "off")
DEFAULT_CACHE_BYTES = 4 << 30       # when the free memory cannot be read
CACHE_FRACTION = 0.25               # of the free host / device memory that cached graphs may take


class HessianError(ValueError):
    """The Hessian cannot be formed for this model/data/choice; the message names the fix."""


def summed_loss(loss: Union[str, Criterion, LossFn], allow: Sequence[str] = ()) -> LossFn:
    """The summed loss of a batch for ``loss``: a config's loss name (:mod:`distland.losses`: ``cross_entropy``,
    ``mse`` or a plug-in from a module in ``allow``), a :class:`~distland.losses.Criterion`, or a callable that
    already returns the sum."""
    if isinstance(loss, Criterion):
        criterion = loss
    elif callable(loss):
        return loss
    else:
        try:
            criterion = resolve(loss, allow)
        except ValueError as e:
            raise HessianError(str(e)) from None
    return lambda outputs, targets: criterion.per_sample(outputs, targets).sum()


def select_parameters(model: nn.Module, which: str = "ndim2") -> List[Tuple[str, nn.Parameter]]:
    """The (name, parameter) pairs the Hessian is taken over, in ``named_parameters()`` order."""
    if which not in PARAM_SETS:
        raise HessianError(f"hessian.params {which!r} is not valid; choose ndim2 (tensors with >= 2 dims) or all")
    chosen = [(k, p) for k, p in model.named_parameters() if p.is_floating_point() and (which == "all" or p.dim() >= 2)]
    if not chosen:
        what = "parameters with >= 2 dims (weights of convs/linears)" if which == "ndim2" else "floating parameters"
        raise HessianError(f"the model has no {what}; the Hessian would be empty"
                           + ("; use hessian.params: all to include 1-D tensors" if which == "ndim2" else ""))
    return chosen


class HessianOperator:
    """``H v`` of the mean loss of ``model`` over ``batches`` w.r.t. the parameters ``params`` selects.

    ``batches`` is materialised once (a list of (inputs, targets) already on the model's device). Vectors are flat
    tensors of length :attr:`dim` in the parameters' dtype on their device; :meth:`to_tensors` and
    :meth:`from_tensors` convert to and from ``{name: tensor}``. :attr:`products` counts the HVPs done.
    """

    def __init__(self, model: nn.Module, batches: Iterable[Batch], loss: Union[str, Criterion, LossFn] = "cross_entropy",
                 params: str = "ndim2", cache: str = "auto", cache_bytes: int = 0, allow: Sequence[str] = (),
                 fast: bool = True) -> None:
        if cache not in CACHE_MODES:
            raise HessianError(f"cache {cache!r} is not valid; choose auto, on or off")
        self.model = model.eval()
        self.loss = summed_loss(loss, allow)
        named = select_parameters(model, params)
        self.names = [k for k, _ in named]
        self.params = [p for _, p in named]
        self.shapes = [tuple(p.shape) for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.dim = sum(self.sizes)
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype
        self.batches: List[Batch] = [(x, y) for x, y in batches if int(y.shape[0]) > 0]
        self.n = sum(int(y.shape[0]) for _, y in self.batches)
        if self.n == 0:
            raise HessianError("the Hessian needs at least one sample; the data subset is empty "
                               "(check data.max_samples, hessian.samples and the data set)")
        # The products differentiate a rewrite of the model with the same parameters (rewrite.py); ``fast=False``
        # differentiates the model itself (PyTorch's own double backward), for comparison.
        self.net = for_products(self.model, self.batches[0][0][:8]) if fast else self.model
        self.products = 0
        self.cache_mode, self.cache_bytes = cache, cache_bytes or free_memory_budget(self.device)
        self._graphs: Optional[List[Tuple[torch.Tensor, ...]]] = None
        self._cache_ok: Optional[bool] = None if cache == "auto" else cache == "on"
        # Parameters outside the chosen set need no gradient: switching them off spares their weight-gradient
        # kernels in both backward passes. Restored by close().
        chosen = {id(p) for p in self.params}
        self._frozen = [p for p in model.parameters() if id(p) not in chosen and p.requires_grad]
        for p in self._frozen:
            p.requires_grad_(False)
        for p in self.params:
            p.requires_grad_(True)

    # ------------------------------------------------------------------------------------------ vectors
    def to_tensors(self, flat: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Split a flat vector into ``{parameter name: tensor}`` (views)."""
        return {k: t.view(s) for k, t, s in zip(self.names, flat.split(self.sizes), self.shapes)}

    def from_tensors(self, tensors: Dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensors[k].reshape(-1).to(self.device, self.dtype) for k in self.names])

    # ------------------------------------------------------------------------------------------ products
    def _first_order(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        loss = self.loss(self.net(x), y) / self.n
        if not loss.requires_grad:
            raise HessianError("the loss does not depend on the chosen parameters (is the model differentiable, "
                               "and does its output use them?)")
        return torch.autograd.grad(loss, self.params, create_graph=True)

    def _second(self, grads: Sequence[torch.Tensor], vs: Sequence[torch.Tensor], retain: bool) -> List[torch.Tensor]:
        # Parameters that enter the loss only linearly (e.g. the last layer's bias) have a gradient with no graph
        # behind it: their rows of H v come from the other parameters' gradients, and their own term is zero.
        pairs = [(g, v) for g, v in zip(grads, vs) if g.requires_grad]
        if not pairs:
            return [torch.zeros_like(p) for p in self.params]
        # ∂⟨g, v⟩/∂θ as a vector-Jacobian product of g with v (no extra multiply/sum nodes in the graph).
        out = torch.autograd.grad([g for g, _ in pairs], self.params, grad_outputs=[v for _, v in pairs],
                                  retain_graph=retain, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h for p, h in zip(self.params, out)]

    def _use_cache(self) -> bool:
        if self._cache_ok is not None:
            return self._cache_ok
        # auto: measure the memory one batch's retained graph takes (on CUDA exactly; on CPU from the saved
        # tensors), extrapolate to all batches and keep the graphs only if they fit the budget.
        saved = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved[0] += t.numel() * t.element_size()
            return t

        x, y = self.batches[0]
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            grads = self._first_order(x, y)
        del grads
        per_sample = saved[0] / max(1, int(y.shape[0]))
        self._cache_ok = per_sample * self.n <= self.cache_bytes
        return self._cache_ok

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat vector ``v`` (length :attr:`dim`); returns a new flat vector."""
        if v.shape != (self.dim,):
            raise HessianError(f"vector of shape {tuple(v.shape)} does not match the {self.dim} chosen parameters")
        vs = [t.view(s) for t, s in zip(v.to(self.device, self.dtype).split(self.sizes), self.shapes)]
        acc = [torch.zeros_like(p) for p in self.params]
        cached = self._use_cache()
        if cached and self._graphs is None:
            self._graphs = [self._first_order(x, y) for x, y in self.batches]
        for b, (x, y) in enumerate(self.batches):
            grads = self._graphs[b] if cached else self._first_order(x, y)
            for a, h in zip(acc, self._second(grads, vs, retain=cached)):
                a.add_(h)
        self.products += 1
        return torch.cat([a.reshape(-1) for a in acc])

    __call__ = matvec

    def gradient(self) -> torch.Tensor:
        """∇L as a flat vector (first order only; for tests and diagnostics)."""
        acc = [torch.zeros_like(p) for p in self.params]
        for x, y in self.batches:
            loss = self.loss(self.net(x), y) / self.n
            for a, g in zip(acc, torch.autograd.grad(loss, self.params, allow_unused=True)):
                if g is not None:
                    a.add_(g)
        return torch.cat([a.reshape(-1) for a in acc]).detach()

    def invalidate(self) -> None:
        """Forget the cached first-order graphs: call after changing the weights in place (e.g. moving to the next
        grid point), so the next product is taken at the new weights."""
        self._graphs = None

    def release(self) -> None:
        """Drop cached graphs and give the other parameters their gradients back."""
        self._graphs = None
        for p in self._frozen:
            p.requires_grad_(True)
        self._frozen = []


def free_memory_budget(device: torch.device) -> int:
    """CACHE_FRACTION of the free memory of ``device`` (GPU: reported by CUDA; CPU: MemAvailable)."""
    try:
        if device.type == "cuda":
            return int(CACHE_FRACTION * torch.cuda.mem_get_info(device)[0])
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(CACHE_FRACTION * int(line.split()[1]) * 1024)
    except (OSError, ValueError, RuntimeError):
        pass
    return DEFAULT_CACHE_BYTES


CPU_BATCH, GPU_BATCH = 128, 512   # samples per double backward when neither hessian.batch_size nor data.batch_size


def default_batch(device: str) -> int:
    return GPU_BATCH if device.startswith("cuda") else CPU_BATCH


def make_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, device: Union[str, torch.device] = "cpu",
                 channels_last: bool = False) -> List[Batch]:
    """Cut ``(x, y)`` into batches on ``device`` (moved once)."""
    if batch_size < 1:
        raise HessianError(f"batch size must be >= 1, got {batch_size}")
    fmt = torch.channels_last if channels_last and x.dim() == 4 else torch.contiguous_format
    x = x.to(device).contiguous(memory_format=fmt)
    y = y.to(device)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, int(y.shape[0]), batch_size)]
