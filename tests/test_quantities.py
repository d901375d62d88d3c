"""The per-point quantity seam: a quantity declares its datasets and computes them; the scheduler, the file,
resume, done masks and the reader handle it without knowing what it is (tests/plugins.py: CoordQuantity)."""
from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest

from conftest import small_config
from distland.config import ConfigError
from distland.engine import Engine
from distland.evaluate import SurfaceEvaluator
from distland.surfacefile import SurfaceError, read
from distland.sweep import run_surface

COORD = "plugins:CoordQuantity"


@pytest.fixture(autouse=True)
def opted_in(monkeypatch):
    """tests/plugins.py is a trusted plug-in module here (as a user would list it in `plugins:`)."""
    monkeypatch.setenv("DISTLAND_PLUGINS", "plugins")


@pytest.fixture
def coord(monkeypatch):
    import plugins

    monkeypatch.setattr(plugins.CoordQuantity, "fail_after", -1)
    return plugins.CoordQuantity


def _no_loss(monkeypatch):
    def refuse(self, coeffs, poll=None):
        raise AssertionError("the loss was recomputed")

    monkeypatch.setattr(SurfaceEvaluator, "evaluate", refuse)


def test_a_quantity_joins_a_finished_loss_surface_without_recomputing_it(tmp_path, coord, monkeypatch):
    out = tmp_path / "s.h5"
    run_surface(small_config(out))
    before = read(str(out))
    _no_loss(monkeypatch)
    summary = run_surface(small_config(out, f"quantities=[loss, '{COORD}']"))
    assert summary.computed == 9
    data = read(str(out))
    np.testing.assert_array_equal(data.metrics["train_loss"], before.metrics["train_loss"])
    xs, ys = np.meshgrid(data.x, data.y, indexing="ij")
    np.testing.assert_array_equal(data.metrics["coord_sum"], xs + 10 * ys)   # [i, j] ↔ (x_i, y_j)
    assert (data.metrics["coord_rank"] == 0).all()
    assert data.masks["coord_done"].all() and data.masks["done"].all()
    with h5py.File(out, "r") as f:
        assert f["coord_rank"].dtype == np.int32 and f["coord_sum"].attrs["done_mask"] == "coord_done"
        assert int(f.attrs["coord_points"]) == 9 and f.attrs["quantity.coord"] == '{"version": 1}'


def test_an_interrupted_quantity_resumes_only_its_missing_points(tmp_path, coord, monkeypatch):
    out = tmp_path / "s.h5"
    coord.fail_after = 4
    with pytest.raises(RuntimeError, match="injected failure"):   # one point per unit: 4 units finished
        run_surface(small_config(out, f"quantities=[loss, '{COORD}']", "sweep.chunk=1"))
    partial = read(str(out))
    assert partial.masks["done"].all() and partial.masks["coord_done"].sum() == 4
    # Not done for coord means NaN there, even where the loss is done.
    assert np.isnan(partial.metrics["coord_sum"][~partial.masks["coord_done"]]).all()
    assert (partial.metrics["coord_rank"][~partial.masks["coord_done"]] != 0).all()
    coord.fail_after = -1
    _no_loss(monkeypatch)
    summary = run_surface(small_config(out, f"quantities=[loss, '{COORD}']", "sweep.chunk=1"))
    assert summary.computed == 5
    with h5py.File(out, "r") as f:
        assert int(f.attrs["coord_points"]) == 5
    assert read(str(out)).masks["coord_done"].all()


def test_a_quantity_with_other_settings_is_not_resumed(tmp_path, coord):
    out = tmp_path / "s.h5"
    run_surface(small_config(out, f"quantities=['{COORD}']"))
    with h5py.File(out, "r+") as f:
        f.attrs["quantity.coord"] = '{"version": 0}'
    with pytest.raises(SurfaceError, match="coord computed with other settings"):
        run_surface(small_config(out, f"quantities=['{COORD}']"))


def test_a_file_with_only_another_quantity_reads(tmp_path, coord):
    out = tmp_path / "s.h5"
    run_surface(small_config(out, f"quantities=['{COORD}']"))
    data = read(str(out))
    assert set(data.metrics) == {"coord_sum", "coord_rank"} and data.done.all()


def test_unknown_and_bad_quantities_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="quantities: 'hessian2' is not valid; choose one of loss"):
        small_config(tmp_path / "s.h5", "quantities=[hessian2]")
    with pytest.raises(ConfigError, match="each quantity once"):
        small_config(tmp_path / "s.h5", "quantities=[loss, loss]")
    with pytest.raises(ValueError, match="not a distland.quantities.Quantity subclass"):
        run_surface(small_config(tmp_path / "s.h5", "quantities=['plugins:slow_mlp']"))
    assert not (tmp_path / "s.h5").exists()


def test_the_evaluator_resolves_a_new_engine_and_leaves_the_given_one_alone(digits_train):
    from conftest import make_model
    from distland import directions as D

    model = make_model("mlp")
    ref = D.reference_weights(model)
    dirs = D.make_random(ref, 0, "filter", "biasbn", 1)
    given = Engine(batch_size=32, fold_bn=True, stream_data="auto")
    ev = SurfaceEvaluator(model, ref, dirs, {"train": digits_train}, given)
    assert given == Engine(batch_size=32, fold_bn=True, stream_data="auto")     # frozen, unchanged
    assert ev.engine == dataclasses.replace(given, fold_bn=False, stream_data="off")   # no conv→BN to fold
