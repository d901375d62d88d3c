"""scikit-learn's bundled 8×8 handwritten digits (1,797 images): real data that needs no download."""
from __future__ import annotations

import numpy as np
import torch

from . import Split

TEST_FRACTION = 0.2


def load(split: str, seed: int = 0) -> Split:
    """Images as (N, 1, 8, 8) floats standardized with the training split's mean/std; a fixed shuffled 80/20 split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise RuntimeError("data.name 'digits' needs scikit-learn: pip install scikit-learn "
                           "(or pip install 'distland[digits]')") from e
    bunch = load_digits()
    x = bunch.images.astype(np.float32)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * TEST_FRACTION))
    idx = order[n_test:] if split == "train" else order[:n_test]
    train = x[order[n_test:]]
    mean, std = float(train.mean()), float(train.std())
    return torch.from_numpy((x[idx] - mean) / std).unsqueeze(1), torch.from_numpy(y[idx])
