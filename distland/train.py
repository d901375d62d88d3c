"""Train the networks whose landscapes the paper plots: one device, whole-tensor data, resumable and reproducible.

``distland train CONFIG [--set key=value ...]`` writes, under ``out_dir``: ``checkpoints/epoch_{k:04d}.pt``
(plain state_dicts; ``epoch_0000`` is the initialization, for trajectory plots), ``final.pt``, ``metrics.csv`` /
``metrics.json`` (one row per epoch), ``train_config.yaml`` and ``last.pt``, the resume point. Running the same
command again continues from ``last.pt``; a finished run is not repeated. On CPU a resumed run is bit-identical to
an uninterrupted one, because every random draw is either restored from ``last.pt`` or derived from (seed, epoch).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, DataSource, check_device, check_loss, load, to_dict, to_yaml
from .data import load_splits
from .engine import pick_device
from .evaluate import CROSS_ENTROPY, split_loss
from .losses import Criterion, resolve
from .models import build_model

METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds")
# Keys that may differ when a run is resumed: they change where or how long it runs, not what one epoch computes.
RESUMABLE_CHANGES = ("epochs", "save_every", "out_dir", "device", "num_threads")
PAD = 4                  # random-crop padding of the standard CIFAR recipe
AUTO_AUGMENT_SIZE = 32   # augment: auto turns augmentation on for images at least this large


@dataclass
class TrainConfig:
    """One training run. Defaults are the paper's CIFAR-10 recipe; model and data default to the CPU demo."""

    model: str = "democnn"
    plugins: List[str] = field(default_factory=list)   # opted-in plug-in modules (see the surface config)
    model_args: Dict[str, Any] = field(default_factory=dict)
    loss: str = "cross_entropy"     # cross_entropy | mse | "package.module:function" (see distland.losses)
    data: DataSource = field(default_factory=DataSource)   # both its train and its test split are loaded
    optimizer: str = "sgd"          # sgd (momentum, optionally Nesterov) | adam
    lr: float = 0.1
    momentum: float = 0.9           # sgd only
    nesterov: bool = True           # sgd only
    weight_decay: float = 5e-4
    batch_size: int = 128
    epochs: int = 300
    lr_milestones: List[int] = field(default_factory=lambda: [150, 225, 275])
    lr_gamma: float = 0.1           # lr *= lr_gamma after each milestone epoch
    augment: Any = "auto"           # true | false | auto (on for images >= 32x32): random crop (pad 4) + h-flip
    seed: int = 0
    save_every: int = 1             # write checkpoints/epoch_k.pt every k epochs (0: initial and last only)
    out_dir: str = "runs/train"
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    num_threads: int = 0            # torch CPU threads; 0 = torch's default

    def validate(self) -> "TrainConfig":
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer: {self.optimizer!r} is not valid; choose one of sgd, adam")
        if not self.model:
            raise ConfigError("model must name a zoo model or a plug-in 'package.module:function'")
        if not self.data.name:
            raise ConfigError("data.name must name a data set (digits, synthetic, cifar10 or a plug-in)")
        if not self.lr > 0 or not self.lr_gamma > 0:
            raise ConfigError(f"lr and lr_gamma must be > 0, got lr={self.lr}, lr_gamma={self.lr_gamma}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.optimizer == "sgd" and self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov: true needs momentum > 0 (set momentum, or nesterov: false)")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ConfigError(f"batch_size and epochs must be >= 1, got {self.batch_size} and {self.epochs}")
        if any(m < 1 for m in self.lr_milestones) or sorted(set(self.lr_milestones)) != self.lr_milestones:
            raise ConfigError(f"lr_milestones must be increasing epochs >= 1, got {self.lr_milestones}")
        if self.augment not in (True, False, "auto"):
            raise ConfigError(f"augment must be true, false or auto, got {self.augment!r}")
        if self.save_every < 0 or self.num_threads < 0 or self.data.max_samples < 0:
            raise ConfigError("save_every, num_threads and data.max_samples must be >= 0")
        if not self.out_dir:
            raise ConfigError("out_dir must name the folder for checkpoints and metrics")
        check_device("device", self.device)
        check_loss("loss", self.loss)
        return self


# --------------------------------------------------------------------------------------------------- pieces
def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = PAD) -> torch.Tensor:
    """Per-image random ``pad``-pixel-shift crop and horizontal flip of an NCHW batch, as one gather.

    Padding is zeros, i.e. the mean pixel of standardized data (torchvision pads raw pixels with black instead).
    """
    n, _, h, w = x.shape
    dev = x.device
    # Draws come from a CPU generator so that CPU and GPU runs see the same augmentation for the same seed.
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
    rows = oy[:, None] + torch.arange(h, device=dev)
    col = torch.arange(w, device=dev)
    cols = ox[:, None] + torch.where(flip[:, None], w - 1 - col, col)      # reading columns backwards = a flip
    padded = F.pad(x, (pad, pad, pad, pad))
    out = padded[torch.arange(n, device=dev)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # N,H,W,C
    return out.permute(0, 3, 1, 2).contiguous()


def wants_augment(setting: Any, x: torch.Tensor) -> bool:
    """Resolve ``augment``; crops and flips only make sense for NCHW images (and hurt 8×8 digits)."""
    if setting == "auto":
        return x.ndim == 4 and min(x.shape[-2:]) >= AUTO_AUGMENT_SIZE
    if setting and x.ndim != 4:
        raise ConfigError(f"augment: true needs NCHW images, but the data has shape {tuple(x.shape[1:])}")
    return bool(setting)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator for one epoch's shuffle and augmentation.

    It is a function of (seed, epoch) alone, so a resumed run needs no generator state to replay an epoch.
    """
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                batch_size: int, generator: torch.Generator, augment: bool, criterion: Criterion = CROSS_ENTROPY
                ) -> Tuple[float, float]:
    """One pass over shuffled minibatches in train mode; returns (mean loss, accuracy) seen during the pass
    (accuracy NaN when the criterion has none)."""
    model.train()
    n = x.shape[0]
    order = torch.randperm(n, generator=generator).to(x.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    seen = 0
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if idx.numel() < 2 and seen:   # train-mode BatchNorm cannot normalize a batch of one: skip that leftover
            break
        xb, yb = x[idx], y[idx]
        if augment:
            xb = random_crop_flip(xb, generator)
        out = model(xb)
        loss = criterion.mean(out, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulate on the device: a .item() per step would stall the GPU pipeline.
        loss_sum += loss.detach().double() * idx.numel()
        if criterion.correct is not None:
            correct += criterion.correct(out.detach(), yb).sum()
        seen += idx.numel()
    return loss_sum.item() / seen, correct.item() / seen if criterion.correct is not None else float("nan")


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             criterion: Criterion = CROSS_ENTROPY) -> Tuple[float, float]:
    """Mean loss and accuracy as a fraction (NaN without one), in eval mode (BatchNorm uses its running
    statistics)."""
    loss, acc_percent = split_loss(model.eval(), x, y, batch_size, criterion)
    return loss, acc_percent / 100.0 if acc_percent is not None else float("nan")


# --------------------------------------------------------------------------------------------------- files
def cpu_state(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The model's state_dict as CPU tensors, so checkpoints load anywhere without map_location."""
    return OrderedDict((k, v.detach().cpu().clone()) for k, v in model.state_dict().items())


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a kill mid-write never leaves a truncated file behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_metrics(rows: List[Dict[str, float]], out: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buf.getvalue(), out / "metrics.csv")
    atomic_write_text(json.dumps(rows, indent=1) + "\n", out / "metrics.json")


def read_resume_point(out: Path) -> Optional[Dict[str, Any]]:
    path = out / "last.pt"
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a resume file we cannot read must not be silently ignored: it would restart training
        raise ConfigError(f"{path} cannot be read ({type(e).__name__}: {str(e)[:200]}); delete it to start "
                          "over, or point out_dir elsewhere") from None


def check_resumable(cfg: TrainConfig, saved: Dict[str, Any], path: Path) -> None:
    """Refuse to continue a run under a config that would change what its epochs compute."""
    now = to_dict(cfg)
    changed = sorted(k for k in set(now) | set(saved) if k not in RESUMABLE_CHANGES and now.get(k) != saved.get(k))
    if changed:
        detail = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ConfigError(f"{path} was written by a run with a different config ({detail}). Only "
                          f"{', '.join(RESUMABLE_CHANGES)} may change on resume; use a new out_dir to start over")


def rng_state() -> Dict[str, Any]:
    state: Dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------------------------------- driver
def load_data(cfg: TrainConfig) -> Tuple[Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    """The train and test splits as whole tensors (errors in the data section become config errors)."""
    try:
        splits = load_splits(cfg.data, ("train", "test"), class_targets=":" not in cfg.loss, allow=cfg.plugins)
    except (ValueError, FileNotFoundError) as e:   # unknown name, missing or corrupt cifar10 root
        raise ConfigError(f"data: {e}") from None
    return splits["train"], splits["test"]


def train(cfg: TrainConfig) -> Path:
    """Train ``cfg.model`` as configured and return ``out_dir``; resumes from ``out_dir/last.pt`` if present."""
    cfg.validate()
    out = Path(cfg.out_dir)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    try:
        device = torch.device(pick_device(cfg.device, 0))
    except RuntimeError as e:   # CUDA asked for, none visible
        raise ConfigError(str(e).replace("engine.device", "device")) from None
    resume = read_resume_point(out)
    if resume is not None:
        check_resumable(cfg, resume["config"], out / "last.pt")
        if resume["epoch"] >= cfg.epochs and (out / "final.pt").is_file():
            print(f"{out}: already trained ({resume['epoch']} epochs, {cfg.epochs} asked); nothing to do",
                  flush=True)
            return out

    torch.manual_seed(cfg.seed)
    try:
        model = build_model(cfg.model, allow=cfg.plugins, **cfg.model_args).to(device)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model: {e}") from None
    try:
        criterion = resolve(cfg.loss, cfg.plugins)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    optimizer = make_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.lr_milestones, cfg.lr_gamma)
    (x_train, y_train), (x_test, y_test) = load_data(cfg)
    augment = wants_augment(cfg.augment, x_train)
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_test, y_test = x_test.to(device), y_test.to(device)
    eval_batch = max(cfg.batch_size, 1024)   # no gradients kept: larger batches are free and faster
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True   # fixed shapes; exact resume is promised on CPU only

    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(to_yaml(cfg), out / "train_config.yaml")
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        set_rng_state(resume["rng"])
        start, metrics = int(resume["epoch"]), list(resume["metrics"])
        print(f"resuming {out} from epoch {start} (last.pt) to {cfg.epochs}", flush=True)
    else:
        start, metrics = 0, []
        atomic_save(cpu_state(model), ckpt_dir / "epoch_0000.pt")
        print(f"training {cfg.model} on {cfg.data.name} ({x_train.shape[0]} train / {x_test.shape[0]} test, "
              f"augment {'on' if augment else 'off'}) on {device} for {cfg.epochs} epochs -> {out}", flush=True)

    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        gen = epoch_generator(cfg.seed, epoch)
        train_loss, train_acc = train_epoch(model, optimizer, x_train, y_train, cfg.batch_size, gen, augment,
                                            criterion)
        test_loss, test_acc = evaluate(model, x_test, y_test, eval_batch, criterion)
        scheduler.step()
        row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
               "test_loss": test_loss, "test_acc": test_acc, "seconds": round(time.perf_counter() - t0, 3)}
        metrics.append(row)
        print(f"epoch {epoch}/{cfg.epochs}  lr {lr:.4g}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
              f"test loss {test_loss:.4f} acc {test_acc:.4f}  {row['seconds']:.1f}s", flush=True)
        if epoch == cfg.epochs or (cfg.save_every and epoch % cfg.save_every == 0):
            atomic_save(cpu_state(model), ckpt_dir / f"epoch_{epoch:04d}.pt")
        write_metrics(metrics, out)
        # last.pt goes last: if we die before it, the epoch is simply redone and every file above rewritten.
        atomic_save({"epoch": epoch, "model": cpu_state(model), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "rng": rng_state(), "metrics": metrics,
                     "config": to_dict(cfg)}, out / "last.pt")

    atomic_save(cpu_state(model), out / "final.pt")
    print(f"wrote {out / 'final.pt'}", flush=True)
    return out


# --------------------------------------------------------------------------------------------------- CLI
def ensure_checkpoint(cfg: Any) -> None:
    """Training on demand for a surface config (the demo uses it): when ``cfg.train`` names the training config
    that produces ``cfg.checkpoint`` and the checkpoint does not exist yet, train it once, here."""
    if not (cfg.train and cfg.checkpoint) or Path(cfg.checkpoint).exists():
        return
    from .presets import HERE as PRESETS

    path = Path(cfg.train)
    if not path.exists() and not path.is_absolute() and (PRESETS / path).is_file():
        path = PRESETS / path  # a built-in preset's name (the demo)
    print(f"distland: {cfg.checkpoint} does not exist; training it first with {path}", file=sys.stderr)
    produced = train(load(TrainConfig, path))
    if not Path(cfg.checkpoint).exists():
        raise ConfigError(f"training with {cfg.train} wrote {produced}, not the checkpoint {cfg.checkpoint}; "
                          "make `checkpoint` point at the training run's final.pt")


def add_subcommand(subparsers: Any) -> None:
    """Register ``train CONFIG [--set key=value ...]`` on an argparse subparsers object."""
    from .cli import add_overrides

    p = subparsers.add_parser(
        "train", help="train a model with the paper's recipe (resumable)",
        description="Train a model and write checkpoints, metrics and a resume point under out_dir. "
                    "Re-running the same command resumes; a finished run is not repeated.")
    p.add_argument("config", metavar="CONFIG", help="training config YAML (e.g. configs/small/train/*.yaml)")
    add_overrides(p, "epochs=5")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    """Entry point of the ``train`` subcommand; config problems exit with status 2 and a one-line message."""
    try:
        train(load(TrainConfig, args.config, args.overrides))
    except ConfigError as e:
        print(f"distland train: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m distland.train CONFIG [--set ...]``, the same as ``distland train``."""
    from .cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
