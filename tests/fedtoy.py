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

    def batch(indices):
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return x[idx], y[idx]

    def losses(m, b):
        return nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")

    @torch.no_grad()
    def evaluate(m):
        logits = m(x)
        return dict(accuracy=(logits.argmax(1) == y).float().mean().item(),
                    loss=nn.functional.cross_entropy(logits, y).item())

    return tasks.Task("toy", model, y.tolist(), batch, losses, evaluate, dict(hidden=hidden, n=n, classes=classes))


tasks.register("toy", toy_task)
