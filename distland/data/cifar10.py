"""CIFAR-10 from the python-pickle release, read from the downloaded tarball or its extracted folder.

``root`` may be ``cifar-10-python.tar.gz`` itself, the extracted ``cifar-10-batches-py`` folder, or a folder
holding either. Train is ``data_batch_1`` … ``data_batch_5`` concatenated in that order, test is ``test_batch``.
The pixels are decoded and normalized with the usual per-channel mean/std once, into one float tensor;
no augmentation, since a loss surface must see the same samples at every grid point.
"""
from __future__ import annotations

import codecs
import os
import pickle
import tarfile
import zlib
from typing import IO, Dict, Iterable, Tuple

import numpy as np
import torch

from . import Split

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
SPLIT_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
PIXELS = 3 * 32 * 32
NUM_CLASSES = 10
SITE = "https://www.cs.toronto.edu/~kriz/cifar.html ('CIFAR-10 python version')"
FIX = f"set data.root to the {ARCHIVE} or the {FOLDER} folder; download from the CIFAR-10 site {SITE}"
REDOWNLOAD = f"download {ARCHIVE} again from {SITE}"

Batch = Tuple[np.ndarray, np.ndarray]


class CifarNotFoundError(FileNotFoundError):
    """The release, or one of its batch files, is not where ``data.root`` says."""


class CifarFormatError(ValueError):
    """A batch file is truncated, corrupt, or does not hold what the CIFAR-10 release holds."""


def load(split: str, root: str = "", normalize: bool = True) -> Split:
    """Load ``split`` as ``(float32 (N, 3, 32, 32) normalized images, int64 (N,) labels)``. ``normalize=False``
    (``data.options: {normalize: false}``, the authors' ``--raw_data``) keeps pixels in [0, 1] (x / 255 only)."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown CIFAR-10 split {split!r}; valid: {', '.join(SPLIT_FILES)}")
    names = SPLIT_FILES[split]
    source = _locate(root)
    batches = _read_tar(source, names) if os.path.isfile(source) else _read_folder(source, names)
    data = np.concatenate([batches[n][0] for n in names])
    labels = np.concatenate([batches[n][1] for n in names])
    if not isinstance(normalize, bool):
        raise ValueError(f"data.options.normalize must be true or false, got {normalize!r}")
    pixels = _normalize(data) if normalize else scale(data)
    return torch.from_numpy(pixels), torch.from_numpy(labels)


def scale(data: np.ndarray) -> np.ndarray:
    """``(N, 3072)`` uint8 rows to float32 ``(N, 3, 32, 32)`` in [0, 1]: the raw images, not normalized."""
    x = data.reshape(-1, 3, 32, 32).astype(np.float32)
    x *= np.float32(1 / 255)
    return x


def _normalize(data: np.ndarray) -> np.ndarray:
    return normalize(data)   # the module-level name, shadowed inside load() by its keyword argument


def normalize(data: np.ndarray) -> np.ndarray:
    """``(N, 3072)`` uint8 rows (R, G, B planes of 32×32, row-major) to normalized float32 ``(N, 3, 32, 32)``."""
    x = data.reshape(-1, 3, 32, 32).astype(np.float32)
    # In place: the train split is 600 MB as float32, so avoid temporaries of that size.
    x *= np.float32(1 / 255)
    x -= np.asarray(MEAN, np.float32).reshape(1, 3, 1, 1)
    x /= np.asarray(STD, np.float32).reshape(1, 3, 1, 1)
    return x


def _locate(root: str) -> str:
    """The tarball or the folder holding the batch files, from whatever ``root`` the user gave."""
    if not root:
        raise CifarNotFoundError(f"no CIFAR-10 location given: {FIX}")
    path = os.path.expanduser(str(root))
    if not os.path.exists(path):
        raise CifarNotFoundError(f"CIFAR-10 root {path!r} does not exist: {FIX}")
    if os.path.isfile(path):
        if not tarfile.is_tarfile(path):
            raise CifarFormatError(f"CIFAR-10 root {path!r} is a file but not a tar archive: {FIX}")
        return path
    if os.path.basename(os.path.normpath(path)) == FOLDER or _has_batches(path):
        return path
    for candidate in (os.path.join(path, FOLDER), os.path.join(path, ARCHIVE)):
        if os.path.exists(candidate):
            return candidate
    raise CifarNotFoundError(f"CIFAR-10 root {path!r} holds neither {FOLDER}/, {ARCHIVE} nor the batch files "
                             f"(data_batch_1 … data_batch_5, test_batch): {FIX}")


def _has_batches(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, n)) for files in SPLIT_FILES.values() for n in files)


def _read_folder(folder: str, names: Iterable[str]) -> Dict[str, Batch]:
    batches = {}
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise CifarNotFoundError(f"CIFAR-10 batch file {path!r} is missing (expected data_batch_1 … "
                                     f"data_batch_5 and test_batch in {folder!r}): {FIX}")
        with open(path, "rb") as f:
            batches[name] = _parse(f, path)
    return batches


def _read_tar(archive: str, names: Iterable[str]) -> Dict[str, Batch]:
    # One sequential pass over the members: seeking backwards in a .gz would decompress it again each time.
    wanted = set(names)
    batches = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = member.name.replace("\\", "/").split("/")
                if member.isfile() and parts[-1] in wanted and parts[-2:-1] == [FOLDER]:
                    label = f"{archive}:{member.name}"
                    batches[parts[-1]] = _parse(tar.extractfile(member), label)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise CifarFormatError(f"CIFAR-10 archive {archive!r} is truncated or corrupt ({e}); "
                               f"{REDOWNLOAD}") from e
    missing = sorted(wanted - set(batches))
    if missing:
        lacking = ", ".join(f"{FOLDER}/{m}" for m in missing)
        raise CifarNotFoundError(f"CIFAR-10 archive {archive!r} lacks {lacking}; it is not the complete "
                                 f"python release: {REDOWNLOAD}")
    return batches


# What numpy's array pickles (protocol 2, as in the release) call to rebuild an array, resolved once here.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray(0).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray(0).__reduce__()[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes under protocol 2
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds: dicts, lists, bytes, ints and numpy arrays.

    A pickle may call any importable function; refusing all but numpy's array rebuilders keeps a bad file in
    ``data.root`` from running code on every rank.
    """

    def find_class(self, module: str, name: str) -> object:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch") from None


def _parse(f: IO[bytes], label: str) -> Batch:
    """Unpickle and validate one batch: ``(data (N, 3072) uint8, labels (N,) int64)``."""
    try:
        # The release was pickled by Python 2: encoding="bytes" keeps its str keys and pixel buffers as bytes.
        batch = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:  # truncation shows up as EOFError, UnpicklingError, ValueError, ... depending on where
        raise CifarFormatError(f"CIFAR-10 batch file {label!r} is truncated or corrupt "
                               f"({type(e).__name__}: {e}); {REDOWNLOAD}") from e
    if not isinstance(batch, dict):
        raise CifarFormatError(f"CIFAR-10 batch file {label!r} holds a {type(batch).__name__}, expected a dict "
                               "with 'data' and 'labels'")
    data = _get(batch, "data", label)
    labels = _get(batch, "labels", label)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == PIXELS):
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CifarFormatError(f"CIFAR-10 batch file {label!r}: 'data' must be an N×{PIXELS} uint8 array "
                               f"(R, G, B planes of 32×32 pixels), got {got}")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise CifarFormatError(f"CIFAR-10 batch file {label!r}: 'labels' must be a list of ints ({e})") from e
    if len(labels) != len(data):
        raise CifarFormatError(f"CIFAR-10 batch file {label!r}: {len(labels)} labels for {len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise CifarFormatError(f"CIFAR-10 batch file {label!r}: labels must lie in 0..{NUM_CLASSES - 1}, "
                               f"got {labels.min()}..{labels.max()}")
    return data, labels


def _get(batch: dict, key: str, label: str) -> object:
    # The real release has bytes keys; a re-pickled copy made under Python 3 may have str keys.
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise CifarFormatError(f"CIFAR-10 batch file {label!r} has no {key!r} entry (keys: {sorted(map(repr, batch))})")
