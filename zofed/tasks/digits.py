"""Handwritten digits from scratch: a small CNN from random initialization on scikit-learn's bundled 8x8
digits (1,797 images, 10 classes; shipped inside the scikit-learn wheel, no download).

The held-out fifth is chosen by a fixed permutation (seed 0), the same everywhere. The CNN has no batch
norm, so its whole state is its parameters (what FedAvg averages and ZO perturbs). Its initial weights
come from torch's CPU generator seeded with `init_seed`: the same for a given torch version, which the
base-weights fingerprint in checkpoints and orbits checks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import Option, Task, tensor_classification


def load(test_fraction: float = 0.2):
    """(x_train, y_train, x_test, y_test): images as float32 (n, 1, 8, 8) in [0, 1], labels int64."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise RuntimeError("the digits task needs scikit-learn (`pip install scikit-learn`)") from exc
    d = load_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def cnn(width: int = 8, init_seed: int = 0) -> nn.Module:
    """conv(1->w) relu pool, conv(w->2w) relu pool, linear(8w->10): 1,898 parameters at width 8."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * 4, 10))


# width 256 is 1.2M parameters (4.8 MB): far past what 8x8 images need, and a bound on what an orbit can build
OPTIONS = dict(width=Option(8, 1, 256), init_seed=Option(0, 0, 2**63 - 1))


def task(width: int = 8, init_seed: int = 0) -> Task:
    """The digits Task (options checked by zofed.tasks.build against OPTIONS)."""
    x, y, xt, yt = load()
    return tensor_classification("digits", cnn(width, init_seed), x, y, xt, yt,
                                 dict(width=width, init_seed=init_seed))
