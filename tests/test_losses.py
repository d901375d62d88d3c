"""Loss functions per point and in training: cross-entropy (default), the paper authors' MSE, plug-ins (regression
without accuracy, classification with it), and what is refused."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import make_model, small_config
from distland.config import ConfigError, load
from distland.evaluate import split_loss
from distland.losses import resolve
from distland.surfacefile import SurfaceError, read
from distland.sweep import run_surface
from distland.train import TrainConfig, train


@pytest.fixture(autouse=True)
def opted_in(monkeypatch):
    """tests/plugins.py is a trusted plug-in module here (as a user would list it in `plugins:`)."""
    monkeypatch.setenv("DISTLAND_PLUGINS", "plugins")


def test_mse_is_the_authors_definition(digits_train):
    """Their tool: nn.MSELoss() (mean over the batch and the 10 classes) of softmax(output) against one-hot
    targets, times the batch size, summed over batches, over the number of samples."""
    x, y = digits_train
    model = make_model("democnn")
    with torch.no_grad():
        probs = F.softmax(model(x).double(), dim=1)
        one_hot = torch.zeros_like(probs).scatter_(1, y[:, None], 1.0)
        expected = sum(nn.MSELoss()(probs[s:s + 32], one_hot[s:s + 32]).item() * len(y[s:s + 32])
                       for s in range(0, len(y), 32)) / len(y)
        accuracy = 100.0 * (probs.argmax(1) == y).double().mean().item()
    for batch in (7, 64, 1000):
        loss, acc = split_loss(model, x, y, batch, resolve("mse"))
        assert loss == pytest.approx(expected, rel=1e-6) and acc == pytest.approx(accuracy)
    assert split_loss(model, x, y, 64)[0] != pytest.approx(expected, rel=1e-2)   # not the cross-entropy


def test_surface_with_mse_and_its_identity(tmp_path, digits_train):
    out = tmp_path / "mse.h5"
    run_surface(small_config(out, "loss=mse", "grid.x=[0, 1, 2]", "grid.y=null"))
    data = read(str(out))
    x, y = digits_train
    from distland.models import build_model

    torch.manual_seed(0)
    theta = build_model("democnn").eval()   # the job's θ*: the seeded initialisation
    loss, acc = split_loss(theta, x, y, 50, resolve("mse"))
    assert data.metrics["train_loss"][0] == pytest.approx(loss, rel=1e-6)
    assert data.metrics["train_acc"][0] == pytest.approx(acc)
    with h5py.File(out, "r") as f:
        assert f.attrs["quantity.loss"] == '{"loss": "mse"}'
    # A file of another loss is not resumed (its values would mix two criteria).
    with pytest.raises(SurfaceError, match="loss computed with other settings"):
        run_surface(small_config(out, "grid.x=[0, 1, 2]", "grid.y=null"))


def test_plug_in_regression_loss_has_no_accuracy(tmp_path):
    out = tmp_path / "reg.h5"
    cfg = small_config(out, "model=plugins:linear_regressor", "data.name=plugins:regression_data",
                       "loss=plugins:squared_error", "data.max_samples=0", "grid.x=[-1, 1, 3]", "grid.y=null")
    run_surface(cfg)
    data = read(str(out))
    assert set(data.metrics) == {"train_loss"}
    from plugins import linear_regressor, regression_data

    x, y = regression_data("train")
    with torch.no_grad():
        expected = ((linear_regressor()(x) - y) ** 2).sum(1).double().mean().item()
    assert data.metrics["train_loss"][1] == pytest.approx(expected, rel=1e-6)   # x = 0 is θ*
    assert len(set(data.metrics["train_loss"].tolist())) == 3   # the direction moves the regressor


def test_plug_in_loss_with_accuracy(tmp_path, digits_train):
    out = tmp_path / "margin.h5"
    run_surface(small_config(out, "loss=plugins:margin_loss", "grid.x=[0, 1, 2]", "grid.y=null"))
    data = read(str(out))
    assert set(data.metrics) == {"train_loss", "train_acc"}
    assert 0 <= data.metrics["train_acc"][0] <= 100 and data.metrics["train_loss"][0] > 0


def test_bad_losses_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="loss: 'hinge' is not valid; choose cross_entropy, mse or a plug-in"):
        small_config(tmp_path / "s.h5", "loss=hinge")
    with pytest.raises(ValueError, match="one loss per sample"):
        run_surface(small_config(tmp_path / "s.h5", "loss=plugins:batch_mean_loss"))
    with pytest.raises(ConfigError, match="loss: 'l1' is not valid"):
        load(TrainConfig, None, ["loss=l1"])


@pytest.mark.parametrize("loss", ["mse", "plugins:squared_error"])
def test_training_with_other_losses(tmp_path, loss):
    regression = loss.startswith("plugins")
    sets = [f"loss={loss}", "epochs=3", "lr_milestones=[]", "save_every=0", f"out_dir={tmp_path / 'run'}",
            "batch_size=32", "device=cpu", "lr=0.01"]
    sets += (["model=plugins:linear_regressor", "data.name=plugins:regression_data"] if regression
             else ["model=mlp", "data.max_samples=200"])
    out = train(load(TrainConfig, None, sets))
    rows = (out / "metrics.csv").read_text().splitlines()
    first, last = rows[1].split(","), rows[-1].split(",")
    assert float(last[2]) < float(first[2])   # the training loss fell
    assert (last[3] == "nan") == regression   # no accuracy for the regression plug-in
    assert np.isfinite(float(last[4]))
