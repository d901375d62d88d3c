"""The value at every grid point is the loss at θ* + x_i·δ + y_j·η, recomputed here with plain torch; BN folding and
channels_last are exact; and filter normalization makes the surface blind to BN-compensated rescaling (the paper's
reason for it)."""
from __future__ import annotations

import json
import time

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from distland import directions as D
from distland.config import EngineConfig
from distland.data import load_split
from distland.engine import Engine, choose
from distland.evaluate import SurfaceEvaluator, split_loss
from distland.fold import find_conv_bn_pairs
from distland.models.demo import DemoCNN
from distland.sweep import run_surface

from conftest import SAMPLES, make_model, perturbed, plain_loss, save_checkpoint, small_config


def _stored(path):
    with h5py.File(path, "r") as f:
        dirs = [{k: torch.from_numpy(np.asarray(f[f"directions/{a}/{k}"])) for k in f[f"directions/{a}"]}
                for a in "xy" if f"directions/{a}" in f]
        x = np.asarray(f["xcoordinates"])
        y = np.asarray(f["ycoordinates"]) if "ycoordinates" in f else None
        arrays = {k: np.asarray(f[k]) for k in ("train_loss", "train_acc", "done")}
        attrs = dict(f.attrs)
    return dirs, x, y, arrays, attrs


# --------------------------------------------------------------------------------------------- point values
@pytest.mark.parametrize("ndim", [2, 1])
def test_point_values_equal_an_independent_recomputation(tmp_path, ndim, digits_train):
    ckpt = save_checkpoint(tmp_path / "theta.pt", seed=4)
    out = tmp_path / "s.h5"
    grid = ["grid.x=[-1, 0, 3]", "grid.y=[0, 2, 4]"] if ndim == 2 else ["grid.x=[0, 3, 4]", "grid.y=null"]
    cfg = small_config(out, f"checkpoint={ckpt}", "directions.seed=3", *grid)
    summary = run_surface(cfg)
    assert summary.computed == summary.points == (12 if ndim == 2 else 4)

    dirs, x, y, arrays, _ = _stored(out)
    expected_shape = (3, 4) if ndim == 2 else (4,)
    assert arrays["train_loss"].shape == arrays["train_acc"].shape == arrays["done"].shape == expected_shape
    assert arrays["done"].all()
    np.testing.assert_array_equal(x, [-1.0, -0.5, 0.0] if ndim == 2 else [0.0, 1.0, 2.0, 3.0])
    if ndim == 2:
        np.testing.assert_allclose(y, [0.0, 2 / 3, 4 / 3, 2.0], rtol=0, atol=1e-15)
    else:
        assert y is None
    assert len(dirs) == ndim

    # Build the model ourselves, load θ*, move it by hand.
    state = torch.load(ckpt, weights_only=True)
    names = [k for k, _ in DemoCNN().named_parameters()]
    for d in dirs:
        assert sorted(d) == sorted(names)  # type: weights → one tensor per parameter
        assert any(d[k].any() for k in names if d[k].dim() > 1)
        assert not any(d[k].any() for k in names if d[k].dim() == 1)  # ignore: biasbn
    theta = {k: state[k] for k in names}
    inputs, targets = digits_train
    assert len(targets) == SAMPLES
    for i in range(len(x)):
        for j in range(len(y) if ndim == 2 else 1):
            coeffs = (x[i], y[j]) if ndim == 2 else (x[i],)
            model = DemoCNN()
            model.load_state_dict(state)
            loss, acc = plain_loss(perturbed(model, theta, dirs, coeffs), inputs, targets)
            at = (i, j) if ndim == 2 else (i,)
            assert arrays["train_loss"][at] == pytest.approx(loss, rel=1e-5), at
            assert arrays["train_acc"][at] == pytest.approx(acc, abs=1e-9), at
    assert np.ptp(arrays["train_loss"]) > 1e-2  # the directions really move the loss
    # at the origin the loss is θ*'s own
    model = DemoCNN()
    model.load_state_dict(state)
    origin = (2, 0) if ndim == 2 else (0,)
    assert arrays["train_loss"][origin] == pytest.approx(plain_loss(model, inputs, targets)[0], rel=1e-5)


# --------------------------------------------------------------------------------------------- engine exactness
def _synthetic(n=12):
    return load_split("synthetic", "train", n, num_samples=n)


@pytest.mark.parametrize("name", ["resnet20", "democnn"])
def test_bn_folding_and_channels_last_are_exact(name, digits_train):
    model = make_model(name, seed=6)
    splits = {"train": _synthetic() if name == "resnet20" else digits_train}
    ref = D.reference_weights(model, "weights")
    dirs = D.make_random(ref, seed=2, norm="filter", ignore="biasbn", ndim=2)
    points = [(0.0, 0.0), (0.4, -0.3), (-1.0, 0.7)]
    results = {}
    for fold in (False, True):
        for cl in (False, True):
            ev = SurfaceEvaluator(model, ref, dirs, splits, Engine(device="cpu", batch_size=8, channels_last=cl,
                                                                    fold_bn=fold))
            has_bn = any(isinstance(m, nn.BatchNorm2d) for m in ev.model.modules())
            assert ev.engine.fold_bn == fold and has_bn == (not fold)  # folding really happened
            results[(fold, cl)] = [ev.evaluate(p) for p in points]
    # the plain path against a hand computation
    x, y = splits["train"]
    for p, got in zip(points, results[(False, False)]):
        m = make_model(name, seed=6)
        loss, acc = plain_loss(perturbed(m, ref, dirs, p), x, y)
        assert got["train_loss"] == pytest.approx(loss, rel=1e-5)
        assert got["train_acc"] == pytest.approx(acc)
    base = results[(False, False)]
    for key, rows in results.items():
        for got, want in zip(rows, base):
            assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5), key
    losses = [r["train_loss"] for r in base]
    assert max(losses) - min(losses) > 1e-3


@pytest.mark.parametrize("kind", ["weights", "states"])
def test_folding_is_disabled_when_a_direction_moves_batchnorm(kind, digits_train):
    model = make_model("democnn", seed=7)
    ref = D.reference_weights(model, kind)
    dirs = D.make_random(ref, seed=1, norm="filter", ignore="none", ndim=1)
    splits = {"train": digits_train}
    requested = Engine(device="cpu", batch_size=64, fold_bn=True)
    ev = SurfaceEvaluator(model, ref, dirs, splits, requested)
    assert ev.engine.fold_bn is False
    assert sum(isinstance(m, nn.BatchNorm2d) for m in ev.model.modules()) == 2
    plain = SurfaceEvaluator(model, ref, dirs, splits, Engine(device="cpu", batch_size=64, fold_bn=False))
    x, y = digits_train
    # small steps: a random step in running_var must keep it positive
    for c in (0.0, 0.1, -0.15):
        got = ev.evaluate((c,))["train_loss"]
        assert np.isfinite(got)
        assert got == pytest.approx(plain.evaluate((c,))["train_loss"], rel=1e-6)
        assert got == pytest.approx(plain_loss(perturbed(make_model("democnn", seed=7), ref, dirs, (c,)), x, y)[0],
                                    rel=1e-5)
    # biasbn leaves BN alone: folding stays on
    dirs_bb = D.make_random(ref, seed=1, norm="filter", ignore="biasbn", ndim=1)
    assert SurfaceEvaluator(model, ref, dirs_bb, splits, Engine(device="cpu", fold_bn=True)).engine.fold_bn is True


def test_recorded_engine_says_whether_bn_was_folded(tmp_path):
    on = small_config(tmp_path / "on.h5", "grid.x=[-1, 1, 2]", "grid.y=null")
    off = small_config(tmp_path / "off.h5", "grid.x=[-1, 1, 2]", "grid.y=null", "directions.ignore=none")
    run_surface(on)
    run_surface(off)
    with h5py.File(tmp_path / "on.h5", "r") as f:
        assert json.loads(f.attrs["engine"])["fold_bn"] is True
    with h5py.File(tmp_path / "off.h5", "r") as f:
        assert json.loads(f.attrs["engine"])["fold_bn"] is False


def test_find_conv_bn_pairs_on_the_zoo():
    _, pairs = find_conv_bn_pairs(make_model("democnn"))
    assert pairs == [("features.0", "features.1"), ("features.3", "features.4")]
    _, pairs = find_conv_bn_pairs(make_model("resnet20"))
    names = dict(pairs)
    assert names["conv1"] == "bn1" and names["layer1.0.conv2"] == "layer1.0.bn2"
    assert names["layer2.0.shortcut.0"] == "layer2.0.shortcut.1"
    _, pairs = find_conv_bn_pairs(make_model("mlp"))
    assert pairs == []


def test_cpu_batch_keeps_one_layer_of_activations_in_cache():
    from distland.engine import CPU_BATCH_MAX, CPU_BATCH_MIN, cpu_batch, largest_activation

    # ResNet-20: the widest activation is 16 channels at 32x32 in float32.
    assert largest_activation(make_model("resnet20"), torch.randn(5, 3, 32, 32)) == 16 * 32 * 32 * 4
    assert cpu_batch(16 * 32 * 32 * 4) == 64
    assert cpu_batch(64 * 32 * 32 * 4) == CPU_BATCH_MIN          # wide nets: never below the floor
    assert cpu_batch(100) == CPU_BATCH_MAX                       # tiny models: per-batch overhead dominates
    for size in (1, 1000, 70_000, 10**7):
        b = cpu_batch(size)
        assert CPU_BATCH_MIN <= b <= CPU_BATCH_MAX and b & (b - 1) == 0   # a power of two in range
    # A model that cannot run on one sample gets the default, not an error (the sizing is only a hint).
    class NeedsTwo(nn.Module):
        def forward(self, x):
            if x.shape[0] < 2:
                raise RuntimeError("batch of one")
            return x

    assert largest_activation(NeedsTwo(), torch.randn(4, 3)) == 0
    assert choose(EngineConfig(device="cpu", threads=1), activation_bytes=0).batch_size == 64
    # The sweep uses it: the demo CNN on 8x8 digits gets large CPU batches.
    cpu = choose(EngineConfig(device="cpu", threads=1),
                 activation_bytes=largest_activation(make_model("democnn"), torch.randn(2, 1, 8, 8)))
    assert cpu.batch_size >= 512


def test_engine_choice_rules():
    auto = choose(EngineConfig(device="cpu", threads=1), input_ndim=4)
    assert auto.device == "cpu" and auto.fold_bn and auto.channels_last and auto.batch_size == 64
    assert not choose(EngineConfig(device="cpu", threads=1), input_ndim=2).channels_last
    off = choose(EngineConfig(device="cpu", threads=3, fold_bn="off", channels_last="off"), batch_size=7)
    assert not off.fold_bn and not off.channels_last and off.threads == 3 and off.batch_size == 7
    assert choose(EngineConfig(device="cpu", threads=0), local_size=2, cores=8).threads >= 1


def test_split_loss_matches_plain_and_batches_do_not_matter(digits_train):
    model = make_model("democnn", seed=1)
    x, y = digits_train
    want = plain_loss(model, x, y)
    for bs in (1, 7, 1000):
        loss, acc = split_loss(model, x, y, bs)
        assert loss == pytest.approx(want[0], rel=1e-6) and acc == pytest.approx(want[1])
    with pytest.raises(ValueError, match="empty"):
        split_loss(model, x[:0], y[:0], 8)


# --------------------------------------------------------------------------------------------- the paper's point
def test_filter_normalization_removes_the_scale_invariance_artifact(tmp_path, digits_train):
    """Scale each of conv1's filters by its own factor and its BN statistics to match: the network computes the same
    function. Filter-normalized surfaces of both checkpoints agree; layer-normalized (one norm per tensor, blind to
    how the scale is spread over filters) and un-normalized ones do not."""
    original = make_model("democnn", seed=11)
    scaled = make_model("democnn", seed=11)
    conv, bn = scaled.features[0], scaled.features[1]
    factors = torch.linspace(2.0, 10.0, conv.out_channels)  # >= 2 keeps BN's eps negligible after scaling
    with torch.no_grad():
        conv.weight.mul_(factors.view(-1, 1, 1, 1))
        bn.running_mean.mul_(factors)
        bn.running_var.mul_(factors ** 2)
    x, y = digits_train
    with torch.no_grad():
        torch.testing.assert_close(scaled(x), original(x), rtol=1e-4, atol=1e-4)  # same function
    torch.save(original.state_dict(), tmp_path / "a.pt")
    torch.save(scaled.state_dict(), tmp_path / "b.pt")

    def surface(ckpt, norm):
        out = tmp_path / f"{ckpt}_{norm}.h5"
        cfg = small_config(out, f"checkpoint={tmp_path / ckpt}", f"directions.norm={norm}", "directions.seed=5",
                           "grid.x=[-1, 1, 3]", "grid.y=[-1, 1, 3]")
        run_surface(cfg)
        with h5py.File(out, "r") as f:
            return np.asarray(f["train_loss"])

    fa, fb = surface("a.pt", "filter"), surface("b.pt", "filter")
    la, lb = surface("a.pt", "layer"), surface("b.pt", "layer")
    na, nb = surface("a.pt", "none"), surface("b.pt", "none")
    assert np.isfinite(fa).all() and np.isfinite(la).all() and np.isfinite(na).all()
    np.testing.assert_allclose(fb, fa, rtol=1e-5, atol=1e-6)
    assert np.ptp(fa) > 1e-2  # a non-trivial surface
    filter_gap = np.max(np.abs(fb - fa))
    for other_a, other_b in ((la, lb), (na, nb)):
        assert np.max(np.abs(other_b - other_a)) > 1e-2
        assert np.max(np.abs(other_b - other_a)) > 1000 * filter_gap


# --------------------------------------------------------------------------------------------- interpolation
def test_interpolation_surface_ends_at_both_checkpoints(tmp_path, digits_train):
    a = save_checkpoint(tmp_path / "a.pt", seed=1)
    b = save_checkpoint(tmp_path / "b.pt", seed=2)
    out = tmp_path / "interp.h5"
    cfg = small_config(out, f"checkpoint={a}", "directions.kind=interp", f"directions.target={b}",
                       "directions.type=states", "grid.x=[0, 1, 3]", "grid.y=null")
    run_surface(cfg)
    dirs, xs, _, arrays, attrs = _stored(out)
    np.testing.assert_array_equal(xs, [0.0, 0.5, 1.0])
    assert json.loads(attrs["engine"])["fold_bn"] is False  # the direction moves BN statistics
    x, y = digits_train
    for ckpt, i in ((a, 0), (b, 2)):
        model = DemoCNN()
        model.load_state_dict(torch.load(ckpt, weights_only=True))
        assert arrays["train_loss"][i] == pytest.approx(plain_loss(model, x, y)[0], rel=1e-5)
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    for k, v in sa.items():
        want = (sb[k] - v) if v.is_floating_point() else torch.zeros_like(v)
        torch.testing.assert_close(dirs[0][k], want, rtol=0, atol=0)


def test_interpolation_by_default_carries_batchnorm_statistics_to_the_target(tmp_path, digits_train):
    """With no directions.type given, α = 1 is θ′ itself (its running statistics included), not θ′'s weights with
    θ*'s statistics; a random surface of the same config still moves parameters only."""
    a = save_checkpoint(tmp_path / "a.pt", seed=1)
    b = save_checkpoint(tmp_path / "b.pt", seed=2)
    out = tmp_path / "interp.h5"
    cfg = small_config(out, f"checkpoint={a}", "directions.kind=interp", f"directions.target={b}",
                       "grid.x=[0, 1, 2]", "grid.y=null")
    assert cfg.directions.type == "auto" and cfg.directions.resolved_type() == "states"
    run_surface(cfg)
    dirs, _, _, arrays, attrs = _stored(out)
    assert "features.1.running_var" in dirs[0]
    x, y = digits_train
    model = DemoCNN()
    model.load_state_dict(torch.load(b, weights_only=True))
    assert arrays["train_loss"][1] == pytest.approx(plain_loss(model, x, y)[0], rel=1e-5)
    assert json.loads(attrs["identity"])["directions"]["type"] == "states"   # what was used, not "auto"
    assert small_config(tmp_path / "r.h5").directions.resolved_type() == "weights"


def test_random_surface_identity_still_says_weights(tmp_path):
    """A random surface written before `type: auto` existed (identity type 'weights') must still resume."""
    out = tmp_path / "r.h5"
    run_surface(small_config(out, "directions.type=weights", "grid.x=[-1, 1, 2]", "grid.y=null"))
    with h5py.File(out, "r") as f:
        identity = json.loads(f.attrs["identity"])
    assert identity["directions"]["type"] == "weights"
    run_surface(small_config(out, "grid.x=[-1, 1, 2]", "grid.y=null"))  # default auto: resumes, no error


# --------------------------------------------------------------------------------------------- whole-job properties
def test_same_dir_surface_depends_only_on_x_plus_y(tmp_path):
    out = tmp_path / "same.h5"
    run_surface(small_config(out, "directions.same_dir=true", "grid.x=[-1, 1, 3]", "grid.y=[-1, 1, 3]"))
    dirs, _, _, arrays, _ = _stored(out)
    assert all(torch.equal(dirs[0][k], dirs[1][k]) for k in dirs[0])
    loss = arrays["train_loss"]
    np.testing.assert_allclose(loss, loss.T, rtol=1e-6)
    assert loss[0, 2] == pytest.approx(loss[1, 1], rel=1e-6) == pytest.approx(loss[2, 0], rel=1e-6)  # x+y = 0
    assert abs(loss[0, 0] - loss[1, 1]) > 1e-3


def test_both_splits_are_evaluated(tmp_path):
    ckpt = save_checkpoint(tmp_path / "theta.pt", seed=9)
    out = tmp_path / "both.h5"
    run_surface(small_config(out, f"checkpoint={ckpt}", "data.split=both", "grid.x=[0, 1, 2]", "grid.y=null"))
    with h5py.File(out, "r") as f:
        assert {"train_loss", "train_acc", "test_loss", "test_acc"} <= set(f)
        test_loss = np.asarray(f["test_loss"])
    model = DemoCNN()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    x, y = load_split("digits", "test", SAMPLES)
    assert test_loss[0] == pytest.approx(plain_loss(model, x, y)[0], rel=1e-5)


def test_compile_matches_eager_and_falls_back_when_it_fails(monkeypatch):
    """engine.compile: the compiled pass gives the eager loss; a failing compiler leaves the job running eagerly."""
    import torch

    from distland import directions as D
    from distland.engine import worth_compiling
    from distland.engine import Engine
    from distland.evaluate import SurfaceEvaluator
    from distland.models import build_model

    torch.manual_seed(0)
    model = build_model("democnn").eval()
    ref = D.reference_weights(model)
    dirs = D.make_random(ref, 1, "filter", "biasbn", 2)
    data = {"train": (torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,)))}
    eager = SurfaceEvaluator(model, ref, dirs, data, Engine(batch_size=16))
    compiled = SurfaceEvaluator(model, ref, dirs, data, Engine(batch_size=16, compile="on"))
    assert compiled.compiled
    for point in [(0.3, -0.2), (-0.5, 0.1)]:
        a, b = eager.evaluate(point), compiled.evaluate(point)
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-5 * a["train_loss"]
        assert a["train_acc"] == b["train_acc"]

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        fallback = SurfaceEvaluator(model, ref, dirs, data, Engine(batch_size=16, compile="on"))
    assert not fallback.compiled
    assert fallback.evaluate((0.3, -0.2))["train_loss"] == eager.evaluate((0.3, -0.2))["train_loss"]
    assert worth_compiling(1.0, 200) and not worth_compiling(0.01, 200)


def test_auto_compile_is_decided_once_from_the_steady_point_time(tmp_path, digits_train, monkeypatch):
    """engine.compile: auto times three points and decides from the least (the first carries start-up costs)."""
    from distland import engine, evaluate

    calls, timed = [], []
    real = evaluate.SurfaceEvaluator.evaluate

    def timed_evaluate(self, coeffs, poll=None):
        t0 = time.perf_counter()
        out = real(self, coeffs, poll)
        timed.append(time.perf_counter() - t0)
        return out

    def decide(point_s, points_left, device="cpu"):
        calls.append((point_s, points_left))
        return True

    monkeypatch.setattr(evaluate.SurfaceEvaluator, "evaluate", timed_evaluate)
    monkeypatch.setattr(engine, "worth_compiling", decide)
    summary = run_surface(small_config(tmp_path / "s.h5", "engine.compile=auto"))   # 3×3 = 9 points
    assert len(calls) == 1
    point_s, left = calls[0]
    assert left == 6
    assert min(timed[:3]) <= point_s <= min(timed[:3]) + 1e-3   # the least of the three, not the first
    assert summary.compiled == 1 and "torch.compile on 1 of 1" in summary.text()
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert int(f.attrs["compiled_ranks"]) == 1


# --------------------------------------------------------------------------------------------- reduced precision
def test_bf16_is_opt_in_and_reports_its_measured_error(tmp_path, digits_train):
    ckpt = save_checkpoint(tmp_path / "theta.pt", seed=4)
    exact_out, bf16_out = tmp_path / "fp32.h5", tmp_path / "bf16.h5"
    exact = run_surface(small_config(exact_out, f"checkpoint={ckpt}"))
    reduced = run_surface(small_config(bf16_out, f"checkpoint={ckpt}", "engine.precision=bf16"))
    assert "precision" not in exact.text() and "bf16" in reduced.text()
    _, _, _, a32, attrs32 = _stored(exact_out)
    _, _, _, a16, attrs16 = _stored(bf16_out)
    assert "precision_check" not in attrs32
    check = json.loads(attrs16["precision_check"])
    assert check["precision"] == "bf16" and check["points"] == 2
    # The recorded error is a real measurement: non-zero, small, and of the size the whole surface shows.
    measured = np.max(np.abs(a16["train_loss"] - a32["train_loss"]) / np.abs(a32["train_loss"]))
    assert 0 < check["max_rel_loss_error"] < 0.05
    assert 0 < measured < 0.05
    assert json.loads(attrs16["engine"])["precision"] == "bf16"


def test_a_bf16_file_is_not_resumed_in_float32(tmp_path, digits_train):
    from distland.surfacefile import SurfaceError

    out = tmp_path / "s.h5"
    run_surface(small_config(out, "engine.precision=bf16"))
    with pytest.raises(SurfaceError, match="precision"):
        run_surface(small_config(out))


def test_precision_check_is_empty_for_float32():
    model = make_model(seed=1)
    ref = D.reference_weights(model)
    dirs = D.make_random(ref, 0, "filter", "biasbn", 2)
    x, y = torch.randn(20, 1, 8, 8), torch.randint(0, 10, (20,))
    ev = SurfaceEvaluator(model, ref, dirs, {"train": (x, y)}, Engine())
    assert ev.precision_check([(0.0, 0.0)]) == {}


class _SharedConv(nn.Module):
    """One conv module called at two places, each call followed by its own BatchNorm: not foldable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(4)
        self.bn_b = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn_a(self.conv(x))) + torch.relu(self.bn_b(self.conv(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return self.fc(h.mean((2, 3)))


def _shared_conv_model() -> nn.Module:
    torch.manual_seed(3)
    model = _SharedConv()
    for bn in (model.bn_a, model.bn_b, model.bn2):  # distinct, non-trivial statistics per BN
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.3, 3.0)
        bn.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def test_a_conv_called_twice_is_not_folded(digits_train):
    model = _shared_conv_model()
    ref = D.reference_weights(model, "weights")
    dirs = D.make_random(ref, seed=2, norm="filter", ignore="biasbn", ndim=1)
    _, pairs = find_conv_bn_pairs(model)
    assert pairs == [("conv2", "bn2")]  # only the conv called once, feeding only its BN
    splits = {"train": digits_train}
    plain = SurfaceEvaluator(model, ref, dirs, splits, Engine(device="cpu", batch_size=64, fold_bn=False))
    folded = SurfaceEvaluator(model, ref, dirs, splits, Engine(device="cpu", batch_size=64, fold_bn=True))
    assert folded.engine.fold_bn is True
    for c in (0.0, 0.5):
        assert folded.evaluate((c,))["train_loss"] == pytest.approx(plain.evaluate((c,))["train_loss"], rel=1e-5)


def test_an_inexact_fold_is_caught_at_theta_and_runs_unfolded(digits_train, monkeypatch):
    import distland.fold as E

    model = _shared_conv_model()
    ref = D.reference_weights(model, "weights")
    dirs = D.make_random(ref, seed=2, norm="filter", ignore="biasbn", ndim=1)
    # A pair finder that (wrongly) folds both BNs into the shared conv, as the per-call check used to.
    real = E.find_conv_bn_pairs
    monkeypatch.setattr(E, "find_conv_bn_pairs",
                        lambda m: (real(m)[0], [("conv", "bn_a"), ("conv", "bn_b"), ("conv2", "bn2")]))
    splits = {"train": digits_train}
    plain = SurfaceEvaluator(model, ref, dirs, splits, Engine(device="cpu", batch_size=64, fold_bn=False))
    with pytest.warns(UserWarning, match="folding changed"):
        ev = SurfaceEvaluator(model, ref, dirs, splits, Engine(device="cpu", batch_size=64, fold_bn=True))
    assert ev.engine.fold_bn is False
    assert any(isinstance(m, nn.BatchNorm2d) for m in ev.model.modules())
    assert ev.evaluate((0.3,))["train_loss"] == pytest.approx(plain.evaluate((0.3,))["train_loss"], rel=1e-6)
