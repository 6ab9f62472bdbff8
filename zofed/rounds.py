"""Round-based algorithms (FedMeZO, ZOWarmUp) on the one run loop (zofed.loop): the same outputs as zofed.sim
(metrics.jsonl, summary.json, plots, an orbit where the run has one) and the same resumption.

An algorithm offers: task, cfg (a dataclass with rounds, eval_every, seed), name, counter (ByteCounter),
round, step() -> a metrics row, state_dict() / load_state_dict() (tensors and plain data), close(),
and orbit_history() -> a wire message of its broadcasts, or None with `no_orbit` saying why.

Unlike the step simulator, whose state is rebuilt from the seed history, these runs checkpoint their
weights (FedMeZO's dense average and ZOWarmUp's warm-up are not seed sums): `checkpoint.pt`, written
atomically every `checkpoint_every` rounds, sealed with its sha256 (zofed.atomic), and loaded with
torch.load(weights_only=True).
"""

from __future__ import annotations

import dataclasses
import io
import pickle

import torch

from . import atomic, loop
from .loop import CHECKPOINT
from .loop import ROUND_CHECKPOINT as STATE


def _load_state(path: str):
    data = atomic.read_sealed(path)
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except (RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as exc:  # sealed, yet not torch's
        raise atomic.DamagedFileError(f"{path} is not a readable checkpoint ({exc})") from None


class RoundDriver:
    """A round-based algorithm as zofed.loop.run's driver (and its evaluator: the task's model)."""

    unit, checkpoint, other = "round", STATE, CHECKPOINT

    def __init__(self, algo):
        from .client import weights_sha256

        self.algo, self.task, self.cfg = algo, algo.task, algo.cfg
        self.name, self.clients, self.total, self.counter = algo.name, algo.cfg.clients, algo.cfg.rounds, algo.counter
        self._sha256 = weights_sha256
        self.base_sha256 = weights_sha256(algo.task.model)

    @property
    def position(self) -> int:
        return self.algo.round

    def config(self) -> dict:
        return dict(dataclasses.asdict(self.cfg), strategy=self.name)

    def advance(self) -> dict:
        return self.algo.step()

    def save(self, path: str, common: dict) -> None:
        buf = io.BytesIO()
        torch.save(dict(common, state=self.algo.state_dict()), buf)
        atomic.write_sealed(path, buf.getvalue())

    def load(self, path: str) -> dict:
        return loop.load_checkpoint(path, _load_state)

    def restore(self, ck: dict) -> None:
        self.algo.load_state_dict(ck["state"])

    def finish(self, summary: dict) -> None:
        pass

    def orbit(self):
        history = self.algo.orbit_history()
        if history is None:
            return self.algo.no_orbit
        cfg, task = self.cfg, self.task
        return (dict(strategy=self.name, strategy_options={}, lr=0.0, eps=cfg.eps, dist=self.algo.dist,
                     run_seed=cfg.seed, steps=cfg.rounds, task=task.name, task_options=task.options), history)

    def close(self) -> None:
        self.algo.close()

    # the evaluator side
    def evaluate(self) -> dict:
        return self.task.evaluate(self.task.model)

    def sha256(self) -> str:
        return self._sha256(self.task.model)


def run(algo, out: str | None = None, progress: bool = True, checkpoint_every: int = 20) -> dict:
    """Run `algo` to its last round; with `out`, write the outputs there and resume from them if present."""
    driver = RoundDriver(algo)
    return loop.run(driver, driver, algo.task.name, algo.task.options, out=out, progress=progress,
                    checkpoint_every=checkpoint_every, eval_every=algo.cfg.eval_every)
