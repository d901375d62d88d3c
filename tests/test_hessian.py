"""The Hessian: products against the dense Hessian, Lanczos against eigh, Hutchinson and SLQ against the exact trace,
bad inputs, the `distland hessian` command, and mpirun -np 2 equal to the serial run.

The dense reference is a small MLP with BatchNorm (1,776 weights in ≥ 2-dim tensors, non-trivial running statistics) on
64 digits, in float64 so the dense Hessian from torch.autograd.functional is exact to rounding; the conv path (the
demo CNN) is checked against torch.func's forward-over-reverse product.
"""
from __future__ import annotations

import copy
import math
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from conftest import make_model, write_yaml
from distland.data import load_split
from distland.hessian import (HessianError, HessianOperator, density, extreme_eigenvalues, first_moments,
                              hutchinson_samples, make_batches, slq_probes, top_eigenpairs, trace_estimate)

N = 64


class BNNet(nn.Module):
    """1,776 weights in ≥ 2-dim tensors, BatchNorm with non-trivial running statistics in between."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.BatchNorm1d(24), nn.Tanh(), nn.Linear(24, 10))

    def forward(self, x):
        return self.net(x)


def bn_net() -> nn.Module:
    from conftest import randomize_batchnorm

    torch.manual_seed(3)
    return randomize_batchnorm(BNNet(), 4).double().eval()


@pytest.fixture(scope="module")
def problem():
    """(model in float64, batches of 24 — uneven on purpose —, dense Hessian of the ≥2-dim weights)."""
    model = bn_net()
    x, y = load_split("digits", "train", N)
    x = x.double()
    batches = make_batches(x, y, 24)
    names = [k for k, p in model.named_parameters() if p.dim() >= 2]
    params = dict(model.named_parameters())
    shapes = [params[k].shape for k in names]
    sizes = [params[k].numel() for k in names]
    flat0 = torch.cat([params[k].detach().reshape(-1) for k in names])

    def loss(flat):
        sub = {k: t.view(s) for k, t, s in zip(names, flat.split(sizes), shapes)}
        out = functional_call(model, ({**{k: v.detach() for k, v in params.items()}, **sub},
                                      dict(model.named_buffers())), (x,))
        return nn.functional.cross_entropy(out, y)

    dense = torch.autograd.functional.hessian(loss, flat0, vectorize=True)
    return model, batches, dense


def test_hvp_equals_dense_hessian_times_vector(problem):
    model, batches, dense = problem
    assert 1000 < dense.shape[0] < 5000 and torch.allclose(dense, dense.T, atol=1e-12)
    v = torch.randn(dense.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for cache in ("off", "on"):
        op = HessianOperator(model, batches, cache=cache)
        try:
            assert op.dim == dense.shape[0] and op.n == N
            got = op.matvec(v)
            again = op.matvec(v)   # the cached graphs are reused: same answer
        finally:
            op.release()
        torch.testing.assert_close(got, dense @ v, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(again, got, rtol=0, atol=0)
        assert op.products == 2


def test_cached_graphs_follow_the_weights_after_invalidate(problem):
    model, batches, _ = problem
    model = copy.deepcopy(model)
    op = HessianOperator(model, batches, cache="on")
    v = torch.ones(op.dim, dtype=torch.float64)
    before = op.matvec(v)
    with torch.no_grad():
        for p in op.params:
            p.mul_(1.5)
    with pytest.raises(RuntimeError, match="inplace"):   # autograd refuses a graph of the old weights
        op.matvec(v)
    op.invalidate()
    after = op.matvec(v)
    fresh = HessianOperator(model, batches, cache="off").matvec(v)
    op.release()
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, fresh, rtol=1e-12, atol=1e-14)


def test_hvp_in_float32_to_float32_precision(problem):
    _, _, dense = problem
    model = bn_net().float()
    x, y = load_split("digits", "train", N)
    op = HessianOperator(model, make_batches(x, y, 32))
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(2))
    ref = dense @ v.double()
    err = float(torch.linalg.vector_norm(op.matvec(v).double() - ref) / torch.linalg.vector_norm(ref))
    assert err < 1e-5, err
    op.release()
    assert all(p.requires_grad for p in model.parameters())   # released: the frozen 1-D tensors are back


def test_hvp_through_convolutions_equals_forward_over_reverse():
    # The conv/BatchNorm2d path, against an independent computation: torch.func's jvp of the gradient.
    from torch.func import grad, jvp

    model = make_model("democnn", seed=3, width=8).double().eval()
    x, y = load_split("digits", "train", 40)
    x = x.double()
    op = HessianOperator(model, make_batches(x, y, 16))
    assert 1000 < op.dim < 5000
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = op.matvec(v)
    op.release()
    params = {k: p.detach() for k, p in model.named_parameters()}
    names = [k for k, p in params.items() if p.dim() >= 2]

    def loss(sub):
        out = functional_call(model, ({**params, **sub}, dict(model.named_buffers())), (x,))
        return nn.functional.cross_entropy(out, y)

    tangent = {k: t.view(params[k].shape) for k, t in zip(names, v.split([params[k].numel() for k in names]))}
    _, hv = jvp(grad(loss), ({k: params[k] for k in names},), (tangent,))
    torch.testing.assert_close(got, torch.cat([hv[k].reshape(-1) for k in names]), rtol=1e-9, atol=1e-12)


def test_one_lanczos_run_gives_both_extremes_and_topk_like_eigh(problem):
    model, batches, dense = problem
    evals, evecs = torch.linalg.eigh(dense)
    lmax, lmin = float(evals[-1]), float(evals[0])
    assert lmin < 0 < lmax            # an indefinite Hessian: both ends mean something
    op = HessianOperator(model, batches, cache="on")
    ext = extreme_eigenvalues(op, op.dim, tol=1e-9, max_iter=op.dim, seed=5, like=op.params[0])
    assert ext.converged and ext.hvps == op.products < op.dim
    assert abs(ext.lmax - lmax) <= 1e-4 * abs(lmax)
    assert abs(ext.lmin - lmin) <= 1e-4 * abs(lmin)
    top = top_eigenpairs(op, op.dim, k=4, tol=1e-9, max_iter=op.dim, seed=5, like=op.params[0])
    op.release()
    assert top.converged
    np.testing.assert_allclose(top.values, evals[-4:].flip(0).numpy(), rtol=1e-4)
    for i in range(4):   # each vector is the eigenvector (up to sign, which is fixed: entries sum >= 0)
        cos = abs(float(top.vectors[i] @ evecs[:, -1 - i]))
        assert cos > 1 - 1e-6 and float(top.vectors[i].sum()) >= 0
    # deterministic: the same seed gives the same numbers (a map computed on any rank agrees)
    op2 = HessianOperator(model, batches, cache="off")
    ext2 = extreme_eigenvalues(op2, op2.dim, tol=1e-9, max_iter=op2.dim, seed=5, like=op2.params[0])
    op2.release()
    assert (ext2.lmax, ext2.lmin, ext2.hvps) == (ext.lmax, ext.lmin, ext.hvps)


def test_loose_tolerance_means_residual_within_tol_of_the_spectral_scale(problem):
    model, batches, dense = problem
    evals = torch.linalg.eigvalsh(dense)
    scale = float(evals.abs().max())
    op = HessianOperator(model, batches)
    ext = extreme_eigenvalues(op, op.dim, tol=1e-2, max_iter=200, seed=0, like=op.params[0])
    op.release()
    assert ext.converged and ext.hvps < 200
    assert max(ext.residual_max, ext.residual_min) <= 1e-2 * max(abs(ext.lmax), abs(ext.lmin))
    assert abs(ext.lmax - float(evals[-1])) <= 1e-2 * scale
    assert abs(ext.lmin - float(evals[0])) <= 1e-2 * scale


def test_hutchinson_trace_within_three_standard_errors(problem):
    model, batches, dense = problem
    exact = float(torch.trace(dense))
    op = HessianOperator(model, batches, cache="on")
    samples = hutchinson_samples(op, op.dim, range(40), seed=0, like=op.params[0])
    op.release()
    tr, err = trace_estimate(samples)
    assert err > 0 and abs(tr - exact) <= 3 * err, (tr, err, exact)
    # the estimate is not trivially wide: the standard error is a fraction of the trace
    assert err < 0.5 * abs(exact)


def test_slq_density_integrates_to_one_and_its_mean_is_trace_over_p(problem):
    model, batches, dense = problem
    P = dense.shape[0]
    op = HessianOperator(model, batches, cache="on")
    probes = slq_probes(op, op.dim, range(6), steps=30, seed=0, like=op.params[0])
    op.release()
    for nodes, weights in probes:
        assert len(nodes) == 30 and abs(weights.sum() - 1) < 1e-10
    d = density(probes, bins=4000)
    assert abs(np.trapezoid(d.density, d.grid) - 1) < 1e-3
    moment = np.trapezoid(d.grid * d.density, d.grid)
    per_probe = first_moments(probes)
    assert abs(moment - per_probe.mean()) < 1e-3 * max(abs(moment), 1e-12) + 1e-6
    err = per_probe.std(ddof=1) / math.sqrt(len(per_probe))
    assert abs(per_probe.mean() - float(torch.trace(dense)) / P) <= 3 * err
    # the extremes of the nodes bracket the spectrum's ends closely after 30 steps
    evals = torch.linalg.eigvalsh(dense)
    assert max(p[0].max() for p in probes) <= float(evals[-1]) * (1 + 1e-8)


def test_probes_are_indexed_so_ranks_can_split_them(problem):
    model, batches, _ = problem
    op = HessianOperator(model, batches, cache="on")
    whole = hutchinson_samples(op, op.dim, range(4), seed=7, like=op.params[0])
    split = (hutchinson_samples(op, op.dim, [0, 2], seed=7, like=op.params[0]),
             hutchinson_samples(op, op.dim, [1, 3], seed=7, like=op.params[0]))
    op.release()
    assert whole == [split[0][0], split[1][0], split[0][1], split[1][1]]
    assert len(set(whole)) == 4


class ScaleOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(64))

    def forward(self, x):
        return (x.flatten(1) * self.scale)[:, :10]


def test_bad_inputs_are_clear_errors():
    x, y = load_split("digits", "train", 16)
    with pytest.raises(HessianError, match="no parameters with >= 2 dims.*hessian.params: all"):
        HessianOperator(ScaleOnly(), make_batches(x, y, 8))
    op = HessianOperator(ScaleOnly(), make_batches(x, y, 8), params="all")   # with all: fine
    assert op.dim == 64
    op.release()
    with pytest.raises(HessianError, match="at least one sample"):
        HessianOperator(make_model("democnn"), make_batches(x[:0], y[:0], 8))
    with pytest.raises(HessianError, match="hessian.params"):
        HessianOperator(make_model("democnn"), make_batches(x, y, 8), params="some")
    with pytest.raises(HessianError, match="loss 'hinge' is not valid"):
        HessianOperator(make_model("democnn"), make_batches(x, y, 8), loss="hinge")


def test_mse_loss_plugs_in(problem):
    x, y = load_split("digits", "train", 16)
    model = make_model("democnn", width=4).double()
    op = HessianOperator(model, make_batches(x.double(), y, 8), loss="mse")
    v = torch.randn(op.dim, dtype=torch.float64)
    hv = op.matvec(v)
    op.release()
    assert torch.isfinite(hv).all() and float(v @ hv) != 0.0


def test_config_keys_are_strict(tmp_path):
    from distland.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="valid keys in hessian"):
        load_config(None, ["hessian.topk=3"])
    with pytest.raises(ConfigError, match="hessian.params"):
        load_config(None, ["hessian.params=bias"])
    with pytest.raises(ConfigError, match="hessian.tol"):
        load_config(None, ["hessian.tol=0"])
    for bad in ("[0,5]", "[1,1]", "[]", "[-1,0]"):
        with pytest.raises(ConfigError, match="hessian.axes"):
            load_config(None, [f"hessian.axes={bad}"])


CLI_KEYS = {"model": "democnn", "model_args": {"width": 4}, "data": {"name": "digits", "max_samples": 48},
            "engine": {"threads": 1, "device": "cpu"}, "sweep": {"progress": False},
            "hessian": {"top_k": 3, "trace_probes": 6, "density_probes": 3, "lanczos_steps": 12, "tol": 1e-2,
                        "max_iter": 40}}


def _cli(tmp_path, name, extra=(), np_=0):
    from test_mpi import _env, _need

    cfg = write_yaml(tmp_path / f"{name}.yaml", {**CLI_KEYS, "output": str(tmp_path / f"{name}.h5")})
    cmd = [sys.executable, "-m", "distland", "hessian", str(cfg), "--no-plot", *extra]
    if np_:
        cmd = [_need("mpirun"), "-np", str(np_), *cmd]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)


def test_cli_writes_spectrum_and_direction_file(tmp_path):
    from distland import directions as dirs
    from distland.hessian.job import read

    r = _cli(tmp_path, "job", ["--set", "hessian.direction_norm=unit"])
    assert r.returncode == 0, r.stderr
    assert "top-3 eigenvalues" in r.stdout and "trace" in r.stdout and "±" in r.stdout
    out = tmp_path / "job_hessian.h5"
    got = read(str(out))
    assert len(got["eigenvalues"]) == 3 and np.all(np.diff(got["eigenvalues"]) <= 0)
    assert got["trace_samples"].shape == (6,) and got["trace_stderr"] > 0
    assert abs(np.trapezoid(got["density/density"], got["density/grid"]) - 1) < 1e-2
    # the top-2 eigenvectors are a direction file: unit norm, orthogonal, zero on 1-D tensors
    model = make_model("democnn", width=4)
    x, y = dirs.load_file(out, dirs.reference_weights(model), 2)
    fx = torch.cat([t.reshape(-1).double() for t in x.values()])
    fy = torch.cat([t.reshape(-1).double() for t in y.values()])
    assert abs(float(fx.norm()) - 1) < 1e-5 and abs(float(fy.norm()) - 1) < 1e-5 and abs(float(fx @ fy)) < 1e-4
    assert all(not t.any() for k, t in x.items() if t.dim() <= 1)
    # any chosen eigenpairs as the axes: directions/x is eigenvector 2, directions/y eigenvector 0
    assert _cli(tmp_path, "job", ["--overwrite", "--set", "hessian.axes=[2,0]"]).returncode == 0
    with h5py.File(out, "r") as f:
        assert list(f["directions"].attrs["eigenpairs"]) == [2, 0]
        for axis, i in (("x", 2), ("y", 0)):
            for k in f[f"eigenvectors/{i}"]:
                np.testing.assert_array_equal(f[f"directions/{axis}/{k}"][()], f[f"eigenvectors/{i}/{k}"][()])
    # an existing result is never replaced silently
    again = _cli(tmp_path, "job")
    assert again.returncode == 2 and "--overwrite" in again.stderr and again.stderr.count("\n") == 1


def test_info_shows_the_spectrum_at_the_minimum_next_to_its_surface(tmp_path):
    from distland.cli import main
    from distland.info import describe_surface

    assert _cli(tmp_path, "job").returncode == 0
    hess = tmp_path / "job_hessian.h5"
    alone = describe_surface(str(hess))   # `distland info X_hessian.h5`: the result file itself
    assert "Hessian at θ*" in alone and "top-3 eigenvalues" in alone and "trace" in alone and "±" in alone
    assert main(["surface", str(tmp_path / "job.yaml"), "--set", "grid.x=[-1,1,3]"]) == 0
    text = describe_surface(str(tmp_path / "job.h5"))
    assert "Hessian at θ* (" + str(hess) + ")" in text and "λmax" in text and "trace" in text
    # A spectrum of another checkpoint is not passed off as this surface's.
    for path, digest in ((tmp_path / "job.h5", "a" * 64), (hess, "b" * 64)):
        with h5py.File(path, "a") as f:
            f.attrs["checkpoint_sha256"] = digest
    text = describe_surface(str(tmp_path / "job.h5"))
    assert "Hessian of another checkpoint" in text and "trace" not in text.split("another checkpoint")[1]


@pytest.mark.mpi
def test_mpirun_np2_equals_serial(tmp_path):
    serial = _cli(tmp_path, "serial")
    assert serial.returncode == 0, serial.stderr
    par = _cli(tmp_path, "par", np_=2)
    assert par.returncode == 0, par.stderr
    assert par.stdout.count("distland hessian:") == 1
    with h5py.File(tmp_path / "serial_hessian.h5", "r") as a, h5py.File(tmp_path / "par_hessian.h5", "r") as b:
        assert b.attrs["nranks"] == 2
        for name in ("eigenvalues", "trace_samples", "density/nodes", "density/weights", "density/density"):
            np.testing.assert_allclose(b[name][()], a[name][()], rtol=1e-6, atol=1e-12, err_msg=name)
        assert b.attrs["hvps"] == a.attrs["hvps"]
