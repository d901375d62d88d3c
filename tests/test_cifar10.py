"""The CIFAR-10 pickle loader against a tiny fake release in the exact on-disk format."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from distland.data import load_split
from distland.data.cifar10 import MEAN, STD, CifarFormatError, CifarNotFoundError, load

try:
    import fakecifar as fc
except ImportError:  # tests/ made a package: import it by its dotted name
    from tests import fakecifar as fc

N, N_TEST = 10, 12


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return x * std * 255 + mean * 255


@pytest.fixture()
def folder(tmp_path) -> str:
    return fc.write_fake_cifar(str(tmp_path / "release"), N, N_TEST)


def expected(split: str):
    names = fc.TRAIN if split == "train" else [fc.TEST]
    parts = [fc.fake_batch(name, N if split == "train" else N_TEST) for name in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@pytest.mark.parametrize("split,n", [("train", 5 * N), ("test", N_TEST)])
def test_shapes_and_dtypes(folder: str, split: str, n: int) -> None:
    x, y = load(split, root=folder)
    assert x.shape == (n, 3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.shape == (n,) and y.dtype == torch.int64


def test_batches_concatenate_in_order(folder: str) -> None:
    data, labels = expected("train")
    x, y = load("train", root=folder)
    assert y.tolist() == labels.tolist()
    assert y[:5].tolist() == [3, 4, 5, 6, 7] and y[N:N + 5].tolist() == [6, 7, 8, 9, 0]  # batches 1 and 2
    # Images travel with their labels: batch k's images sit at rows (k-1)·N … k·N-1.
    pixels = np.rint(unnormalize(x).numpy()).astype(np.int64).reshape(5 * N, -1)
    np.testing.assert_array_equal(pixels, data.astype(np.int64))


@pytest.mark.parametrize("split,offset", [("test", 0), ("train", 0), ("train", 3 * N)])
def test_pixel_layout(folder: str, split: str, offset: int) -> None:
    x, _ = load(split, root=folder)
    pixels = unnormalize(x)
    i, r, c = offset + fc.MARK_IMAGE, fc.MARK_ROW, fc.MARK_COL
    assert pixels[i, 0, r, c].item() == pytest.approx(255, abs=1e-3)  # R plane first, rows then columns
    assert pixels[i, 1, r, c].item() == pytest.approx(0, abs=1e-3)
    assert pixels[i, 2, r, c].item() == pytest.approx(128, abs=1e-3)
    assert pixels[i, 0, c, r].item() == pytest.approx(17, abs=1e-3)  # not transposed


def test_normalization_formula(folder: str) -> None:
    x, _ = load("test", root=folder)
    r, c = fc.MARK_ROW, fc.MARK_COL
    assert x[fc.MARK_IMAGE, 0, r, c].item() == pytest.approx((1.0 - 0.4914) / 0.2470, rel=1e-6)
    assert x[fc.MARK_IMAGE, 1, r, c].item() == pytest.approx((0.0 - 0.4822) / 0.2435, rel=1e-6)
    assert x[fc.MARK_IMAGE, 2, r, c].item() == pytest.approx((128 / 255 - 0.4465) / 0.2616, rel=1e-6)
    data, _ = expected("test")
    mean, std = np.array(MEAN).reshape(1, 3, 1, 1), np.array(STD).reshape(1, 3, 1, 1)
    want = (data.reshape(-1, 3, 32, 32) / 255.0 - mean) / std
    np.testing.assert_allclose(x.numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("split", ["train", "test"])
def test_tar_and_folder_agree(tmp_path, split: str) -> None:
    folder = fc.write_fake_cifar(str(tmp_path / "a"), N, N_TEST)
    tarball = fc.write_fake_cifar(str(tmp_path / "b"), N, N_TEST, as_tar=True)
    assert not os.path.exists(tmp_path / "b" / fc.FOLDER)  # the tar path really reads the archive
    xf, yf = load(split, root=folder)
    xt, yt = load(split, root=tarball)
    assert torch.equal(xf, xt) and torch.equal(yf, yt)


def test_root_may_be_the_parent_folder(tmp_path) -> None:
    folder = fc.write_fake_cifar(str(tmp_path / "a"), N, N_TEST)
    fc.write_fake_cifar(str(tmp_path / "b"), N, N_TEST, as_tar=True)
    ref = load("test", root=folder)
    for parent in (tmp_path / "a", tmp_path / "b"):
        x, y = load("test", root=str(parent))
        assert torch.equal(x, ref[0]) and torch.equal(y, ref[1])


def test_load_split_passes_root(folder: str) -> None:
    x, y = load_split("cifar10", "train", max_samples=7, root=folder)
    assert x.shape == (7, 3, 32, 32) and y.tolist() == [3, 4, 5, 6, 7, 8, 9]


def test_str_keys_are_accepted(folder: str) -> None:
    data, labels = fc.fake_batch(fc.TEST, N_TEST)
    with open(os.path.join(folder, fc.TEST), "wb") as f:
        pickle.dump({"data": data, "labels": labels}, f, protocol=2)
    _, y = load("test", root=folder)
    assert y.tolist() == labels


# ---- error paths: each names the file and says what was expected ----

@pytest.mark.parametrize("root", ["", "does/not/exist"])
def test_missing_root(tmp_path, root: str) -> None:
    root = str(tmp_path / root) if root else root
    with pytest.raises(FileNotFoundError) as err:
        load("train", root=root)
    assert isinstance(err.value, CifarNotFoundError)
    assert "data.root" in str(err.value) and "cifar-10-python.tar.gz" in str(err.value)
    if root:
        assert root in str(err.value)


def test_root_without_release(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CifarNotFoundError, match="cifar-10-batches-py"):
        load("test", root=str(tmp_path))


def test_missing_batch_in_folder(tmp_path) -> None:
    folder = fc.write_fake_cifar(str(tmp_path), N, N_TEST, omit=["data_batch_3"])
    load("test", root=folder)  # the test split does not need it
    with pytest.raises(CifarNotFoundError, match="data_batch_3"):
        load("train", root=folder)


def test_missing_batch_in_tar(tmp_path) -> None:
    tarball = fc.write_fake_cifar(str(tmp_path), N, N_TEST, as_tar=True, omit=["test_batch"])
    with pytest.raises(CifarNotFoundError) as err:
        load("test", root=tarball)
    assert "test_batch" in str(err.value) and tarball in str(err.value)


def test_truncated_batch(folder: str) -> None:
    path = os.path.join(folder, "data_batch_2")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CifarFormatError) as err:
        load("train", root=folder)
    assert "data_batch_2" in str(err.value) and "truncated" in str(err.value)


def test_truncated_tarball(tmp_path) -> None:
    tarball = fc.write_fake_cifar(str(tmp_path), N, N_TEST, as_tar=True)
    with open(tarball, "r+b") as f:
        f.truncate(os.path.getsize(tarball) * 2 // 3)
    with pytest.raises(CifarFormatError) as err:
        load("train", root=tarball)
    assert fc.ARCHIVE in str(err.value) and "truncated" in str(err.value)


def test_garbage_file_is_not_unpickled(folder: str) -> None:
    with open(os.path.join(folder, fc.TEST), "wb") as f:
        pickle.dump({b"data": os.system}, f, protocol=2)  # a pickle that names a callable
    with pytest.raises(CifarFormatError, match="test_batch.*refusing"):
        load("test", root=folder)


_GOOD = fc.fake_batch(fc.TEST, N_TEST)


@pytest.mark.parametrize("data,labels,match", [
    (_GOOD[0].reshape(-1, 3, 32, 32), _GOOD[1], "N×3072 uint8"),             # not flattened
    (_GOOD[0][:, :3000], _GOOD[1], "N×3072 uint8"),                          # wrong row length
    (_GOOD[0].astype(np.float32), _GOOD[1], "N×3072 uint8"),                 # wrong dtype
    (_GOOD[0].tolist(), _GOOD[1], "N×3072 uint8"),                           # not an array
    (_GOOD[0], _GOOD[1][:-1], "11 labels for 12 images"),                    # labels length ≠ N
    (_GOOD[0], _GOOD[1][:-1] + [10], "0..9"),                                # label out of range
    (_GOOD[0], _GOOD[1][:-1] + [-1], "0..9"),
])
def test_wrong_shapes(folder: str, data, labels, match: str) -> None:
    fc.write_batch(os.path.join(folder, fc.TEST), fc.TEST, data, labels)
    with pytest.raises(CifarFormatError, match=match) as err:
        load("test", root=folder)
    assert "test_batch" in str(err.value)


def test_unknown_split(folder: str) -> None:
    with pytest.raises(ValueError, match="valid: train, test"):
        load("val", root=folder)
