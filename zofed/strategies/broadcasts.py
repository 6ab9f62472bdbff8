"""FedMeZO's seed-replay broadcasts, replayed as they are (orbits and the FedMeZO replicas)."""

from __future__ import annotations

from ..wire import StepUpdates
from .base import Strategy, _join_steps, _one, _split_steps

class Broadcasts(Strategy):
    """Broadcasts whose values are the final update coefficients, applied as they are: FedMeZO's seed-replay
    rounds (zofed.fedmezo computes the coefficients). Only replayed (orbits, the FedMeZO replicas), never
    run by the step simulator, so it is not in STRATEGIES."""

    name = "fedmezo"

    def __init__(self):  # no lr or seed of its own: the coefficients and seeds travel in the broadcasts
        pass

    def ops(self, step, down):
        (pairs,) = _one(down, StepUpdates, step, "broadcast").steps
        return [("update", tuple(s for s, _ in pairs), tuple(c for _, c in pairs))]

    def history(self, first_step, downs):
        return _join_steps(first_step, downs)

    def steps_of(self, history):
        return _split_steps(history)
