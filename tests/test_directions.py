"""Directions (Li et al. 2018, §4): every normalization against its definition, integer buffers, seeds, same_dir,
interpolation, and direction files in our layout and the paper authors' layout."""
from __future__ import annotations

from collections import OrderedDict

import h5py
import numpy as np
import pytest
import torch

from distland import directions as D
from distland.directions import DirectionError

from conftest import make_model

MODELS = ["democnn", "resnet20"]


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double().reshape(t.shape[0], -1)


def _filter_norms(t: torch.Tensor) -> torch.Tensor:
    return _rows(t).norm(dim=1)


def _norm(t: torch.Tensor) -> float:
    return float(t.detach().double().norm())


def _parallel_per_row(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Each row of ``a`` is a positive multiple of the same row of ``b``."""
    ra, rb = _rows(a), _rows(b)
    cos = (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))
    return bool(torch.allclose(cos, torch.ones_like(cos), atol=1e-9))


def _parallel(a: torch.Tensor, b: torch.Tensor) -> bool:
    return _parallel_per_row(a.reshape(1, -1), b.reshape(1, -1))


@pytest.fixture(scope="module", params=MODELS)
def reference(request):
    return D.reference_weights(make_model(request.param, seed=3), "weights")


def _raw(reference, seed=0):
    return D.random_direction(reference, torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------- filter
def test_filter_normalization_matches_theta_per_filter(reference):
    dirs = D.make_random(reference, seed=0, norm="filter", ignore="biasbn", ndim=2)
    assert len(dirs) == 2
    raw = _raw(reference)  # the x direction is the first draw of the seeded stream
    kinds = set()
    for d in dirs:
        assert list(d) == list(reference)
        for key, theta in reference.items():
            v = d[key]
            assert v.shape == theta.shape and v.dtype == theta.dtype
            if theta.dim() > 1:
                kinds.add(theta.dim())
                torch.testing.assert_close(_filter_norms(v), _filter_norms(theta), rtol=1e-6, atol=0)
            else:
                assert not v.any(), f"{key}: 1-D tensors are not moved under ignore: biasbn"
    assert {2, 4} <= kinds  # both conv filters and linear rows were checked
    for key, theta in reference.items():
        if theta.dim() > 1:
            assert _parallel_per_row(dirs[0][key], raw[key]), key  # each filter is the random one, rescaled


def test_filter_with_ignore_none_normalizes_1d_tensors_like_a_layer(reference):
    (d,) = D.make_random(reference, seed=1, norm="filter", ignore="none", ndim=1)
    raw = _raw(reference, 1)
    n1 = 0
    for key, theta in reference.items():
        if theta.dim() == 1:
            n1 += 1
            assert _norm(d[key]) == pytest.approx(_norm(theta), rel=1e-6)
            assert not torch.allclose(d[key], theta), f"{key}: must be a random direction, not θ itself"
            assert _parallel(d[key], raw[key])
        else:
            torch.testing.assert_close(_filter_norms(d[key]), _filter_norms(theta), rtol=1e-6, atol=0)
    assert n1 > 0


def test_zero_filter_of_theta_gives_zero_direction_filter():
    theta = OrderedDict(w=torch.randn(4, 3, 3, 3))
    theta["w"][2].zero_()
    (d,) = D.make_random(theta, seed=0, norm="filter", ignore="biasbn", ndim=1)
    assert torch.isfinite(d["w"]).all()
    assert not d["w"][2].any()
    torch.testing.assert_close(_filter_norms(d["w"]), _filter_norms(theta["w"]), rtol=1e-6, atol=1e-12)


# --------------------------------------------------------------------------------------------- other norms
@pytest.mark.parametrize("ignore", ["biasbn", "none"])
@pytest.mark.parametrize("norm", ["layer", "weight", "dfilter", "dlayer", "none"])
def test_each_norm_against_its_definition(reference, norm, ignore):
    raw = _raw(reference, 5)
    d = D.normalize(raw, reference, norm, ignore)
    assert list(d) == list(reference)
    for key, theta in reference.items():
        r, v = raw[key].double(), d[key].double()
        if theta.dim() <= 1 and ignore == "biasbn":
            assert not v.any(), key
            continue
        if norm == "none":
            torch.testing.assert_close(v, r, rtol=0, atol=0)
        elif norm == "weight":
            torch.testing.assert_close(v, r * theta.double(), rtol=1e-6, atol=1e-7)
        elif norm == "layer":
            assert _norm(v) == pytest.approx(_norm(theta), rel=1e-6)
            assert _parallel(v, r)
        elif norm == "dlayer":
            assert _norm(v) == pytest.approx(1.0, rel=1e-6)
            assert _parallel(v, r)
        elif norm == "dfilter":
            if theta.dim() > 1:
                torch.testing.assert_close(_filter_norms(v), torch.ones(theta.shape[0], dtype=torch.float64),
                                           rtol=1e-6, atol=0)
                assert _parallel_per_row(v, r)
            else:
                assert _norm(v) == pytest.approx(1.0, rel=1e-6)
                assert _parallel(v, r)
    # and the normalization really did something (except `none`)
    conv = next(k for k, t in reference.items() if t.dim() == 4)
    assert torch.equal(d[conv], raw[conv]) == (norm == "none")


def test_layer_differs_from_filter():
    theta = OrderedDict(w=torch.cat([torch.ones(1, 8), 10 * torch.ones(1, 8)]))
    raw = D.random_direction(theta, torch.Generator().manual_seed(0))
    layer = D.normalize(raw, theta, "layer", "biasbn")["w"]
    flt = D.normalize(raw, theta, "filter", "biasbn")["w"]
    assert _norm(layer) == pytest.approx(_norm(theta["w"]), rel=1e-6)
    torch.testing.assert_close(_filter_norms(flt), torch.tensor([np.sqrt(8), 10 * np.sqrt(8)], dtype=torch.float64))
    assert not torch.allclose(layer, flt)


def test_invalid_norm_and_ignore():
    theta = OrderedDict(w=torch.ones(2, 2))
    with pytest.raises(DirectionError, match="directions.norm 'bogus' is not valid"):
        D.normalize(theta, theta, "bogus")
    with pytest.raises(DirectionError, match="directions.ignore"):
        D.normalize(theta, theta, "filter", "bias")
    with pytest.raises(DirectionError, match="directions.type"):
        D.reference_weights(torch.nn.Linear(2, 2), "buffers")


# --------------------------------------------------------------------------------------------- states
@pytest.mark.parametrize("ignore", ["biasbn", "none"])
def test_states_integer_buffers_never_move(ignore):
    model = make_model("democnn", seed=2)
    ref = D.reference_weights(model, "states")
    assert list(ref) == list(model.state_dict())
    ints = [k for k, v in ref.items() if not v.is_floating_point()]
    assert ints and all(k.endswith("num_batches_tracked") for k in ints)
    for d in D.make_random(ref, seed=0, norm="filter", ignore=ignore, ndim=2):
        for k in ints:
            assert d[k].dtype == ref[k].dtype and not d[k].any()
        for k, theta in ref.items():
            if k.endswith(("running_mean", "running_var")):
                if ignore == "biasbn":
                    assert not d[k].any()
                else:
                    assert _norm(d[k]) == pytest.approx(_norm(theta), rel=1e-6)
    raw = D.random_direction(ref, torch.Generator().manual_seed(0))
    assert all(not raw[k].any() for k in ints)


def test_weights_reference_is_parameters_in_model_order():
    model = make_model("democnn", seed=2)
    ref = D.reference_weights(model, "weights")
    assert list(ref) == [k for k, _ in model.named_parameters()]
    for k, p in model.named_parameters():
        assert torch.equal(ref[k], p.detach()) and ref[k].data_ptr() != p.data_ptr()


# --------------------------------------------------------------------------------------------- seeds
def test_same_seed_same_directions_different_seed_different(reference):
    a = D.make_random(reference, seed=4, norm="filter", ignore="biasbn", ndim=2)
    b = D.make_random(reference, seed=4, norm="filter", ignore="biasbn", ndim=2)
    c = D.make_random(reference, seed=5, norm="filter", ignore="biasbn", ndim=2)
    for da, db, dc in zip(a, b, c):
        for key, theta in reference.items():
            assert torch.equal(da[key], db[key])
            if theta.dim() > 1:
                assert not torch.allclose(da[key], dc[key]), key
    # x and y are different draws
    conv = next(k for k, t in reference.items() if t.dim() == 4)
    assert not torch.allclose(a[0][conv], a[1][conv])
    # the x direction of a 2-D job is the 1-D job's direction
    (one,) = D.make_random(reference, seed=4, norm="filter", ignore="biasbn", ndim=1)
    assert all(torch.equal(one[k], a[0][k]) for k in reference)


def test_same_dir(reference):
    x, y = D.make_random(reference, seed=2, norm="filter", ignore="biasbn", ndim=2, same_dir=True)
    for key in reference:
        assert torch.equal(x[key], y[key])
    conv = next(k for k, t in reference.items() if t.dim() == 4)
    y[conv].add_(1.0)  # independent copies
    assert not torch.equal(x[conv], y[conv])
    x2, _ = D.make_random(reference, seed=2, norm="filter", ignore="biasbn", ndim=2, same_dir=False)
    assert torch.equal(x2[conv], x[conv])


def test_build_dispatches():
    ref = D.reference_weights(make_model("democnn", seed=2))
    made = D.build(ref, "random", "filter", "biasbn", seed=9, ndim=2)
    assert len(made) == 2 and all(torch.equal(a[k], b[k]) for a, b in zip(made, D.make_random(ref, 9, "filter",
                                                                                             "biasbn", 2)) for k in ref)
    with pytest.raises(DirectionError, match="needs the target"):
        D.build(ref, "interp", "filter", "biasbn", seed=0, ndim=1)
    with pytest.raises(DirectionError, match="kind 'spiral' is not valid"):
        D.build(ref, "spiral", "filter", "biasbn", seed=0, ndim=1)


# --------------------------------------------------------------------------------------------- interpolation
@pytest.mark.parametrize("kind", ["weights", "states"])
def test_interpolation_is_target_minus_theta(kind):
    a, b = make_model("democnn", seed=1), make_model("democnn", seed=2)
    ra, rb = D.reference_weights(a, kind), D.reference_weights(b, kind)
    (d,) = D.build(ra, "interp", "filter", "biasbn", seed=0, ndim=1, target=rb)
    for key, theta in ra.items():
        if theta.is_floating_point():
            torch.testing.assert_close(d[key], rb[key] - theta, rtol=0, atol=0)
            torch.testing.assert_close(theta + d[key], rb[key], rtol=1e-6, atol=1e-6)  # α = 1 is θ′
            torch.testing.assert_close(theta + 0.5 * d[key], 0.5 * (theta + rb[key]), rtol=1e-6, atol=1e-6)
        else:
            assert not d[key].any()  # num_batches_tracked stays put
    assert any(not v.is_floating_point() for v in ra.values()) == (kind == "states")


def test_interpolation_target_of_another_model_is_refused():
    ra = D.reference_weights(make_model("democnn", seed=1))
    rb = D.reference_weights(make_model("democnn", seed=1, width=8))
    with pytest.raises(DirectionError, match="directions.target tensor .* has shape"):
        D.interpolation(ra, rb)
    rc = D.reference_weights(make_model("mlp", seed=1))
    with pytest.raises(DirectionError, match="does not match the model"):
        D.interpolation(ra, rc)


# --------------------------------------------------------------------------------------------- files
def _write_ours(path, dirs):
    with h5py.File(path, "w") as f:
        for axis, d in zip("xy", dirs):
            g = f.create_group(f"directions/{axis}")
            for k, v in d.items():
                g.create_dataset(k, data=v.numpy())


def _write_authors(path, dirs, dtype=None):
    # The paper authors' tool: groups xdirection / ydirection, datasets "0".."k-1" in parameter order.
    with h5py.File(path, "w") as f:
        for name, d in zip(("xdirection", "ydirection"), dirs):
            g = f.create_group(name)
            for i, v in enumerate(d.values()):
                arr = v.numpy()
                g.create_dataset(str(i), data=arr.astype(dtype) if dtype else arr)


def test_direction_file_layouts_give_the_same_tensors(tmp_path, reference):
    dirs = D.make_random(reference, seed=8, norm="filter", ignore="biasbn", ndim=2)
    if any(k.startswith("layer") for k in reference):
        assert len(reference) > 10  # resnet20: "10" sorts before "2" as text, so the order must be numeric
    ours, theirs = tmp_path / "ours.h5", tmp_path / "theirs.h5"
    _write_ours(ours, dirs)
    _write_authors(theirs, dirs, dtype=np.float64)
    a = D.load_file(ours, reference, 2)
    b = D.load_file(theirs, reference, 2)
    assert len(a) == len(b) == 2
    for da, db, d in zip(a, b, dirs):
        assert list(da) == list(db) == list(reference)
        for key in reference:
            assert da[key].dtype == db[key].dtype == reference[key].dtype
            assert torch.equal(da[key], d[key]) and torch.equal(db[key], d[key]), key
    (x_only,) = D.load_file(theirs, reference, 1)
    assert all(torch.equal(x_only[k], dirs[0][k]) for k in reference)
    made = D.build(reference, "file", "filter", "biasbn", 0, 2, file=str(theirs))
    assert all(torch.equal(made[1][k], dirs[1][k]) for k in reference)


def test_mismatched_direction_files_raise_direction_error(tmp_path):
    ref = D.reference_weights(make_model("democnn", seed=0))
    dirs = D.make_random(ref, seed=0, norm="filter", ignore="biasbn", ndim=2)
    keys = list(ref)

    missing = OrderedDict((k, v) for k, v in dirs[0].items() if k != keys[1])
    _write_ours(tmp_path / "missing.h5", [missing, dirs[1]])
    with pytest.raises(DirectionError, match=rf"has no tensor '{keys[1]}' in directions/x"):
        D.load_file(tmp_path / "missing.h5", ref, 2)

    shaped = OrderedDict(dirs[0])
    shaped[keys[0]] = torch.zeros(3, 3)
    _write_ours(tmp_path / "shape.h5", [shaped, dirs[1]])
    with pytest.raises(DirectionError, match=rf"tensor '{keys[0]}' has shape \(3, 3\)"):
        D.load_file(tmp_path / "shape.h5", ref, 2)

    _write_authors(tmp_path / "count.h5", [OrderedDict(list(dirs[0].items())[:-1])])
    with pytest.raises(DirectionError, match=f"has {len(keys) - 1} tensors, the model has {len(keys)}"):
        D.load_file(tmp_path / "count.h5", ref, 1)

    _write_authors(tmp_path / "ashape.h5", [shaped])
    with pytest.raises(DirectionError, match="has shape"):
        D.load_file(tmp_path / "ashape.h5", ref, 1)

    _write_ours(tmp_path / "xonly.h5", [dirs[0]])
    with pytest.raises(DirectionError, match="neither directions/y nor ydirection"):
        D.load_file(tmp_path / "xonly.h5", ref, 2)

    other = D.reference_weights(make_model("resnet20", seed=0))
    _write_authors(tmp_path / "resnet.h5", D.make_random(other, 0, "filter", "biasbn", 1))
    with pytest.raises(DirectionError, match="check directions.type"):
        D.load_file(tmp_path / "resnet.h5", ref, 1)

    states = D.reference_weights(make_model("democnn", seed=0), "states")
    _write_ours(tmp_path / "states.h5", D.make_random(states, 0, "filter", "biasbn", 1))
    with pytest.raises(DirectionError, match="unexpected"):  # made for type: states, used with weights
        D.check_compatible(D.load_file(tmp_path / "states.h5", states, 1)[0], ref)

    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(DirectionError, match="not a readable HDF5 file"):
        D.load_file(tmp_path / "junk.h5", ref, 1)
    with pytest.raises(DirectionError, match="not found"):
        D.load_file(tmp_path / "nope.h5", ref, 1)


def test_numpy_round_trip_and_biasbn_left_alone():
    ref = D.reference_weights(make_model("democnn", seed=0))
    (d,) = D.make_random(ref, 0, "filter", "biasbn", 1)
    back = D.from_numpy(D.to_numpy(d))
    assert list(back) == list(d) and all(torch.equal(back[k], d[k]) for k in d)
    assert all((not d[k].any()) == (ref[k].dim() <= 1) for k in ref)


def test_authors_states_file_with_integer_counters_loads_and_sweeps(tmp_path):
    """The authors' `states` direction files hold num_batches_tracked (θ′ − θ) as integer tensors; they load with
    those entries zero and a sweep runs (it used to fail: "For integral input tensors, argument alpha must not be a
    floating point number")."""
    from conftest import small_config
    from distland.sweep import run_surface

    model = make_model("democnn", seed=3)
    ref = D.reference_weights(model, "states")
    d = D.make_random(ref, seed=4, norm="filter", ignore="biasbn", ndim=1)[0]
    ints = [k for k, v in ref.items() if not v.is_floating_point()]
    assert ints, "democnn has num_batches_tracked buffers"
    for k in ints:
        d[k] = torch.tensor(7, dtype=torch.int64)  # a counter difference, as the authors' file stores it
    path = tmp_path / "theirs_states.h5"
    _write_authors(path, [d])
    with h5py.File(path, "r") as f:
        assert f["xdirection"][str(list(ref).index(ints[0]))].dtype == np.int64
    (loaded,) = D.load_file(path, ref, 1)
    for k in ints:
        assert loaded[k].dtype == torch.int64 and int(loaded[k]) == 0
    ckpt = tmp_path / "theta.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "s.h5"
    run_surface(small_config(out, f"checkpoint={ckpt}", f"directions.file={path}", "directions.type=states",
                             "grid.x=[-0.5, 0.5, 3]", "grid.y=null"))
    with h5py.File(out, "r") as f:
        assert np.isfinite(np.asarray(f["train_loss"])).all() and np.asarray(f["done"]).all()
