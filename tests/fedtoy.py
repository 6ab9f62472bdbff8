"""A small classification task for federated tests: fast, built from a fixed seed, registered as "toy"."""

import torch
from torch import nn

from zofed import tasks


def toy_task(hidden: int = 8, n: int = 240, classes: int = 3) -> tasks.Task:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n, 6, generator=g)
    w = torch.randn(6, classes, generator=g)
    y = (x @ w).argmax(1)
    model = nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, classes))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    # evaluated on its own training examples: the tests ask whether a protocol optimizes, not generalization
    return tasks.tensor_classification("toy", model, x, y, x, y, dict(hidden=hidden, n=n, classes=classes))


tasks.register("toy", toy_task)
