"""The first per-point quantity: mean loss and accuracy on every evaluated split (the paper's surfaces)."""
from __future__ import annotations

import json
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .. import engine as engines
from ..evaluate import SurfaceEvaluator
from ..losses import Criterion, resolve
from ..surfacefile import Dataset, QuantityLayout
from . import Context, PointEvaluator, Poll, Quantity

KINDS = ("loss", "acc")


def dataset_names(splits: Sequence[str], accuracy: bool = True) -> List[str]:
    """``<split>_loss`` and ``<split>_acc`` per split: the paper authors' dataset names."""
    return [f"{s}_{k}" for s in splits for k in (KINDS if accuracy else KINDS[:1])]


class LossQuantity(Quantity):
    """``<split>_loss`` (float64 mean over samples) and ``<split>_acc`` (percent; not for a plug-in loss without
    accuracy), masked by ``done``. ``loss`` names the criterion (:mod:`distland.losses`)."""

    name = "loss"

    def __init__(self, splits: Sequence[str], loss: str = "cross_entropy", plugins: Sequence[str] = ()) -> None:
        self.splits = tuple(splits)
        self.loss = loss
        self.criterion = resolve(loss, plugins)

    @classmethod
    def from_config(cls, cfg: object) -> "LossQuantity":
        return cls(cfg.splits, cfg.loss, cfg.plugins)  # type: ignore[attr-defined]

    def layout(self) -> QuantityLayout:
        names = dataset_names(self.splits, self.criterion.correct is not None)
        # Cross-entropy, the default, adds nothing: files written before losses were selectable resume as before.
        identity = {} if self.loss == "cross_entropy" else {"loss": self.loss}
        return QuantityLayout(self.name, tuple(Dataset(n) for n in names), identity)

    def start(self, ctx: Context) -> PointEvaluator:
        return LossEvaluator(ctx, self.criterion)


class LossEvaluator(PointEvaluator):
    def __init__(self, ctx: Context, criterion: Criterion) -> None:
        self.evaluator = SurfaceEvaluator(ctx.model, ctx.reference, ctx.directions, ctx.splits, ctx.engine,
                                          criterion, ctx.log_keys)
        self.engine = self.evaluator.engine
        self.names = dataset_names(list(ctx.splits), criterion.correct is not None)
        # engine.compile: auto, never on the coordinator of a multi-rank job: while it compiled it could hand
        # out no work.
        self.probe = engines.CompileProbe(ctx.engine.compile == "auto" and not ctx.coordinator, ctx.share,
                                          ctx.engine.device)

    def evaluate(self, points: Sequence[Tuple[float, ...]], poll: Poll = None) -> Dict[str, np.ndarray]:
        rows = []
        for coords in points:
            t0 = time.perf_counter()
            rows.append(self.evaluator.evaluate(coords, poll))
            if self.probe.record(time.perf_counter() - t0):
                self.evaluator.compile_model()
        return {m: np.array([r[m] for r in rows], dtype=np.float64) for m in self.names}

    def facts(self) -> Dict[str, int]:
        return {"compiled_ranks": int(self.evaluator.compiled)}

    def finish(self, last_point: Tuple[float, ...]) -> Tuple[Dict[str, str], List[str]]:
        if self.engine is None or self.engine.precision == "fp32":
            return {}, []
        # Opt-in reduced precision reports its own error, at θ* and at the grid's far corner.
        check = self.evaluator.precision_check([tuple(0.0 for _ in last_point), last_point])
        line = (f"precision {self.engine.precision}: loss within {check['max_rel_loss_error']:.1e} (relative) "
                f"and accuracy within {check['max_acc_diff']:.2g} points of float32 at θ* and the grid's last point")
        return {"precision_check": json.dumps({"precision": self.engine.precision, **check}, sort_keys=True)}, [line]
