"""Writes a tiny CIFAR-10 python release in the exact on-disk format, with deterministic content.

Like the real release: a ``cifar-10-batches-py`` folder of protocol-2 pickles with bytes keys (``b'data'``
N×3072 uint8 in R, G, B planes of row-major 32×32, ``b'labels'``, ``b'batch_label'``, ``b'filenames'``) plus
``batches.meta``; optionally packed as ``cifar-10-python.tar.gz`` with that folder inside.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
from typing import Dict, Iterable, List, Tuple

import numpy as np

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = "test_batch"
LABEL_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
# A planted pixel so tests can check the layout: image MARK_IMAGE, row MARK_ROW, column MARK_COL has R=255, G=0,
# B=128, and the transposed spot (row MARK_COL, column MARK_ROW) has R=17 so a row/column swap shows.
MARK_IMAGE, MARK_ROW, MARK_COL = 7, 3, 5
# The real tarball lists its members in no useful order; so does ours, so a loader must not rely on it.
TAR_ORDER = ["data_batch_4", "test_batch", "data_batch_3", "batches.meta", "data_batch_2", "data_batch_5",
             "data_batch_1"]


def fake_batch(name: str, n: int) -> Tuple[np.ndarray, List[int]]:
    """The deterministic ``(data (n, 3072) uint8, labels)`` that ``write_fake_cifar`` stores under ``name``."""
    index = 0 if name == TEST else int(name.rsplit("_", 1)[1])
    data = np.random.default_rng(1000 + index).integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
    if n > MARK_IMAGE:
        plane = 32 * 32
        data[MARK_IMAGE, 0 * plane + MARK_ROW * 32 + MARK_COL] = 255
        data[MARK_IMAGE, 1 * plane + MARK_ROW * 32 + MARK_COL] = 0
        data[MARK_IMAGE, 2 * plane + MARK_ROW * 32 + MARK_COL] = 128
        data[MARK_IMAGE, 0 * plane + MARK_COL * 32 + MARK_ROW] = 17
    # Each batch starts at a different class, so concatenating the batches out of order changes the labels.
    labels = [(3 * index + i) % 10 for i in range(n)]
    return data, labels


def batch_bytes(name: str, data: object, labels: object) -> bytes:
    """One batch pickled as the release does it: protocol 2, bytes keys."""
    kind = "testing batch 1 of 1" if name == TEST else f"training batch {name.rsplit('_', 1)[1]} of 5"
    n = len(labels) if hasattr(labels, "__len__") else 0
    batch = {b"batch_label": kind.encode(), b"labels": labels, b"data": data,
             b"filenames": [f"fake_{name}_{i:05d}.png".encode() for i in range(n)]}
    return pickle.dumps(batch, protocol=2)


def write_batch(path: str, name: str, data: object, labels: object) -> None:
    """Overwrite one batch file with arbitrary content (for the error-path tests)."""
    with open(path, "wb") as f:
        f.write(batch_bytes(name, data, labels))


def _release(n_per_batch: int, n_test: int, omit: Iterable[str]) -> Dict[str, bytes]:
    files = {}
    for name in TRAIN + [TEST]:
        if name not in omit:
            files[name] = batch_bytes(name, *fake_batch(name, n_test if name == TEST else n_per_batch))
    meta = {b"num_cases_per_batch": n_per_batch, b"label_names": LABEL_NAMES, b"num_vis": 3 * 32 * 32}
    files["batches.meta"] = pickle.dumps(meta, protocol=2)
    return files


def write_fake_cifar(dirpath: str, n_per_batch: int = 10, n_test: int = 10, as_tar: bool = False,
                     omit: Iterable[str] = ()) -> str:
    """Write the release under ``dirpath``; returns the ``cifar-10-batches-py`` folder, or the tarball if ``as_tar``.

    ``omit`` leaves out the named batch files, to test the missing-file errors.
    """
    os.makedirs(dirpath, exist_ok=True)
    files = _release(n_per_batch, n_test, set(omit))
    if as_tar:
        # Packed straight from memory, so no extracted folder sits next to the tarball to be read by mistake.
        path = os.path.join(dirpath, ARCHIVE)
        with tarfile.open(path, "w:gz") as tar:
            folder = tarfile.TarInfo(FOLDER)
            folder.type, folder.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(folder)
            for name in [n for n in TAR_ORDER if n in files]:
                info = tarfile.TarInfo(f"{FOLDER}/{name}")
                info.size, info.mode = len(files[name]), 0o644
                tar.addfile(info, io.BytesIO(files[name]))
        return path
    path = os.path.join(dirpath, FOLDER)
    os.makedirs(path, exist_ok=True)
    for name, blob in files.items():
        with open(os.path.join(path, name), "wb") as f:
            f.write(blob)
    return path
