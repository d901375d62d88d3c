"""Tests for distland.train: a real (tiny) training run on digits, exact resume, strict config, augmentation."""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Sequence

import pytest
import torch
import yaml

from distland.config import ConfigError, load
from distland.data import load_split
from distland.models import build_model
from distland.train import METRIC_COLUMNS, TrainConfig, add_subcommand, random_crop_flip, train

torch.set_num_threads(1)

BASE = {
    "model": "democnn",
    "data": {"name": "digits", "max_samples": 500},
    "lr": 0.05,
    "batch_size": 32,
    "weight_decay": 5e-4,
    "lr_milestones": [2],
    "epochs": 3,
    "device": "cpu",
    "num_threads": 1,
}


def make_config(tmp_path: Path, out: str, overrides: Sequence[str] = ()) -> TrainConfig:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(BASE))
    return load(TrainConfig, path, [f"out_dir={tmp_path / out}", *overrides])


def load_weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_trains_and_writes_everything(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = train(make_config(tmp_path, "run"))
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert tuple(rows[0]) == METRIC_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert json.loads((out / "metrics.json").read_text()) == [
        {k: (int(v) if k == "epoch" else float(v)) for k, v in r.items()} for r in rows]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0] - 0.2, losses
    assert float(rows[-1]["test_acc"]) > 0.3                      # chance is 0.1
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.05, 0.05, 0.005])   # milestone at epoch 2

    for name in ["final.pt", "last.pt", "train_config.yaml"] + [f"checkpoints/epoch_{k:04d}.pt" for k in range(4)]:
        assert (out / name).is_file(), name
    assert not list(out.rglob(".*.tmp"))
    assert yaml.safe_load((out / "train_config.yaml").read_text())["epochs"] == 3

    # Every checkpoint is a plain state_dict that loads strictly into a fresh model; the initial one is worse.
    x, y = load_split("digits", "test")
    losses_at = {}
    for k in (0, 3):
        model = build_model("democnn")
        model.load_state_dict(load_weights(out / f"checkpoints/epoch_{k:04d}.pt"))
        model.eval()
        with torch.no_grad():
            losses_at[k] = torch.nn.functional.cross_entropy(model(x), y).item()
    assert losses_at[3] < losses_at[0]
    final = load_weights(out / "final.pt")
    assert all(torch.equal(final[k], v) for k, v in load_weights(out / "checkpoints/epoch_0003.pt").items())

    # A finished run is not re-run.
    capsys.readouterr()
    mtime = (out / "final.pt").stat().st_mtime_ns
    train(make_config(tmp_path, "run"))
    assert "already trained" in capsys.readouterr().out
    assert (out / "final.pt").stat().st_mtime_ns == mtime


def test_resume_is_bit_exact(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Augmentation on (digits are 8×8, so 'auto' would be off) so that the resumed run must replay its random draws.
    straight = train(make_config(tmp_path, "straight", ["epochs=2", "augment=true"]))
    interrupted = train(make_config(tmp_path, "resumed", ["epochs=1", "augment=true"]))
    capsys.readouterr()
    resumed = train(make_config(tmp_path, "resumed", ["epochs=2", "augment=true"]))
    assert "resuming" in capsys.readouterr().out and resumed == interrupted

    a, b = load_weights(straight / "final.pt"), load_weights(resumed / "final.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    rows_a = list(csv.DictReader((straight / "metrics.csv").open()))
    rows_b = list(csv.DictReader((resumed / "metrics.csv").open()))
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(rows_a) == drop(rows_b)

    # Changing what an epoch computes on resume is refused.
    with pytest.raises(ConfigError, match="lr"):
        train(make_config(tmp_path, "resumed", ["epochs=3", "augment=true", "lr=0.3"]))


def test_strict_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(tmp_path, "x", ["learning_rate=0.1"])
    msg = str(err.value)
    assert "learning_rate" in msg and "lr_milestones" in msg and "weight_decay" in msg
    with pytest.raises(ConfigError, match="valid keys in data"):
        make_config(tmp_path, "x", ["data.split=test"])
    with pytest.raises(ConfigError, match="optimizer"):
        make_config(tmp_path, "x", ["optimizer=rmsprop"])
    with pytest.raises(ConfigError, match="augment"):
        make_config(tmp_path, "x", ["augment=maybe"])
    with pytest.raises(ConfigError, match="unknown model"):
        train(make_config(tmp_path, "x", ["model=no_such_net"]))


def test_cli_parses_and_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    add_subcommand(parser.add_subparsers(dest="command"))
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(BASE))
    args = parser.parse_args(["train", str(cfg), "--set", "epochs=1", "--set", f"out_dir={tmp_path / 'cli'}"])
    assert args.func(args) == 0 and (tmp_path / "cli" / "final.pt").is_file()
    args = parser.parse_args(["train", str(cfg), "--set", "bogus=1"])
    assert args.func(args) == 2
    assert "bogus" in capsys.readouterr().err


def test_random_crop_flip_matches_per_image_reference() -> None:
    x = torch.randn(16, 3, 32, 32)
    out = random_crop_flip(x, torch.Generator().manual_seed(1))
    # Replay the same draws and build each image the slow, obvious way.
    g = torch.Generator().manual_seed(1)
    oy = torch.randint(0, 9, (16,), generator=g)
    ox = torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        ref = padded[i, :, oy[i]:oy[i] + 32, ox[i]:ox[i] + 32]
        assert torch.equal(out[i], ref.flip(-1) if flip[i] else ref)
    assert 0 < int(flip.sum()) < 16 and out.is_contiguous()
