"""Spectral estimates of a symmetric operator given only its products: Lanczos extremes and top-k, Hutchinson trace,
stochastic Lanczos quadrature density.

Pure functions of a ``matvec`` (flat tensor → flat tensor, e.g. :class:`~distland.hessian.operator.HessianOperator`)
and of seeds; no files, no MPI. Randomness comes only from integer seeds (:func:`probe_seed`), so probe ``i`` is
the same vector on every rank and every device: probes can be spread over ranks and combined afterwards.

**Tolerance.** A Ritz pair (θ, y) of a Lanczos run counts as converged when its residual
‖H y − θ y‖ ≤ ``tol`` · ρ, where ρ = max(|θ_max|, |θ_min|) over the current Ritz values (an estimate of ‖H‖₂ from
below). The residual is the standard Lanczos estimate β_j·|s_j| (exact in exact arithmetic; with full
reorthogonalisation it matches the true residual to rounding). Since H is symmetric, a converged θ lies within
``tol``·ρ of an eigenvalue of H. For λmax this is ARPACK's criterion (the authors' ``eigsh(tol=…)``: residual ≤
tol·|θ|) whenever λmax is the largest eigenvalue in magnitude; for λmin it is the same kind of bound as the authors'
second, shifted run (residual ≤ tol·|λmin − shift| with shift ≈ λmax/2), i.e. an absolute error on the scale of
the spectrum, so |λmin/λmax| is known to about ``2·tol``. A λmin near zero is therefore *not* resolved to ``tol``
relative to itself (neither is it by the authors' tool).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

MatVec = Callable[[torch.Tensor], torch.Tensor]
PURPOSES = {"extremes": 0, "topk": 1, "trace": 2, "density": 3}


def probe_seed(seed: int, purpose: str, index: int) -> int:
    """The seed of probe ``index`` for ``purpose`` under the job's ``seed``: independent streams per purpose and
    index, the same on every rank (so probe i can be computed anywhere)."""
    return int(np.random.SeedSequence([int(seed), PURPOSES[purpose], int(index)]).generate_state(1, np.uint64)[0]
               & 0x7FFF_FFFF_FFFF_FFFF)


def random_vector(dim: int, seed: int, kind: str = "gaussian", like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A deterministic length-``dim`` vector: drawn on the CPU in float32 (identical on every device), then moved
    to ``like``'s device and dtype. ``gaussian`` (N(0,1) entries) or ``rademacher`` (±1)."""
    gen = torch.Generator().manual_seed(int(seed))
    if kind == "rademacher":
        v = torch.randint(0, 2, (dim,), generator=gen, dtype=torch.int8).to(torch.float32) * 2 - 1
    elif kind == "gaussian":
        v = torch.randn(dim, generator=gen, dtype=torch.float32)
    else:
        raise ValueError(f"random vector kind {kind!r} is not valid; choose gaussian or rademacher")
    return v if like is None else v.to(like.device, like.dtype)


# ------------------------------------------------------------------------------------------------ Lanczos
@dataclass
class Lanczos:
    """The state of one Lanczos run: basis rows ``V[:m]``, tridiagonal ``alpha``/``beta``, products used."""

    V: torch.Tensor
    alpha: List[float] = field(default_factory=list)
    beta: List[float] = field(default_factory=list)
    steps: int = 0
    exhausted: bool = False          # an invariant subspace was found: the Ritz values are eigenvalues

    def ritz(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values (ascending), the eigenvectors S of T (columns) and the residual estimates β_m·|S[m-1, i]|."""
        m = self.steps
        T = np.diag(np.asarray(self.alpha[:m], dtype=np.float64))
        if m > 1:
            off = np.asarray(self.beta[:m - 1], dtype=np.float64)
            T += np.diag(off, 1) + np.diag(off, -1)
        theta, S = np.linalg.eigh(T)
        last = 0.0 if self.exhausted else float(self.beta[m - 1])
        return theta, S, np.abs(last * S[m - 1, :])

    def vectors(self, S: np.ndarray) -> torch.Tensor:
        """Ritz vectors (rows) for the columns of ``S``."""
        m = self.steps
        s = torch.as_tensor(np.ascontiguousarray(S.T), dtype=self.V.dtype, device=self.V.device)
        return s @ self.V[:m]


def lanczos(matvec: MatVec, v0: torch.Tensor, max_steps: int,
            stop: Optional[Callable[[Lanczos], bool]] = None, check_every: int = 1) -> Lanczos:
    """Lanczos with full reorthogonalisation (classical Gram–Schmidt, twice) from ``v0``; at most ``max_steps``
    products. ``stop(state)`` is asked every ``check_every`` steps (after the first two) and ends the run when true;
    a breakdown (β ≈ 0: an invariant subspace) ends it too."""
    if max_steps < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_steps}")
    dim = v0.numel()
    steps = min(max_steps, dim)
    norm = float(torch.linalg.vector_norm(v0))
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError("the start vector is zero or not finite")
    V = torch.empty((steps, dim), dtype=v0.dtype, device=v0.device)
    V[0] = v0 / norm
    state = Lanczos(V)
    for j in range(steps):
        w = matvec(V[j])
        if not bool(torch.isfinite(w).all()):
            raise FloatingPointError("a Hessian-vector product is NaN/inf (the loss or its gradient is not finite "
                                     "here)")
        a = float(torch.dot(V[j], w))
        basis = V[:j + 1]
        # Full reorthogonalisation against every basis vector (twice is enough: "twice is enough", Parlett).
        for _ in range(2):
            w -= basis.T @ (basis @ w)
        b = float(torch.linalg.vector_norm(w))
        state.alpha.append(a)
        state.beta.append(b)
        state.steps = j + 1
        scale = max(abs(x) for x in state.alpha) or 1.0
        if b <= 1e-7 * scale * (1.0 if v0.dtype == torch.float64 else 1e3) or j + 1 == dim:
            state.exhausted = True
            break
        if j + 1 < steps:
            V[j + 1] = w / b
        if stop is not None and j >= 1 and (j + 1) % check_every == 0 and stop(state):
            break
    return state


def _scale(theta: np.ndarray) -> float:
    return max(abs(float(theta[0])), abs(float(theta[-1]))) or 1.0


@dataclass
class Extremes:
    """λmax and λmin of one Lanczos run."""

    lmax: float
    lmin: float
    hvps: int                         # Hessian-vector products used
    residual_max: float               # ‖H y − θ y‖ estimates of the two Ritz pairs
    residual_min: float
    converged: bool                   # both within tol·ρ (see the module docstring)


def extreme_eigenvalues(matvec: MatVec, dim: int, tol: float = 1e-2, max_iter: int = 100, seed: int = 0,
                        like: Optional[torch.Tensor] = None) -> Extremes:
    """λmax and λmin from ONE Lanczos run (both ends of the spectrum converge together), started from the Gaussian
    vector of ``seed``. ``tol``: see the module docstring. Not converged after ``max_iter`` products: the best
    Ritz values, ``converged=False``."""
    if tol <= 0:
        raise ValueError(f"tol must be > 0, got {tol}")

    def done(state: Lanczos) -> bool:
        theta, _, res = state.ritz()
        lim = tol * _scale(theta)
        return res[0] <= lim and res[-1] <= lim

    state = lanczos(matvec, random_vector(dim, seed, "gaussian", like), max_iter, done)
    theta, _, res = state.ritz()
    lim = tol * _scale(theta)
    return Extremes(float(theta[-1]), float(theta[0]), state.steps, float(res[-1]), float(res[0]),
                    bool(res[0] <= lim and res[-1] <= lim))


@dataclass
class TopK:
    """The k largest eigenpairs (descending)."""

    values: np.ndarray
    vectors: torch.Tensor             # (k, dim), unit norm, sign fixed so that the sum of entries is ≥ 0
    residuals: np.ndarray
    hvps: int
    converged: bool
    lmin: float = float("nan")        # with_min: the smallest eigenvalue, from the same run
    lmin_residual: float = float("nan")


def top_eigenpairs(matvec: MatVec, dim: int, k: int = 2, tol: float = 1e-3, max_iter: int = 200, seed: int = 0,
                   like: Optional[torch.Tensor] = None, with_min: bool = False) -> TopK:
    """The ``k`` largest (algebraic) eigenpairs from one Lanczos run with full reorthogonalisation, stopped when
    all k Ritz pairs (and, ``with_min``, the smallest one) satisfy the tolerance of the module docstring. One start
    vector finds one vector per eigenvalue: an eigenvalue of multiplicity > 1 appears once (rounding usually
    brings the copies in later)."""
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    if k > dim:
        raise ValueError(f"top_k = {k} exceeds the {dim} parameters of the Hessian")

    def done(state: Lanczos) -> bool:
        if state.steps < k:
            return False
        theta, _, res = state.ritz()
        lim = tol * _scale(theta)
        return bool(np.all(res[-k:] <= lim)) and (not with_min or res[0] <= lim)

    state = lanczos(matvec, random_vector(dim, probe_seed(seed, "topk", 0), "gaussian", like),
                    max(max_iter, k), done)
    theta, S, res = state.ritz()
    k_found = min(k, len(theta))
    order = np.arange(len(theta) - 1, len(theta) - 1 - k_found, -1)
    vecs = state.vectors(S[:, order])
    vecs = vecs / torch.linalg.vector_norm(vecs, dim=1, keepdim=True)
    signs = torch.where(vecs.sum(dim=1) < 0, -1.0, 1.0).to(vecs.dtype)
    lim = tol * _scale(theta)
    ok = bool(np.all(res[order] <= lim)) and k_found == k and (not with_min or res[0] <= lim)
    return TopK(theta[order].copy(), vecs * signs[:, None], res[order].copy(), state.steps, ok,
                float(theta[0]), float(res[0]))


# ------------------------------------------------------------------------------------------------ trace
def hutchinson_samples(matvec: MatVec, dim: int, indices: Sequence[int], seed: int = 0,
                       like: Optional[torch.Tensor] = None) -> List[float]:
    """zᵢᵀ H zᵢ for the Rademacher probes ``indices`` (each an unbiased estimate of tr H)."""
    out = []
    for i in indices:
        z = random_vector(dim, probe_seed(seed, "trace", i), "rademacher", like)
        out.append(float(torch.dot(z.double(), matvec(z).double())))
    return out


def trace_estimate(samples: Sequence[float]) -> Tuple[float, float]:
    """Mean and standard error (sample std / √n; NaN for a single probe) of Hutchinson samples."""
    s = np.asarray(samples, dtype=np.float64)
    if s.size == 0:
        raise ValueError("the trace needs at least one probe (hessian.trace_probes >= 1)")
    err = float(s.std(ddof=1) / math.sqrt(s.size)) if s.size > 1 else float("nan")
    return float(s.mean()), err


# ------------------------------------------------------------------------------------------------ density
def slq_probes(matvec: MatVec, dim: int, indices: Sequence[int], steps: int = 80, seed: int = 0,
               like: Optional[torch.Tensor] = None) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Stochastic Lanczos quadrature (Ghorbani et al. 2019; as PyHessian): for each probe ``indices[i]`` a
    ``steps``-step Lanczos run from a Rademacher vector gives nodes θ_j (Ritz values) and weights τ_j = S[0, j]²
    (they sum to 1): the Gauss quadrature of the probe's spectral measure, whose average over probes estimates
    the eigenvalue density of H."""
    out = []
    for i in indices:
        v = random_vector(dim, probe_seed(seed, "density", i), "rademacher", like)
        state = lanczos(matvec, v, steps)
        theta, S, _ = state.ritz()
        out.append((theta, S[0, :] ** 2))
    return out


@dataclass
class Density:
    grid: np.ndarray
    density: np.ndarray               # integrates to 1 over ``grid``
    sigma: float


def density(probes: Sequence[Tuple[np.ndarray, np.ndarray]], bins: int = 1000, sigma: float = 0.005,
            grid: Optional[np.ndarray] = None) -> Density:
    """The eigenvalue density from SLQ probes: every node a Gaussian of width ``sigma`` × (spread of the nodes)
    weighted by its τ, averaged over probes, on ``bins`` points covering all nodes ± 8 widths (so the Gaussians'
    tails are inside and the density integrates to 1 up to the trapezoid rule)."""
    if not probes:
        raise ValueError("the density needs at least one probe (hessian.density_probes >= 1)")
    nodes = np.concatenate([p[0] for p in probes])
    weights = np.concatenate([p[1] for p in probes]) / len(probes)
    lo, hi = float(nodes.min()), float(nodes.max())
    width = sigma * max(hi - lo, abs(hi), abs(lo), 1e-12)
    if grid is None:
        grid = np.linspace(lo - 8 * width, hi + 8 * width, bins)
    z = (grid[:, None] - nodes[None, :]) / width
    dens = (np.exp(-0.5 * z ** 2) / (width * math.sqrt(2 * math.pi))) @ weights
    return Density(grid, dens, width)


def first_moments(probes: Sequence[Tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Σ_j τ_j θ_j per probe: q_iᵀ H q_i for the unit probe q_i, so their mean estimates tr(H)/P."""
    return np.array([float(np.dot(w, t)) for t, w in probes])
