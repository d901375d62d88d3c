"""The paper's convexity maps: λmax and λmin of the loss Hessian at every grid point (``quantities: [..., hessian]``).

At a point θ = θ* + Σ c_k d_k the Hessian of the mean loss over the first ``hessian.samples`` samples of the job's
first split (train), with respect to the chosen parameters (``hessian.params``: tensors with ≥ 2 dims, as the
authors, or all), in eval mode, gives ``max_eig`` and ``min_eig`` (the authors' dataset names) from ONE Lanczos run
(:func:`distland.hessian.krylov.extreme_eigenvalues`) at ``hessian.map_tol`` (default 1e-2, the authors'
``eigsh`` tolerance: each Ritz residual ≤ tol·max|λ|, so |λmin/λmax| is known to about 2·tol). ``hessian_hvps``
counts the Hessian-vector products each point took and ``hessian_converged`` says whether both ends converged
within ``hessian.max_iter`` products. Every point starts Lanczos from the same seeded vector, so a map does not
depend on how many ranks computed it, nor on resumes. A point where a product is not finite stores NaN, done.

The weights are moved on the rank's own copy of the model: uncompiled, in float32, with the loss evaluator's
point-setting logic (:class:`~distland.evaluate.SurfaceEvaluator`, so interpolated BN variances move geometrically as
for the loss). It is not the loss engine's folded model (folding there bakes the BN scale into new weights, which
would change the tensors the Hessian is taken over); the products fold BatchNorm themselves, inside the graph, as a
function of the model's own tensors (:mod:`distland.hessian.rewrite`).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..surfacefile import Dataset, QuantityLayout
from . import Context, PointEvaluator, Poll, Quantity



class HessianQuantity(Quantity):
    """``max_eig``/``min_eig`` (float64, NaN until done), ``hessian_hvps`` (int32, −1) and ``hessian_converged``
    (uint8: 1 when both extremes met the tolerance), masked by ``hessian_done``."""

    name = "hessian"

    def __init__(self, params: str = "ndim2", samples: int = 0, batch_size: int = 0, tol: float = 1e-2,
                 max_iter: int = 200, seed: int = 0, cache: str = "auto", loss: str = "cross_entropy",
                 plugins: Sequence[str] = ()) -> None:
        self.params, self.samples, self.batch_size = params, samples, batch_size
        self.tol, self.max_iter, self.seed, self.cache = tol, max_iter, seed, cache
        self.loss, self.plugins = loss, tuple(plugins)

    @classmethod
    def from_config(cls, cfg: object) -> "HessianQuantity":
        h = cfg.hessian  # type: ignore[attr-defined]
        return cls(h.params, h.samples, h.batch_size or cfg.data.batch_size,  # type: ignore[attr-defined]
                   h.map_tol, h.max_iter, h.seed, h.cache, cfg.loss, cfg.plugins)  # type: ignore[attr-defined]

    def layout(self) -> QuantityLayout:
        # Everything that changes the values (the batch size only by float rounding, but a file is one setting).
        identity = {"params": self.params, "samples": self.samples, "tol": self.tol, "max_iter": self.max_iter,
                    "seed": self.seed, "batch_size": self.batch_size, "loss": self.loss}
        return QuantityLayout(self.name, (Dataset("max_eig"), Dataset("min_eig"), Dataset("hessian_hvps", "i4", -1),
                                          Dataset("hessian_converged", "u1", 0)), identity)

    def start(self, ctx: Context) -> PointEvaluator:
        return HessianEvaluator(self, ctx)


class HessianEvaluator(PointEvaluator):
    def __init__(self, q: HessianQuantity, ctx: Context) -> None:
        import torch

        from ..engine import exact_float32
        from ..evaluate import SurfaceEvaluator
        from ..hessian import krylov
        from ..hessian.operator import HessianError, HessianOperator, default_batch, make_batches, select_parameters

        if not ctx.splits:
            raise HessianError("the Hessian map needs a data split; the job loads none")
        select_parameters(ctx.model, q.params)   # no such parameters: one clear line, before the file is opened
        # The loss evaluator's point-setting (log-space variances included) on a plain copy: no folding, no
        # compilation, float32, so the Hessian is taken over the model's own tensors (the operator's fast path
        # folds BatchNorm inside its graph instead).
        eng = dataclasses.replace(ctx.engine, fold_bn=False, compile="off", precision="fp32", stream_data="off")
        self.mover = SurfaceEvaluator(ctx.model, ctx.reference, ctx.directions, {}, eng, log_keys=ctx.log_keys)
        x, y = next(iter(ctx.splits.values()))
        if q.samples:
            x, y = x[:q.samples], y[:q.samples]
        batch = q.batch_size or default_batch(eng.device)
        self.device = torch.device(eng.device)
        with exact_float32(self.device):   # the fast path's output check too: a TF32 job's convs would fail it
            self.op = HessianOperator(self.mover.model, make_batches(x, y, batch, eng.device, eng.channels_last),
                                      q.loss, q.params, q.cache, allow=q.plugins)
        self.q = q
        self.start_seed = krylov.probe_seed(q.seed, "extremes", 0)   # the same start vector at every point
        self._extremes = krylov.extreme_eigenvalues
        self.points = 0

    def evaluate(self, points: Sequence[Tuple[float, ...]], poll: Poll = None) -> Dict[str, np.ndarray]:
        import torch

        from ..engine import exact_float32

        op = self.op

        def matvec(v: torch.Tensor) -> torch.Tensor:
            if poll is not None:
                poll()   # the coordinator keeps answering workers between products
            return op.matvec(v)

        rows: List[Tuple[float, float, int, int]] = []
        with exact_float32(self.device):   # float32 products even in a job whose loss runs in TF32
            for coords in points:
                self.mover.set_point(coords)
                op.invalidate()
                before = op.products
                try:
                    ext = self._extremes(matvec, op.dim, self.q.tol, self.q.max_iter, self.start_seed,
                                         like=op.params[0].detach())
                    rows.append((ext.lmax, ext.lmin, ext.hvps, int(ext.converged)))
                except FloatingPointError:   # the loss or its gradient is not finite here: NaN, done
                    rows.append((float("nan"), float("nan"), op.products - before, 0))
                self.points += 1
        op.invalidate()
        return {"max_eig": np.array([r[0] for r in rows], np.float64),
                "min_eig": np.array([r[1] for r in rows], np.float64),
                "hessian_hvps": np.array([r[2] for r in rows], np.int32),
                "hessian_converged": np.array([r[3] for r in rows], np.uint8)}

    def facts(self) -> Dict[str, int]:
        return {"hessian_points": self.points}
