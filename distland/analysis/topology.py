"""Topology of a loss surface sampled on a grid (1-D, 2-D or any N-D array): minima, basins, persistence.

The surface is read as a function on the grid's points; two points are *neighbours* when they differ by one step
along one axis (4-connectivity in 2-D, 6 in 3-D). The *sublevel set* at level t is the set of valid points with
L ≤ t. Sweeping t upwards, a connected component of the sublevel set is born at a local minimum and dies when it
joins a component born at a deeper minimum (the *elder rule*; ties go to the smaller flat index). A minimum's
*birth* is its loss, its *death* the level of the point (the *saddle*) where its component joins the deeper one,
its *persistence* death − birth. The deepest minimum of each connected piece of the grid never dies (death = inf).
The pairs (birth, death) are the 0-dimensional persistence diagram of the grid as a cubical complex whose
vertices carry the losses (the V-construction; gudhi's ``CubicalComplex(vertices=...)``). The *merge tree* is this
pairing plus, for each minimum, the minimum it merges into. Zero-persistence pairs (plateaus) are not minima.

Point classes, as in :mod:`.sharpness`: *valid* (done, finite loss), *diverged* (done, NaN/inf loss), *pending*
(not done). Invalid points are **excluded** from the complex (equivalently, their loss is +inf): a diverged point is
a wall no path crosses, never a value filled in from its neighbours. An *edge point* is a valid point on the grid's
boundary or next to a pending point: beyond it the surface is unknown, so a basin that reaches it is *open*.

Numbers (:func:`topology_numbers`; stored as ``sharpness.topology.<name>`` by the sharpness report). Let
R = max L − min L over valid points (``loss_range``).

- ``n_minima``: minima with persistence > 0 (essential ones included); ``n_minima_<p>pct``: those with
  persistence > p% of R, for p in :data:`THRESHOLDS` (an essential minimum counts; inf > anything).
- ``n_components``: connected pieces of the valid points (each has one essential minimum).
- ``total_persistence``: Σ persistence over finite pairs; ``total_persistence_rel`` = it / R;
  ``max_persistence``: the largest finite persistence (the deepest secondary basin), 0 when there is none.
- The *centre* c is the valid grid point nearest to (0, …, 0) (``centre_loss``, ``centre_x``/``_y``/``_z``, …).
  Its minimum m is reached from c by steepest descent along neighbours (``centre_min_loss``;
  ``centre_is_global`` = 1 when m is an essential minimum). The *spill level* of m is
  S = min(death(m), the level at which m's component first contains an edge point while m is its deepest
  minimum): the level at which water poured into m's basin flows into a deeper basin or off the known grid.
  ``centre_spill_edge`` = 1 when S is set by an edge point (the depth is then a lower bound for the true
  landscape).
- ``centre_depth`` = S − L(m). ``centre_barrier`` = max(S − L_c, 0): the least climb from c, along the grid, that
  reaches either a point deeper than m or an edge point (0 when c lies above its basin's spill level: it can roll
  into a deeper basin without climbing). inf when m's piece of the grid has neither (walled in by diverged points).
- ``centre_basin_points``: the points of the component of {L < S} that contains m (the basin below its spill;
  c itself lies outside it when the barrier is 0);
  ``centre_basin_area``: their trapezoid-weighted cell volume (as :func:`.sharpness.basin_region`; the whole
  grid has its true area/volume), ``centre_basin_fraction`` = area / grid area.
- ``loss_min``, ``loss_max``, ``loss_range``, ``n_valid``, ``n_excluded``.

Distances between landscapes (:func:`diagram_distance`, needs gudhi): the bottleneck distance
between two 0-dimensional diagrams, optionally of losses rescaled to [0, 1] by each surface's (min, range).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .sharpness import classify

Report = Dict[str, float]
PREFIX = "topology."
THRESHOLDS: Tuple[float, ...] = (0.01, 0.05, 0.1)   # persistence thresholds, as fractions of the loss range
AXIS_NAMES = "xyzw"
INSTALL_HINT = "pip install 'distland[topology]' (or: pip install gudhi)"


class MissingDependency(ImportError):
    """An optional library is needed for this; the message names the pip command."""


def _gudhi() -> Any:
    try:
        import gudhi
    except ImportError:
        raise MissingDependency(f"persistence diagrams and distances need the gudhi library: {INSTALL_HINT}") \
            from None
    return gudhi


# ----------------------------------------------------------------------------------------------- merge tree
@dataclass
class MergeTree:
    """Every minimum of a grid function with its birth, death, saddle and the minimum it merges into.

    Arrays are indexed by minimum, deepest first (by birth, then flat index). ``minima`` and ``saddle`` are flat
    (C-order) indices into the grid of ``shape``; ``saddle`` and ``parent`` are −1 for essential minima (death =
    inf). ``edge`` is the level at which the minimum's component first held an edge point while the minimum was its
    deepest (inf if never); ``spill`` = min(death, edge).
    """

    shape: Tuple[int, ...]
    minima: np.ndarray
    birth: np.ndarray
    death: np.ndarray
    saddle: np.ndarray
    parent: np.ndarray
    edge: np.ndarray
    owner: Dict[int, int]   # flat index of every point born as a minimum (plateau ones too) -> its minimum's index

    @property
    def persistence(self) -> np.ndarray:
        return self.death - self.birth

    @property
    def spill(self) -> np.ndarray:
        return np.minimum(self.death, self.edge)

    def diagram(self) -> np.ndarray:
        """(n, 2) array of (birth, death) pairs: the 0-dimensional persistence diagram (inf for essential)."""
        return np.stack([self.birth, self.death], axis=1) if self.birth.size else np.zeros((0, 2))

    def coords(self, k: int) -> Tuple[int, ...]:
        """Grid index of minimum ``k``."""
        return tuple(int(i) for i in np.unravel_index(int(self.minima[k]), self.shape))


def _neighbour_table(shape: Tuple[int, ...]) -> np.ndarray:
    # (N, 2·d) flat indices of each point's axis neighbours, −1 where the step leaves the grid.
    n = int(np.prod(shape))
    idx = np.arange(n).reshape(shape)
    cols = []
    for axis in range(len(shape)):
        for step in (-1, 1):
            nb = np.full(shape, -1, dtype=np.int64)
            src = [slice(None)] * len(shape)
            dst = [slice(None)] * len(shape)
            if step == -1:
                dst[axis], src[axis] = slice(1, None), slice(None, -1)
            else:
                dst[axis], src[axis] = slice(None, -1), slice(1, None)
            nb[tuple(dst)] = idx[tuple(src)]
            cols.append(nb.reshape(-1))
    return np.stack(cols, axis=1) if cols else np.zeros((n, 0), dtype=np.int64)


def _edge_mask(shape: Tuple[int, ...], pending: np.ndarray) -> np.ndarray:
    edge = np.zeros(shape, dtype=bool)
    for axis, n in enumerate(shape):
        if n > 1:   # an axis of one point has no "beyond" along it
            lo = [slice(None)] * len(shape)
            hi = [slice(None)] * len(shape)
            lo[axis], hi[axis] = 0, n - 1
            edge[tuple(lo)] = edge[tuple(hi)] = True
    # Next to a pending point: the unknown value there could be lower, so the basin is open on that side.
    flat_pending = pending.reshape(-1)
    nb = _neighbour_table(shape)
    near = ((nb >= 0) & flat_pending[np.where(nb >= 0, nb, 0)]).any(axis=1)
    return edge | near.reshape(shape)


def merge_tree(values: np.ndarray, done: Optional[np.ndarray] = None) -> MergeTree:
    """The merge tree of the sublevel sets of ``values`` (any shape) over its valid points (module docstring).

    A union–find over the valid points in increasing order of (loss, flat index): O(N log N), exact, no library.
    """
    values = np.asarray(values, dtype=np.float64)
    shape = values.shape
    valid, _, pending = classify(values, done)
    flat = values.reshape(-1)
    ok = valid.reshape(-1)
    nbrs = _neighbour_table(shape).tolist()
    is_edge = _edge_mask(shape, pending).reshape(-1).tolist()
    order = np.flatnonzero(ok)
    order = order[np.argsort(flat[order], kind="stable")].tolist()
    vals = flat.tolist()

    parent = [-1] * flat.size          # union-find forest; −1: not yet in the sublevel set
    root_min: Dict[int, int] = {}       # root -> flat index of its component's deepest minimum
    root_edge: Dict[int, bool] = {}     # root -> component holds an edge point
    birth: Dict[int, float] = {}        # minimum -> its loss
    death: Dict[int, Tuple[float, int, int]] = {}   # minimum -> (level, saddle, elder minimum)
    edge_level: Dict[int, float] = {}   # minimum -> level its component first held an edge point while it was eldest

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]   # path halving keeps the trees shallow
            a = parent[a]
        return a

    for p in order:
        v = vals[p]
        roots = {find(q) for q in nbrs[p] if q >= 0 and parent[q] >= 0}
        parent[p] = p
        if not roots:   # a new component: p is a local minimum
            root_min[p], root_edge[p], birth[p] = p, is_edge[p], v
            if is_edge[p]:
                edge_level[p] = v
            continue
        ranked = sorted(roots, key=lambda r: (vals[root_min[r]], root_min[r]))
        elder = ranked[0]
        touched = is_edge[p] or any(root_edge[r] for r in ranked)
        for r in ranked[1:]:
            m = root_min.pop(r)
            death[m] = (v, p, root_min[elder])
            root_edge.pop(r)
            parent[r] = elder
        parent[p] = elder
        m = root_min[elder]
        if touched and not root_edge[elder]:
            root_edge[elder] = True
            edge_level.setdefault(m, v)

    mins = sorted(birth, key=lambda m: (birth[m], m))
    keep = [m for m in mins if m not in death or death[m][0] > birth[m]]   # drop plateau (zero-length) pairs
    pos = {m: k for k, m in enumerate(keep)}

    def elder_of(m: int) -> int:
        # A zero-length minimum is no node of the tree: follow its merges to the first kept one.
        e = death[m][2]
        while e not in pos:
            e = death[e][2]
        return pos[e]

    return MergeTree(
        shape=shape,
        minima=np.array(keep, dtype=np.int64),
        birth=np.array([birth[m] for m in keep], dtype=np.float64),
        death=np.array([death[m][0] if m in death else math.inf for m in keep], dtype=np.float64),
        saddle=np.array([death[m][1] if m in death else -1 for m in keep], dtype=np.int64),
        parent=np.array([elder_of(m) if m in death else -1 for m in keep], dtype=np.int64),
        edge=np.array([edge_level.get(m, math.inf) for m in keep], dtype=np.float64),
        owner={m: (pos[m] if m in pos else elder_of(m)) for m in birth})


# ----------------------------------------------------------------------------------------------- library side
def persistence_diagram(values: np.ndarray, done: Optional[np.ndarray] = None, dim: int = 0) -> np.ndarray:
    """The ``dim``-dimensional sublevel-set persistence diagram computed by gudhi (excluded points at +inf).

    For ``dim`` = 0 this equals :meth:`MergeTree.diagram` up to order (the tests check it).
    """
    gudhi = _gudhi()
    values = np.asarray(values, dtype=np.float64)
    valid = classify(values, done)[0]
    cc = gudhi.CubicalComplex(vertices=np.where(valid, values, np.inf))
    cc.compute_persistence()
    pairs = np.asarray(cc.persistence_intervals_in_dimension(dim), dtype=np.float64).reshape(-1, 2)
    # Classes born at +inf are the excluded points themselves, not features of the surface.
    return pairs[np.isfinite(pairs[:, 0])]


def _rescale(diagram: np.ndarray, lo: float, span: float) -> np.ndarray:
    return (np.asarray(diagram, dtype=np.float64) - lo) / (span if span > 0 else 1.0)


def diagram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Bottleneck distance between two diagrams.

    The finite points go to gudhi's ``bottleneck_distance``. Essential points (death = inf) are matched among
    themselves by birth, in sorted order (optimal on a line); if their counts differ the distance is inf; the two
    parts combine as a max. (Wasserstein is left out: gudhi 3.13's hera Wasserstein hung or crashed on some of
    our diagrams, and gudhi's other one needs POT.)
    """
    gudhi = _gudhi()
    a = np.asarray(a, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 2)
    ess_a, ess_b = np.isinf(a[:, 1]), np.isinf(b[:, 1])
    if ess_a.sum() != ess_b.sum():
        return math.inf
    gaps = np.abs(np.sort(a[ess_a, 0]) - np.sort(b[ess_b, 0]))
    fin_a, fin_b = np.ascontiguousarray(a[~ess_a]), np.ascontiguousarray(b[~ess_b])
    # e = 0 asks gudhi for the exact distance (its default adds a tiny relative error, e.g. 1e-308 for equal ones).
    return max(float(gudhi.bottleneck_distance(fin_a, fin_b, 0.0)), float(gaps.max()) if gaps.size else 0.0)


def compare(values_a: np.ndarray, values_b: np.ndarray, done_a: Optional[np.ndarray] = None,
            done_b: Optional[np.ndarray] = None) -> Report:
    """Distances between two surfaces' 0-dimensional diagrams: raw losses and each rescaled to [0, 1]."""
    out: Report = {}
    diagrams = []
    for values, done in ((values_a, done_a), (values_b, done_b)):
        d = merge_tree(values, done).diagram()
        v = np.asarray(values, dtype=np.float64)[classify(values, done)[0]]
        lo, span = (float(v.min()), float(np.ptp(v))) if v.size else (0.0, 1.0)
        diagrams.append((d, _rescale(d, lo, span)))
    (a, a_rel), (b, b_rel) = diagrams
    return {"bottleneck": diagram_distance(a, b), "bottleneck_rel": diagram_distance(a_rel, b_rel)}


# ----------------------------------------------------------------------------------------------- the numbers
def _centre(axes: Sequence[np.ndarray], valid: np.ndarray) -> Optional[int]:
    if not valid.any():
        return None
    grids = np.meshgrid(*axes, indexing="ij")
    dist2 = sum(g.reshape(-1) ** 2 for g in grids)
    dist2 = np.where(valid.reshape(-1), dist2, np.inf)
    return int(np.argmin(dist2))


def _descend(p: int, flat: np.ndarray, ok: np.ndarray, nbrs: np.ndarray) -> int:
    # Steepest descent by (loss, flat index), the order the union-find uses, so it ends at a minimum of the tree
    # (or at a plateau point whose zero-length component joined one at the same level).
    while True:
        cand = [q for q in nbrs[p] if q >= 0 and ok[q]]
        best = min(cand + [p], key=lambda q: (flat[q], q))
        if best == p:
            return p
        p = best


def _basin(flat: np.ndarray, ok: np.ndarray, nbrs: np.ndarray, seed: int, level: float) -> np.ndarray:
    # The component of {valid, L < level} containing seed (breadth-first).
    seen = np.zeros(flat.size, dtype=bool)
    if not (ok[seed] and flat[seed] < level):
        return seen
    seen[seed] = True
    queue = deque([seed])
    while queue:
        p = queue.popleft()
        for q in nbrs[p]:
            if q >= 0 and not seen[q] and ok[q] and flat[q] < level:
                seen[q] = True
                queue.append(q)
    return seen


def _cell_weights(axes: Sequence[np.ndarray]) -> np.ndarray:
    # Trapezoid weights × cell volume: summed over the whole grid they give the grid's true length/area/volume.
    w = np.ones(())
    for a in axes:
        n = a.size
        wa = np.full(n, np.ptp(a) / (n - 1) if n > 1 else 0.0)
        if n > 1:
            wa[[0, -1]] *= 0.5
        w = np.multiply.outer(w, wa)
    return w.reshape(-1)


def topology_numbers(values: np.ndarray, axes: Optional[Sequence[np.ndarray]] = None,
                     done: Optional[np.ndarray] = None, thresholds: Sequence[float] = THRESHOLDS,
                     tree: Optional[MergeTree] = None) -> Report:
    """The numbers of the module docstring for a grid of losses (any number of axes; ``axes`` default to indices)."""
    values = np.asarray(values, dtype=np.float64)
    shape = values.shape
    axes = [np.arange(n, dtype=np.float64) for n in shape] if axes is None else \
        [np.asarray(a, dtype=np.float64).reshape(-1) for a in axes]
    if tuple(a.size for a in axes) != shape:
        raise ValueError(f"values have shape {shape}, the axes {tuple(a.size for a in axes)}")
    valid, _, _ = classify(values, done)
    tree = merge_tree(values, done) if tree is None else tree
    out: Report = {"n_valid": float(valid.sum()), "n_excluded": float(valid.size - valid.sum())}
    if not valid.any():
        return out
    v = values[valid]
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo
    pers = tree.persistence
    finite = pers[np.isfinite(pers)]
    out.update(loss_min=lo, loss_max=hi, loss_range=span, n_minima=float(pers.size),
               n_components=float(np.isinf(pers).sum()),
               total_persistence=float(finite.sum()),
               total_persistence_rel=float(finite.sum() / span) if span > 0 else 0.0,
               max_persistence=float(finite.max()) if finite.size else 0.0)
    for t in thresholds:
        out[f"n_minima_{100 * t:g}pct"] = float((pers > t * span).sum())

    flat = values.reshape(-1)
    ok = valid.reshape(-1)
    nbrs = _neighbour_table(shape)
    c = _centre(axes, valid)
    loss_c = float(flat[c])
    idx = np.unravel_index(c, shape)
    out["centre_loss"] = loss_c
    for k, (a, i) in enumerate(zip(axes, idx)):
        out[f"centre_{AXIS_NAMES[k] if k < len(AXIS_NAMES) else k}"] = float(a[i])
    m = _descend(c, flat, ok, nbrs)
    k = tree.owner[m]
    spill = float(tree.spill[k])
    birth = float(tree.birth[k])
    basin = _basin(flat, ok, nbrs, int(tree.minima[k]), spill)
    weights = _cell_weights(axes)
    total = float(weights.sum())
    area = float(weights[basin].sum())
    out.update(centre_min_loss=birth, centre_is_global=float(math.isinf(tree.death[k])),
               centre_spill_edge=float(tree.edge[k] <= tree.death[k] and math.isfinite(tree.edge[k])),
               centre_depth=spill - birth, centre_barrier=max(spill - loss_c, 0.0),
               centre_basin_points=float(basin.sum()), centre_basin_area=area,
               centre_basin_fraction=area / total if total > 0 else math.nan)
    return out


def topology_report(data: Any, metric: str = "train_loss", thresholds: Sequence[float] = THRESHOLDS) -> Report:
    """:func:`topology_numbers` of one metric of a :class:`distland.surfacefile.SurfaceData` (1-D, 2-D or N-D)."""
    axes = [data.x] + ([] if getattr(data, "y", None) is None else [data.y])
    axes += list(getattr(data, "extra_axes", []) or [])
    values = np.asarray(data.metrics[metric], dtype=np.float64)
    done = getattr(data, "done", None)
    return topology_numbers(values, axes, done, thresholds)


def format_topology(report: Report, prefix: str = "") -> List[str]:
    """Human-readable lines for the numbers (keys optionally carrying ``prefix``); empty when absent."""
    r = report.get

    def g(key: str) -> str:
        return f"{r(prefix + key, math.nan):.6g}"

    if prefix + "n_minima" not in report:
        return []
    pct = sorted((k[len(prefix):] for k in report if k.startswith(prefix + "n_minima_") and k.endswith("pct")),
                 key=lambda k: float(k[len("n_minima_"):-3]))
    counts = ", ".join(f"{int(r(prefix + k))} > {k[len('n_minima_'):-3]}%" for k in pct)
    lines = [f"  topology    {int(r(prefix + 'n_minima'))} minima ({counts} of the loss range {g('loss_range')}), "
             f"{int(r(prefix + 'n_components'))} component(s)",
             f"              total persistence {g('total_persistence')} ({g('total_persistence_rel')} ranges), "
             f"largest finite {g('max_persistence')}"]
    if prefix + "centre_depth" in report:
        glob = " (the global minimum)" if r(prefix + "centre_is_global") else ""
        edge = " (lower bound: spills at the grid edge)" if r(prefix + "centre_spill_edge") else ""
        lines.append(f"  centre basin minimum {g('centre_min_loss')}{glob}, depth {g('centre_depth')}{edge}, "
                     f"barrier {g('centre_barrier')}, area {g('centre_basin_area')} "
                     f"({100 * r(prefix + 'centre_basin_fraction', math.nan):.3g}% of the grid)")
    return lines
