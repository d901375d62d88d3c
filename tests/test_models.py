"""The CIFAR model zoo: shapes, parameter counts, skip connections by construction, and BN-foldable layout."""
from __future__ import annotations

import copy
from typing import Dict, List, Tuple

import pytest
import torch
from torch import nn

from distland.models import available, build_model, count_parameters
from distland.models.resnet import BasicBlock, CifarResNet

ZOO = [
    "resnet20", "resnet56", "resnet110", "resnet20_noshort", "resnet56_noshort", "resnet110_noshort",
    "wrn56_2", "wrn56_4", "wrn56_8", "wrn56_2_noshort", "wrn56_4_noshort", "wrn56_8_noshort",
    "vgg9", "densenet121",
]
# The rest of the authors' loss-landscape models (tests/test_authors_models.py checks their layout).
AUTHORS_EXTRA = [
    "resnet32_noshort", "resnet44_noshort", "resnet50_16_noshort", "wrn110_2_noshort", "wrn110_4_noshort",
    "vgg16", "vgg19", *[f"resnet{d}{s}" for d in (18, 34, 50, 101, 152) for s in ("", "_noshort")],
]
# Partners of the authors' resnet32/44_noshort from the same factory (configs/small compares depth 32); not the
# authors' models, so not marked as their layout.
SAME_FACTORY = ["resnet32", "resnet44"]
ZOO_MODULES = ("distland.models.resnet", "distland.models.vgg", "distland.models.densenet")


def resnet_params(depth: int, k: int = 1, shortcut: bool = True, classes: int = 10) -> int:
    """Parameter count of a CIFAR ResNet / WRN from the architecture alone.

    Stem: 3×3 conv 3→c1 (27·c1) + BN (2·c1). Stage widths c1, c2, c3 = 16k, 32k, 64k with n = (depth-2)/6 basic
    blocks each; a block cin→c has 9·cin·c + 9·c² conv weights and 2 BNs (4·c). Stages 2 and 3 change width
    in their first block, whose shortcut is then a 1×1 conv + BN (cin·c + 2·c); _noshort nets have none.
    Classifier: 64k·classes + classes.
    """
    n = (depth - 2) // 6
    c1, c2, c3 = 16 * k, 32 * k, 64 * k
    total = 27 * c1 + 2 * c1
    for cin, c in ((c1, c1), (c1, c2), (c2, c3)):
        total += 9 * cin * c + 9 * c * c + 4 * c  # first block of the stage
        total += (n - 1) * (18 * c * c + 4 * c)  # the other n-1 blocks
        if shortcut and cin != c:
            total += cin * c + 2 * c
    return total + c3 * classes + classes


def densenet_params(blocks=(6, 12, 24, 16), growth: int = 32, classes: int = 10) -> int:
    """DenseNet-BC count: stem 3×3 conv 3→2g; a layer at cin has BN(2·cin) + 1×1 conv cin·4g + BN(2·4g) +
    3×3 conv 9·4g·g; a transition at cin has BN(2·cin) + 1×1 conv cin·(cin/2); final BN + linear."""
    c = 2 * growth
    total = 27 * c
    for i, n in enumerate(blocks):
        for _ in range(n):
            total += 2 * c + c * 4 * growth + 2 * 4 * growth + 9 * 4 * growth * growth
            c += growth
        if i < len(blocks) - 1:
            total += 2 * c + c * (c // 2)
            c //= 2
    return total + 2 * c + c * classes + classes


# Exact counts, each derived from the arithmetic above (and cross-checked against it in a test below).
EXPECTED_PARAMS: Dict[str, int] = {
    # ResNet-20: 464 stem + 14,016 stage 1 + 51,648 stage 2 (incl. 576 projection)
    #            + 205,696 stage 3 (incl. 2,176 projection) + 650 fc; published ≈ 0.27 M
    "resnet20": 272_474,
    "resnet56": 855_770,      # published ≈ 0.85 M
    "resnet110": 1_730_714,   # published ≈ 1.7 M
    # _noshort: the same minus the two projection shortcuts (16·32+64 + 32·64+128 = 2,752)
    "resnet20_noshort": 269_722,
    "resnet56_noshort": 853_018,
    "resnet110_noshort": 1_727_962,
    # WRN-56-k: every width ×k, so conv weights grow ≈ k² × ResNet-56's; _noshort drops the two projections
    # (32k·64k + 128k + 16k·32k + 64k weights and BN parameters)
    "wrn56_2": 3_412_394,
    "wrn56_4": 13_628_234,
    "wrn56_8": 54_470_282,
    "wrn56_2_noshort": 3_401_770,
    "wrn56_4_noshort": 13_586_506,
    "wrn56_8_noshort": 54_304_906,
    # VGG-9: conv weights 9·(3·64 + 64·64 + 64·128 + 128·128 + 128·256 + 2·256·256) = 1,734,336 + biases 1,152
    #        (the authors' convs carry them), 7 BNs 2·(2·64 + 2·128 + 3·256) = 2,304, FC 4096·256 + 256 = 1,048,832
    #        + BN 512, classifier 256·10 + 10 = 2,570 → 2,789,706
    "vgg9": 2_789_706,
    # DenseNet-121 (CIFAR, growth 32, compression 0.5): published ≈ 7.0 M
    "densenet121": 6_956_298,
}
PUBLISHED_MILLIONS = {"resnet20": 0.27, "resnet56": 0.85, "resnet110": 1.7, "densenet121": 7.0}


def test_zoo_is_complete() -> None:
    zoo = available()
    assert set(ZOO) <= set(zoo)
    ours = {name for name, fn in zoo.items() if fn.__module__ in ZOO_MODULES}
    assert ours == set(ZOO) | set(AUTHORS_EXTRA) | set(SAME_FACTORY), "a zoo model is registered but not covered by these tests"


# Published CIFAR-10 counts of the "ImageNet-layout" ResNets (3×3 stem, no max-pool, 10 classes), and the
# depth-6n+2 arithmetic for the other CIFAR nets.
EXTRA_PARAMS: Dict[str, int] = {"resnet18": 11_173_962, "resnet34": 21_282_122, "resnet50": 23_520_842,
                                "resnet101": 42_512_970, "resnet152": 58_156_618,
                                "resnet32": resnet_params(32), "resnet44": resnet_params(44),
                                "resnet32_noshort": resnet_params(32, shortcut=False),
                                "resnet44_noshort": resnet_params(44, shortcut=False),
                                "resnet50_16_noshort": resnet_params(50, shortcut=False),
                                "wrn110_2_noshort": resnet_params(110, 2, shortcut=False),
                                "wrn110_4_noshort": resnet_params(110, 4, shortcut=False)}


@pytest.mark.parametrize("name", sorted(EXTRA_PARAMS))
def test_parameter_count_of_the_other_authors_models(name: str) -> None:
    with torch.device("meta"):
        assert count_parameters(build_model(name)) == EXTRA_PARAMS[name]


def test_names_are_case_insensitive_and_aliases_resolve() -> None:
    from distland.models import aliases_of, resolve

    assert resolve("ResNet56") == "resnet56" and resolve("WRN56_2_noshort") == "wrn56_2_noshort"
    assert resolve("VGG9") == "vgg9" and resolve("DenseNet121") == "densenet121"
    assert "ResNet50_16_noshort" in aliases_of("resnet50_16_noshort")
    assert type(build_model("ResNet20")) is type(build_model("resnet20"))


@pytest.mark.parametrize("name", ZOO)
def test_output_shape(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet20", "wrn56_2_noshort", "vgg9", "densenet121"])
def test_num_classes_and_in_channels(name: str) -> None:
    model = build_model(name, num_classes=7, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name", ZOO)
def test_parameter_count(name: str) -> None:
    assert count_parameters(build_model(name)) == EXPECTED_PARAMS[name]
    if name in PUBLISHED_MILLIONS:
        assert EXPECTED_PARAMS[name] / 1e6 == pytest.approx(PUBLISHED_MILLIONS[name], rel=0.03)


def test_expected_counts_follow_from_the_arithmetic() -> None:
    for depth in (20, 56, 110):
        assert EXPECTED_PARAMS[f"resnet{depth}"] == resnet_params(depth)
        assert EXPECTED_PARAMS[f"resnet{depth}_noshort"] == resnet_params(depth, shortcut=False)
    for k in (2, 4, 8):
        assert EXPECTED_PARAMS[f"wrn56_{k}"] == resnet_params(56, k)
        assert EXPECTED_PARAMS[f"wrn56_{k}_noshort"] == resnet_params(56, k, shortcut=False)
    assert EXPECTED_PARAMS["densenet121"] == densenet_params()


def _block_inputs(model: nn.Module, x: torch.Tensor) -> List[Tuple[nn.Module, torch.Tensor]]:
    """Every residual block of ``model`` paired with the input it saw in a forward pass of ``x``."""
    seen: List[Tuple[nn.Module, torch.Tensor]] = []
    handles = [m.register_forward_pre_hook(lambda mod, args: seen.append((mod, args[0].detach().clone())))
               for m in model.modules() if isinstance(m, BasicBlock)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("name,depth", [("resnet20", 20), ("resnet56", 56), ("resnet110", 110),
                                        ("wrn56_2", 56), ("wrn56_4", 56)])
def test_noshort_blocks_have_no_skip_path(name: str, depth: int) -> None:
    """Silencing a block's residual branch (the output of its last BN) must silence the block only without a skip."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for variant, shortcut in ((name, True), (f"{name}_noshort", False)):
        model = build_model(variant).eval()
        blocks = _block_inputs(model, x)
        assert len(blocks) == 3 * ((depth - 2) // 6)  # 3n blocks, all visited
        for block, inp in blocks:
            handle = block.bn2.register_forward_hook(lambda mod, args, out: torch.zeros_like(out))
            with torch.no_grad():
                out = block(inp)
            handle.remove()
            if shortcut:
                assert out.abs().sum() > 0, "a normal block must pass its input through the shortcut"
                if out.shape == inp.shape:  # identity shortcut: the block reduces to ReLU(input)
                    torch.testing.assert_close(out, torch.relu(inp))
            else:
                assert torch.count_nonzero(out) == 0, "a _noshort block leaked its input around the branch"


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_noshort_has_no_projection_or_identity_modules(depth: int) -> None:
    normal = build_model(f"resnet{depth}")
    noshort = build_model(f"resnet{depth}_noshort")
    convs = lambda m: [c for c in m.modules() if isinstance(c, nn.Conv2d)]  # noqa: E731
    # stem + 2 per block = depth - 1 convs; the normal net adds the two 1×1 projections
    assert len(convs(noshort)) == depth - 1
    assert len(convs(normal)) == depth + 1
    assert not any(c.kernel_size == (1, 1) for c in convs(noshort))
    assert not any(isinstance(m, nn.Identity) for m in noshort.modules())


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        build_model("resnet21")
    msg = str(err.value)
    assert "resnet21" in msg and "resnet20" in msg and "densenet121" in msg and "wrn56_8_noshort" in msg


def test_bad_depth_is_rejected() -> None:
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(21)


def _fold_sibling_conv_bn(model: nn.Module) -> int:
    """Fold every BatchNorm2d into the Conv2d registered right before it (as the fast path will); returns pairs."""
    pairs = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.data.mul_(scale.view(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.bias)  # VGG's convs carry one
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
            setattr(parent, bn_name, nn.Identity())
            pairs += 1
    return pairs


@pytest.mark.parametrize("name,pairs", [("resnet20", 21), ("resnet20_noshort", 19), ("wrn56_2", 57),
                                        ("vgg9", 7), ("densenet121", 58)])
def test_bn_folds_into_sibling_conv(name: str, pairs: int) -> None:
    """Each conv feeding a BN sits right before it, so folding sibling pairs leaves the eval output unchanged."""
    torch.manual_seed(0)
    model = build_model(name).double().eval()
    for m in model.modules():  # non-trivial BN statistics, or folding would be a near no-op
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        folded = copy.deepcopy(model)
        assert _fold_sibling_conv_bn(folded) == pairs
        after = folded(x)
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-9)
    if name != "densenet121":  # in ResNets and VGG every BN2d follows its conv (DenseNet's pre-activations don't)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
