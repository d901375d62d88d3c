"""The Hessian fast path (distland/hessian/rewrite.py): convolutions with native-kernel derivatives of every order and
eval-mode BatchNorm folded inside the graph must give PyTorch's own products (float64, to rounding), share the
model's parameters, and step aside whenever they cannot be trusted."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import make_model, randomize_batchnorm
from distland.hessian import HessianOperator, make_batches
from distland.hessian import rewrite as R


class Mixed(nn.Module):
    """Every convolution case the rewrite handles or must leave alone."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1, bias=False)          # → BN: folded
        self.bn_a = nn.BatchNorm2d(6)
        self.b = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=2)  # strided, grouped, with bias → BN: folded
        self.bn_b = nn.BatchNorm2d(6)
        self.c = nn.Conv2d(6, 4, 3, padding=2, dilation=2)           # dilated, no BN
        self.d = nn.Conv2d(4, 4, 3, padding="same")                 # string padding: left as a module
        self.e = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")   # not zero padding: left as a module
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn_a(self.a(x)))
        x = torch.tanh(self.bn_b(self.b(x)))
        x = torch.relu(self.e(self.d(self.c(x))))
        return self.head(x.mean((2, 3)))


def mixed() -> nn.Module:
    torch.manual_seed(5)
    return randomize_batchnorm(Mixed(), 6).double().eval()


def images(n: int = 6, size: int = 8) -> tuple:
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, 3, size, size, generator=g, dtype=torch.float64), torch.randint(0, 5, (n,), generator=g)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_passes_gradcheck_and_gradgradcheck(dims):
    g = torch.Generator().manual_seed(dims)
    size = 7 if dims < 3 else 4   # 3-D gradgradcheck is slow at 7³
    x = torch.randn(2, 4, *[size] * dims, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, *[3] * dims, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return R.conv(x, w, b, [2] * dims, [1] * dims, [1] * dims, 2)

    ref = getattr(nn.functional, f"conv{dims}d")(x, w, b, 2, 1, 1, 2)
    torch.testing.assert_close(f(x, w, b), ref, rtol=0, atol=0)
    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_rewrite_shares_parameters_folds_batchnorm_and_leaves_unusual_convs():
    model = mixed()
    net = R.rewrite(model)
    assert net is not None
    ours, theirs = dict(net.named_parameters()), dict(model.named_parameters())
    assert set(ours) == set(theirs) and all(ours[k] is theirs[k] for k in ours)   # same objects, same names
    called = {str(n.target) for n in net.graph.nodes if n.op == "call_module"}
    assert called == {"d", "e", "head"}       # BNs no longer run; unusual convs still do
    fns = [n.target for n in net.graph.nodes if n.op == "call_function"]
    assert fns.count(R.conv_bn) == 2 and fns.count(R.conv) == 1
    x, _ = images()
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("params", ["ndim2", "all"])
@pytest.mark.parametrize("which", ["mixed", "resnet20"])
def test_fast_products_equal_pytorchs_double_backward(which, params):
    model = mixed() if which == "mixed" else make_model("resnet20", seed=2).double()
    x, y = images(6, 8)
    if which == "resnet20":
        y = y % 10
    batches = make_batches(x, y, 4)   # uneven batches on purpose
    fast = HessianOperator(model, batches, params=params, cache="on")
    assert fast.net is not model       # the rewrite is in use
    v = torch.randn(fast.dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    got = fast.matvec(v)
    fast.release()
    plain = HessianOperator(model, batches, params=params, cache="off", fast=False)
    assert plain.net is model
    ref = plain.matvec(v)
    plain.release()
    assert float(ref.norm()) > 0
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
    if params == "all":   # the BN scale and shift rows are in it, and not zero
        names = fast.names
        bn_rows = [t for k, t in zip(names, got.split(fast.sizes)) if ".weight" in k and t.dim() == 1]
        assert bn_rows and any(float(t.abs().max()) > 0 for t in bn_rows)


def test_moving_the_weights_and_statistics_moves_the_rewrite():
    model = mixed()
    x, y = images()
    op = HessianOperator(model, make_batches(x, y, 3), cache="on")
    v = torch.ones(op.dim, dtype=torch.float64)
    op.matvec(v)
    with torch.no_grad():
        model.a.weight.mul_(1.3)
        model.bn_b.running_var.mul_(2.0)
    op.invalidate()
    moved = op.matvec(v)
    op.release()
    ref = HessianOperator(model, make_batches(x, y, 3), cache="off", fast=False)
    torch.testing.assert_close(moved, ref.matvec(v), rtol=1e-9, atol=1e-12)
    ref.release()


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if float(h.sum()) > 1e9:   # control flow on values: torch.fx cannot trace it
            h = h * 0
        return self.head(h.mean((2, 3)))


def test_convs_and_batchnorms_with_hooks_keep_running_as_modules():
    # weight_norm's pre-hook recomputes conv.weight from weight_g and weight_v at every call: the rewrite must not
    # read a stale weight (the derivatives would go to the wrong tensors).
    model = mixed()
    model.a = nn.utils.weight_norm(model.a)
    model.bn_b.register_forward_hook(lambda m, i, o: None)
    net = R.rewrite(model)
    called = {str(n.target) for n in net.graph.nodes if n.op == "call_module"}
    assert {"a", "bn_a", "bn_b"} <= called and "b" not in called
    x, y = images()
    fast = HessianOperator(model, make_batches(x, y, 3), params="all")
    plain = HessianOperator(model, make_batches(x, y, 3), params="all", fast=False)
    v = torch.randn(fast.dim, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    torch.testing.assert_close(fast.matvec(v), plain.matvec(v), rtol=1e-9, atol=1e-12)


def test_untraceable_models_and_disagreeing_rewrites_run_as_they_are(monkeypatch):
    model = DataDependent().double().eval()
    x, _ = images()
    assert R.rewrite(model) is None and R.for_products(model, x) is model
    # A rewrite whose outputs differ from the model's is not used (and says so).
    good = mixed()
    monkeypatch.setattr(R, "conv_bn", lambda *a: R.conv(*a[:3], *a[-4:]))   # "forgets" the BatchNorm
    with pytest.warns(UserWarning, match="changed the model's outputs"):
        assert R.for_products(good, x) is good


def test_rewritten_products_in_float32_stay_at_float32_precision():
    model = make_model("resnet20", seed=2)
    x, y = images(8, 8)
    x = x.float()
    y = y % 10
    v = torch.randn(sum(p.numel() for p in model.parameters() if p.dim() >= 2),
                    generator=torch.Generator().manual_seed(9))
    op = HessianOperator(model, make_batches(x, y, 8))
    got = op.matvec(v).double()
    op.release()
    m64 = copy.deepcopy(model).double()
    ref = HessianOperator(m64, make_batches(x.double(), y, 8), fast=False).matvec(v.double())
    assert float((got - ref).norm() / ref.norm()) < 1e-4


@pytest.mark.parametrize("name", ["resnet20_noshort", "vgg9", "densenet121"])
def test_zoo_models_are_rewritten_and_give_the_same_products(name):
    # Plain stacks, VGG's conv→BN→ReLU, DenseNet's BN→ReLU→conv (pre-activation: nothing to fold, convs still fast).
    model = make_model(name, seed=1).double()
    g = torch.Generator().manual_seed(11)
    x, y = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64), torch.tensor([1, 3])
    fast = HessianOperator(model, make_batches(x, y, 2), cache="off")
    assert fast.net is not model
    v = torch.randn(fast.dim, generator=g, dtype=torch.float64)
    got = fast.matvec(v)
    fast.release()
    ref = HessianOperator(model, make_batches(x, y, 2), cache="off", fast=False).matvec(v)
    # Norm-wise: among millions of entries a few near-zero ones differ in their last digits relative to themselves.
    assert float(ref.norm()) > 0 and float((got - ref).norm() / ref.norm()) < 1e-12
