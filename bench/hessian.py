"""Hessian-vector products and the λmax/λmin of one Hessian-map point: distland vs PyHessian vs the authors' strategy.

One run, interleaved rounds (every variant once per round, medians reported), on ResNet-20 and CIFAR-shaped
synthetic images (random labels, non-trivial BatchNorm statistics), eval mode:

1. one HVP (distland, ≥ 2-dim weights, graphs cached) vs one distland forward point (the surface engine); also
   timed: the same product recomputing the first-order graph (``cache: off``) and through PyTorch's own double
   backward of the unrewritten model (``fast=False``), which is what the fast path (rewrite.py) replaces;
2. one HVP vs PyHessian's (``pip install pyhessian``; bench-only, not a dependency: its product reuses one
   full-batch first-order graph, over all parameters — so distland is timed over all parameters for that ratio)
   and vs the paper authors' strategy (their ``hess_vec_prod`` as they describe it: numpy vector → new tensors per
   product, forward + first backward redone per batch of 128, the product summed into ``.grad``, copied back to
   numpy);
3. λmax and λmin at tolerance 1e-2: distland's one Lanczos run vs the authors' two ``scipy.sparse.linalg.eigsh``
   runs (the second on H − 0.51·λmax·I), products counted, values compared.

    python bench/hessian.py [--images 1024] [--rounds 3] [--threads 2] [--skip-eigs]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from distland import directions as D
from distland.config import EngineConfig
from distland.engine import choose, largest_activation
from distland.evaluate import SurfaceEvaluator
from distland.hessian import HessianOperator, extreme_eigenvalues, make_batches
from distland.models import build_model


class AuthorsHVP:
    """The authors' per-product strategy, re-written from their description (not their code)."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 128) -> None:
        self.model = model.eval()
        self.params = [p for p in model.parameters() if p.dim() > 1]
        self.x, self.y, self.batch = x, y, batch
        self.dim = sum(p.numel() for p in self.params)
        self.products = 0

    def __call__(self, vec: np.ndarray) -> np.ndarray:
        vec = np.asarray(vec, dtype=np.float32).reshape(-1)
        # new tensors per product from the numpy vector
        vs, i = [], 0
        for p in self.params:
            vs.append(torch.from_numpy(vec[i:i + p.numel()].copy()).view_as(p))
            i += p.numel()
        self.model.zero_grad()
        for s in range(0, len(self.y), self.batch):
            out = self.model(self.x[s:s + self.batch])
            loss = F.cross_entropy(out, self.y[s:s + self.batch]) * (len(self.y[s:s + self.batch]) / len(self.y))
            grads = torch.autograd.grad(loss, self.params, create_graph=True)
            prod = sum((g * v).sum() for g, v in zip(grads, vs))
            prod.backward()
        self.products += 1
        return np.concatenate([p.grad.detach().cpu().numpy().ravel() for p in self.params]).astype(np.float64)


def authors_extremes(hvp: AuthorsHVP, tol: float) -> Dict[str, float]:
    """Two eigsh runs: the largest-magnitude eigenvalue, then the largest of H − shift·I with shift = 0.51·λmax."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    start = hvp.products
    op = LinearOperator((hvp.dim, hvp.dim), matvec=hvp, dtype=np.float64)
    lmax = float(eigsh(op, k=1, tol=tol, return_eigenvectors=False)[0])
    shift = 0.51 * lmax
    shifted = LinearOperator((hvp.dim, hvp.dim), matvec=lambda v: hvp(v) - shift * np.asarray(v).reshape(-1),
                             dtype=np.float64)
    lmin = float(eigsh(shifted, k=1, tol=tol, return_eigenvectors=False)[0]) + shift
    if lmax < 0:   # the largest magnitude was the most negative one
        lmax, lmin = lmin, lmax
    return {"lmax": lmax, "lmin": lmin, "hvps": hvp.products - start}


def kernel_floor(model: torch.nn.Module, x: torch.Tensor, reps: int = 5) -> Dict[str, float]:
    """The convolution kernels an exact product cannot avoid, timed on the model's own conv shapes (one batch).

    Per convolution a product needs two forward convolutions, two backward-data and two weight-gradient kernels
    (the first layer, whose input needs no gradient: one forward and one weight-gradient); a forward pass needs
    one forward convolution. Returns the summed seconds of each and their ratio, the floor of HVP / forward."""
    seen: List[tuple] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, i[0].detach(), o.detach())))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    aten = torch.ops.aten

    def best(f: Callable[[], object]) -> float:
        f()
        out = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            out.append(time.perf_counter() - t0)
        return min(out)

    fwd = hvp = 0.0
    for k, (m, xi, yo) in enumerate(seen):
        geo = (list(m.stride), list(m.padding), list(m.dilation), False, [0, 0], m.groups)
        w = m.weight.detach()
        t_f = best(lambda: aten.convolution(xi, w, None, *geo))
        t_d = best(lambda: aten.convolution_backward(yo, xi, w, None, *geo, [True, False, False]))
        t_w = best(lambda: aten.convolution_backward(yo, xi, w, None, *geo, [False, True, False]))
        fwd += t_f
        hvp += (t_f + t_w) if k == 0 else 2 * (t_f + t_d + t_w)
    return {"forward": fwd, "hvp": hvp, "ratio": hvp / fwd}


def timed(rounds: int, variants: Dict[str, Callable[[], object]]) -> Dict[str, List[float]]:
    out: Dict[str, List[float]] = {k: [] for k in variants}
    for r in range(rounds):
        names = list(variants)
        names = names[r % len(names):] + names[:r % len(names)]   # rotate the order between rounds
        for name in names:
            t0 = time.perf_counter()
            variants[name]()
            out[name].append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-2)
    ap.add_argument("--skip-eigs", action="store_true", help="only the products")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.images, 3, 32, 32)
    y = torch.randint(0, 10, (args.images,))
    model = build_model(args.model).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    print(f"{args.model}, {args.images} CIFAR-shaped images, torch threads {torch.get_num_threads()}")

    # distland forward point (the surface engine as a sweep runs it, eager)
    ref = D.reference_weights(model)
    dx, dy = D.make_random(ref, 0, "filter", "biasbn", 2)
    eng = choose(EngineConfig(threads=torch.get_num_threads(), compile="off"),
                 activation_bytes=largest_activation(model, x))
    ev = SurfaceEvaluator(model, ref, [dx, dy], {"train": (x, y)}, eng)

    def clone() -> torch.nn.Module:
        c = build_model(args.model)
        c.load_state_dict(model.state_dict())
        return c.eval()

    cl = clone().to(memory_format=torch.channels_last)
    ours = HessianOperator(cl, make_batches(x, y, 128, channels_last=True), params="ndim2", cache="auto")
    ours_all = HessianOperator(clone().to(memory_format=torch.channels_last),
                               make_batches(x, y, 128, channels_last=True), params="all", cache="auto")
    plain = HessianOperator(clone().to(memory_format=torch.channels_last),
                            make_batches(x, y, 128, channels_last=True), params="ndim2", cache="auto", fast=False)
    recompute = HessianOperator(clone().to(memory_format=torch.channels_last),
                                make_batches(x, y, 128, channels_last=True), params="ndim2", cache="off")
    v = torch.randn(ours.dim)
    v_all = torch.randn(ours_all.dim)
    t0 = time.perf_counter()
    ours.matvec(v)
    first = time.perf_counter() - t0
    ours_all.matvec(v_all)
    plain.matvec(v)
    print(f"fast path in use: {ours.net is not ours.model}; products agree with PyTorch's double backward to "
          f"{float((ours.matvec(v) - plain.matvec(v)).norm() / plain.matvec(v).norm()):.1e} (float32)")
    print(f"distland HVP: {ours.dim} weights, graphs cached: {ours._cache_ok}; first product (builds the graphs) "
          f"{first:.2f} s")
    authors = AuthorsHVP(clone(), x, y)
    v_np = v.numpy().astype(np.float64)
    variants: Dict[str, Callable[[], object]] = {
        "distland forward point": lambda: ev.evaluate((0.1, -0.1)),
        "distland HVP (ndim2)": lambda: ours.matvec(v),
        "distland HVP (all params)": lambda: ours_all.matvec(v_all),
        "distland HVP (recompute)": lambda: recompute.matvec(v),
        "PyTorch double bwd (cached)": lambda: plain.matvec(v),
        "authors' HVP (ndim2)": lambda: authors(v_np),
    }
    try:
        from pyhessian import hessian as PyHessian
        from pyhessian.utils import hessian_vector_product

        ph = PyHessian(clone(), torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        pv = [torch.randn_like(p) for p in ph.params]
        variants["PyHessian HVP (all params)"] = lambda: hessian_vector_product(ph.gradsH, ph.params, pv)
    except ImportError as e:
        print(f"PyHessian not installed ({e}); pip install pyhessian to compare")
    times = timed(args.rounds, variants)
    med = {k: statistics.median(t) for k, t in times.items()}
    for k, t in times.items():
        print(f"  {k:<28} median {med[k]:8.3f} s   ({', '.join(f'{s:.3f}' for s in t)})")
    fwd, hvp = med["distland forward point"], med["distland HVP (ndim2)"]
    print(f"HVP / forward point: {hvp / fwd:.2f}x (target <= 5x)")
    print(f"fast path: {med['PyTorch double bwd (cached)'] / hvp:.2f}x faster than PyTorch's double backward; "
          f"cached graphs {med['distland HVP (recompute)'] / hvp:.2f}x faster than recomputing them")
    authors_s = med["authors' HVP (ndim2)"]
    print(f"authors' HVP / distland HVP: {authors_s / hvp:.2f}x faster "
          "(target >= 3x)")
    if "PyHessian HVP (all params)" in med:
        print(f"PyHessian HVP / distland HVP (all params): "
              f"{med['PyHessian HVP (all params)'] / med['distland HVP (all params)']:.2f}x faster (target >= 3x)")
    floor = kernel_floor(cl, make_batches(x, y, 128, channels_last=True)[0][0])
    print(f"kernel floor (this machine's conv kernels on ResNet's shapes, one batch of 128): a product needs "
          f"{floor['hvp'] * 1e3:.0f} ms of convolution kernels, a forward pass {floor['forward'] * 1e3:.0f} ms: "
          f"an exact HVP cannot be under {floor['ratio']:.2f}x a forward pass here; distland's is at "
          f"{hvp / fwd / floor['ratio']:.2f}x that floor")
    if args.skip_eigs:
        return
    ours_all.release()
    plain.release()
    recompute.release()
    variants.clear()   # drops PyHessian's graph
    t0 = time.perf_counter()
    ext = extreme_eigenvalues(ours, ours.dim, tol=args.tol, max_iter=200, seed=0, like=ours.params[0])
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = authors_extremes(authors, args.tol)
    t_theirs = time.perf_counter() - t0
    scale = max(abs(theirs["lmax"]), abs(theirs["lmin"]))
    print(f"λmax/λmin at tol {args.tol}: distland {ext.lmax:.5g} / {ext.lmin:.5g} in {ext.hvps} products, "
          f"{t_ours:.1f} s (converged: {ext.converged}); authors {theirs['lmax']:.5g} / {theirs['lmin']:.5g} in "
          f"{theirs['hvps']} products, {t_theirs:.1f} s")
    print(f"one map point: {t_theirs / t_ours:.2f}x faster (target >= 3x); differences "
          f"{abs(ext.lmax - theirs['lmax']) / scale:.2e} and {abs(ext.lmin - theirs['lmin']) / scale:.2e} "
          f"of max|λ| (tolerance {args.tol})")


if __name__ == "__main__":
    main()
