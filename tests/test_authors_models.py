"""The zoo against the paper authors' models (tomgoldstein/loss-landscape, ``cifar10/models``, names as in their
``cifar10/model_loader.py``): same state_dict keys, shapes and order, the same forward function, and their
checkpoints (``{'state_dict': ..., 'epoch': ..., 'acc': ...}``, DataParallel ``module.`` prefixes) load and run
through ``distland surface`` by their model names.

The reference below is a small independent re-implementation written from their published layer lists (module
names, widths, strides, the order of the concatenation, the fixed-size final average pool), not the zoo's code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import h5py
import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from distland import cli
from distland.checkpoint import apply_state_dict, load_state_dict
from distland.models import authors_layout, available, build_model

from conftest import plain_loss


# ------------------------------------------------------------------------------------- the reference models
class RefBlock(nn.Module):
    """conv{i}/bn{i} pairs (two 3×3 for a basic block; 1×1, 3×3 with the stride, 1×1 ×4 for a bottleneck), ReLU
    between them, the shortcut (empty Sequential, or 1×1 conv + BN when shapes change) added before the last ReLU."""

    def __init__(self, cin: int, planes: int, stride: int, bottleneck: bool, short: bool) -> None:
        super().__init__()
        if bottleneck:
            specs = [(cin, planes, 1, 1), (planes, planes, 3, stride), (planes, 4 * planes, 1, 1)]
        else:
            specs = [(cin, planes, 3, stride), (planes, planes, 3, 1)]
        for i, (a, b, k, s) in enumerate(specs, 1):
            setattr(self, f"conv{i}", nn.Conv2d(a, b, k, s, k // 2, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(b))
        self.n, self.short, cout = len(specs), short, specs[-1][1]
        if short:
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = x
        for i in range(1, self.n + 1):
            h = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(h))
            h = F.relu(h) if i < self.n else h
        return F.relu(h + self.shortcut(x) if self.short else h)


class RefResNet(nn.Module):
    def __init__(self, stem: int, widths: Sequence[int], counts: Sequence[int], bottleneck: bool, short: bool,
                 pool: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem)
        cin = stem
        for i, (w, n) in enumerate(zip(widths, counts)):
            blocks = []
            for j in range(n):
                blocks.append(RefBlock(cin, w, 1 if i == 0 or j > 0 else 2, bottleneck, short))
                cin = w * (4 if bottleneck else 1)
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.stages, self.pool = len(widths), pool
        self.linear = nn.Linear(cin, 10)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.stages + 1):
            h = getattr(self, f"layer{i}")(h)
        return self.linear(F.avg_pool2d(h, self.pool).view(h.size(0), -1))


class RefVGG(nn.Module):
    def __init__(self, cfg: Sequence) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        cin, size = 3, 32
        for c in cfg:
            if c == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
                size //= 2
            else:
                layers += [nn.Conv2d(cin, c, kernel_size=3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                cin = c
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(cin * size * size, cin), nn.BatchNorm1d(cin), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(cin, 10)

    def forward(self, x):
        return self.classifier(self.fc(self.features(x).view(x.size(0), -1)))


class RefDenseLayer(nn.Module):
    def __init__(self, cin: int, g: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * g, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(4 * g), nn.Conv2d(4 * g, g, 3, padding=1, bias=False)

    def forward(self, x):
        new = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([new, x], 1)  # the authors put the new maps first


class RefTransition(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class RefDenseNet(nn.Module):
    def __init__(self, counts=(6, 12, 24, 16), g: int = 32) -> None:
        super().__init__()
        c = 2 * g
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        for i, n in enumerate(counts, 1):
            setattr(self, f"dense{i}", nn.Sequential(*[RefDenseLayer(c + j * g, g) for j in range(n)]))
            c += n * g
            if i < 4:
                setattr(self, f"trans{i}", RefTransition(c, c // 2))
                c //= 2
        self.bn, self.linear = nn.BatchNorm2d(c), nn.Linear(c, 10)

    def forward(self, x):
        h = self.conv1(x)
        for i in (1, 2, 3):
            h = getattr(self, f"trans{i}")(getattr(self, f"dense{i}")(h))
        h = F.avg_pool2d(F.relu(self.bn(self.dense4(h))), 4)
        return self.linear(h.view(h.size(0), -1))


def _cifar(depth: int, k: int = 1, short: bool = True) -> nn.Module:
    n = (depth - 2) // 6
    return RefResNet(16 * k, (16 * k, 32 * k, 64 * k), (n, n, n), False, short, 8)


_IMAGENET = {18: (False, (2, 2, 2, 2)), 34: (False, (3, 4, 6, 3)), 50: (True, (3, 4, 6, 3)),
             101: (True, (3, 4, 23, 3)), 152: (True, (3, 8, 36, 3))}


def _imagenet(depth: int, short: bool = True) -> nn.Module:
    bottleneck, counts = _IMAGENET[depth]
    return RefResNet(64, (64, 128, 256, 512), counts, bottleneck, short, 4)


VGG_CFG = {"vgg9": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"],
           "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
           "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                     512, 512, 512, 512, "M"]}

# Every name of the authors' model_loader (plus their VGG-16/19, defined next to VGG-9).
REFERENCE = {
    "vgg9": lambda: RefVGG(VGG_CFG["vgg9"]), "vgg16": lambda: RefVGG(VGG_CFG["vgg16"]),
    "vgg19": lambda: RefVGG(VGG_CFG["vgg19"]), "densenet121": RefDenseNet,
    **{f"resnet{d}": (lambda d=d: _imagenet(d)) for d in _IMAGENET},
    **{f"resnet{d}_noshort": (lambda d=d: _imagenet(d, False)) for d in _IMAGENET},
    "resnet20": lambda: _cifar(20), "resnet20_noshort": lambda: _cifar(20, short=False),
    "resnet32_noshort": lambda: _cifar(32, short=False), "resnet44_noshort": lambda: _cifar(44, short=False),
    "resnet50_16_noshort": lambda: _cifar(50, short=False),
    "resnet56": lambda: _cifar(56), "resnet56_noshort": lambda: _cifar(56, short=False),
    "resnet110": lambda: _cifar(110), "resnet110_noshort": lambda: _cifar(110, short=False),
    **{f"wrn56_{k}": (lambda k=k: _cifar(56, k)) for k in (2, 4, 8)},
    **{f"wrn56_{k}_noshort": (lambda k=k: _cifar(56, k, False)) for k in (2, 4, 8)},
    "wrn110_2_noshort": lambda: _cifar(110, 2, False), "wrn110_4_noshort": lambda: _cifar(110, 4, False),
}
# The paper's own models (its figures and tables).
PAPER = ["resnet20", "resnet56", "resnet110", "resnet20_noshort", "resnet56_noshort", "resnet110_noshort",
         "wrn56_2", "wrn56_4", "wrn56_8", "wrn56_2_noshort", "wrn56_4_noshort", "wrn56_8_noshort",
         "vgg9", "densenet121"]


def _layout(model: nn.Module) -> List[Tuple[str, Tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def _randomized(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and BN statistics, so that equal outputs mean an equal function."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, v in model.state_dict().items():
            if key.endswith("running_var"):
                v.copy_(torch.rand(v.shape, generator=g) + 0.5)
            elif key.endswith("running_mean") or key.endswith("bias"):
                v.copy_(torch.randn(v.shape, generator=g) * 0.1)
            elif v.is_floating_point():
                fan_in = max(1, v[0].numel()) if v.dim() > 1 else 1
                v.copy_(torch.randn(v.shape, generator=g) * (2.0 / fan_in) ** 0.5 if v.dim() > 1
                        else torch.rand(v.shape, generator=g) + 0.5)
    return model.eval()


# ------------------------------------------------------------------------------------------------- tests
def test_every_authors_model_is_in_the_zoo_and_marked():
    zoo = available()
    assert set(REFERENCE) <= set(zoo)
    marked = {name for name in zoo if authors_layout(name)}
    assert marked == set(REFERENCE)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_state_dict_keys_shapes_and_order_match_the_authors(name):
    with torch.device("meta"):  # shapes only: the 50 M-parameter nets cost nothing
        ours, theirs = build_model(name), REFERENCE[name]()
    assert _layout(ours) == _layout(theirs)
    # the authors' direction files list tensors in parameter order
    assert [k for k, _ in ours.named_parameters()] == [k for k, _ in theirs.named_parameters()]


@pytest.mark.parametrize("name", ["resnet20", "resnet20_noshort", "resnet32_noshort", "wrn56_2", "resnet18",
                                  "resnet50_noshort", "vgg9", "vgg16", "densenet121"])
def test_forward_equals_the_authors_architecture(name):
    theirs = _randomized(REFERENCE[name](), seed=len(name))
    ours = build_model(name).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = theirs(x), ours(x)
    assert want.std() > 1e-3  # a non-degenerate output
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def _authors_checkpoint(path: Path, name: str, seed: int = 0, legacy: bool = False) -> nn.Module:
    """What the authors' training script saves: {'state_dict', 'epoch', 'acc'}, here under DataParallel's
    ``module.`` prefix; ``legacy`` drops BN's num_batches_tracked, as PyTorch < 0.4.1 wrote no such key."""
    theirs = _randomized(REFERENCE[name](), seed)
    state = {f"module.{k}": v for k, v in theirs.state_dict().items()
             if not (legacy and k.endswith("num_batches_tracked"))}
    torch.save({"state_dict": state, "epoch": 300, "acc": 93.27}, path)
    return theirs


@pytest.mark.parametrize("legacy", [False, True])
def test_authors_checkpoint_loads_weights_only(tmp_path, legacy):
    path = tmp_path / "model_300.t7"
    theirs = _authors_checkpoint(path, "resnet20", legacy=legacy)
    state = load_state_dict(path)  # torch.load(weights_only=True) inside
    ours = build_model("ResNet20")  # the authors' factory name works too
    apply_state_dict(ours, state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_a_wrong_key_is_still_refused(tmp_path):
    path = tmp_path / "bad.t7"
    theirs = REFERENCE["resnet20"]()
    state = {("head." + k[len("linear."):] if k.startswith("linear.") else k): v
             for k, v in theirs.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 1, "acc": 10.0}, path)
    with pytest.raises(ValueError, match="missing keys.*linear.weight"):
        apply_state_dict(build_model("resnet20"), load_state_dict(path))


@pytest.mark.parametrize("name", ["resnet56_noshort", "wrn56_2", "vgg9", "densenet121"])
def test_authors_checkpoint_runs_through_distland_surface_by_their_name(tmp_path, name, capsys):
    ckpt = tmp_path / "model_300.t7"
    theirs = _authors_checkpoint(ckpt, name, seed=3)
    out = tmp_path / "surface.h5"
    config = {"model": name, "checkpoint": str(ckpt),
              "data": {"name": "synthetic", "max_samples": 8, "options": {"num_samples": 8}},
              "grid": {"x": [0.0, 0.5, 2], "y": None}, "engine": {"device": "cpu", "threads": 1},
              "sweep": {"progress": False}, "output": str(out)}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["surface", str(path)]) == 0
    with h5py.File(out, "r") as f:
        loss = np.asarray(f["train_loss"])
    from distland.data import load_split

    x, y = load_split("synthetic", "train", 8, num_samples=8)
    assert loss[0] == pytest.approx(plain_loss(theirs, x, y)[0], rel=1e-4)  # α = 0 is their model
    assert np.isfinite(loss).all() and loss[1] != loss[0]


def test_paper_configs_name_authors_models():
    root = Path(__file__).resolve().parents[1] / "configs" / "paper"
    names = set()
    for path in root.rglob("*.yaml"):
        model = (yaml.safe_load(path.read_text()) or {}).get("model")
        if model:
            names.add(model)
    assert names and names <= set(PAPER)
    assert all(authors_layout(n) for n in names)


def test_an_old_distland_resnet_checkpoint_with_fc_still_loads(tmp_path):
    """distland's ResNets called the classifier `fc` before adopting the authors' `linear`: such a checkpoint is
    renamed (every key then matches exactly) and loads; nothing is dropped."""
    model = _randomized(build_model("resnet20"), seed=5)
    old = {("fc." + k[len("linear."):] if k.startswith("linear.") else k): v for k, v in model.state_dict().items()}
    torch.save(old, tmp_path / "old.pt")
    fresh = build_model("resnet20")
    apply_state_dict(fresh, load_state_dict(tmp_path / "old.pt"))
    assert torch.equal(fresh.linear.weight, model.linear.weight)
    old["fc.extra"] = torch.zeros(1)  # one key too many: refused, not silently dropped
    torch.save(old, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match="unexpected keys"):
        apply_state_dict(build_model("resnet20"), load_state_dict(tmp_path / "extra.pt"))
