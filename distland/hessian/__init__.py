"""Second-order quantities: Hessian-vector products of the mean loss and Krylov estimates of its spectrum.

- :mod:`.operator` — :class:`HessianOperator` (``H v`` over a data subset, eval mode, chosen parameters);
- :mod:`.rewrite` — the model as the products differentiate it: convolutions whose derivatives of every order are
  single native kernels, eval-mode BatchNorm folded inside the graph (same function, same parameters);
- :mod:`.krylov` — Lanczos λmax/λmin from one run, top-k eigenpairs, Hutchinson trace, SLQ density;
- :mod:`.job` — ``distland hessian CONFIG`` (imported by the CLI only).

Pure functions of (model, data, vector): no files, no MPI outside :mod:`.job`.
"""
from .krylov import (Density, Extremes, TopK, density, extreme_eigenvalues, first_moments, hutchinson_samples,
                     lanczos, probe_seed, random_vector, slq_probes, top_eigenpairs, trace_estimate)
from .operator import HessianError, HessianOperator, make_batches, select_parameters, summed_loss

__all__ = ["Density", "Extremes", "TopK", "density", "extreme_eigenvalues", "first_moments", "hutchinson_samples",
           "lanczos", "probe_seed", "random_vector", "slq_probes", "top_eigenpairs", "trace_estimate",
           "HessianError", "HessianOperator", "make_batches", "select_parameters", "summed_loss"]
