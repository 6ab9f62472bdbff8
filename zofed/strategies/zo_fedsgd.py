"""ZO-FedSGD: a seed and a projection per client, or robust aggregation of projections on a shared seed."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .. import aggregate as agg
from ..seeds import SHARED, step_seed
from ..wire import Scalars, SeedScalars, StepUpdates
from .base import POSITIVE, Option, Strategy, _join_steps, _one, _random_projection, _split_steps, register

# shared by the strategies whose Byzantine clients send a random projection (one config field, one declaration)
BYZANTINE_SCALE = Option("byzantine_scale", float, 100.0, "a Byzantine client's random projection is uniform in "
                         "[-scale, scale] (vader: median |p| 2.3)", valid=POSITIVE, replay=False)

@register
class ZOFedSGD(Strategy):
    """ZO-FedSGD: each client its own seed, uploads (seed, p_k); the server broadcasts every pair; replicas
    step w -= lr * mean_k(p_k z_k). With a robust aggregator ("median", "trimmed-mean") all clients
    share the step's seed instead, upload p_k alone, and the server broadcasts the one robust scalar."""

    name = "zo-fedsgd"
    default_lr = 1e-3  # tuned on the vader task, where the projection is O(1)
    AGGREGATORS = ("mean", "median", "trimmed-mean")
    options = (Option("aggregator", str, "mean", "mean (a seed per client), median or trimmed-mean (shared seed)",
                      choices=AGGREGATORS), BYZANTINE_SCALE)

    @classmethod
    def label(cls, values):
        return cls.name if values["aggregator"] == "mean" else f"{cls.name} ({values['aggregator']})"

    def __init__(self, *, lr, run_seed, aggregator: str = "mean", trim: float = 0.2, byzantine_scale: float = 100.0):
        super().__init__(lr=lr, run_seed=run_seed)
        if aggregator not in self.AGGREGATORS:
            raise ValueError(f"aggregator must be one of {self.AGGREGATORS}, got {aggregator!r}")
        if not 0 <= trim < 0.5:
            raise ValueError(f"trim must be in [0, 0.5), got {trim}")
        if not (byzantine_scale > 0 and math.isfinite(byzantine_scale)):
            raise ValueError(f"byzantine_scale must be a positive finite number, got {byzantine_scale}")
        self.aggregator, self.trim, self.byzantine_scale = aggregator, float(trim), float(byzantine_scale)
        self.shared_seed = aggregator != "mean"

    def seed_for(self, step, client, local=0):
        return step_seed(self.run_seed, step, SHARED if self.shared_seed else client, local)

    def reply_shape(self):
        return (Scalars, 1) if self.shared_seed else (SeedScalars, self.local_steps)

    def up(self, step, client, projection, byzantine=False):
        """projection: the client's projection, or with local steps the sequence of its local steps' ones."""
        h = self.local_steps
        values = tuple(projection) if isinstance(projection, Sequence) else (projection,)
        if len(values) != h:
            raise ValueError(f"{self.name} with {h} local step(s) answers {h} projection(s), got {len(values)}")
        if byzantine:
            values = tuple(_random_projection(self.run_seed, step, client, self.byzantine_scale, k) for k in range(h))
        if self.shared_seed:
            return Scalars(step, values)
        return SeedScalars(step, tuple(self.seed_for(step, client, k) for k in range(h)), values)

    def check(self, step, client, msg):
        """The reply's value (robust aggregators), or its (seed, value) pairs, one per local step."""
        if self.shared_seed:
            m = _one(msg, Scalars, step, f"client {client}")
            if len(m.values) != 1:
                raise ValueError(f"client {client} sent {len(m.values)} projections for one step")
            return m.values[0]
        m = _one(msg, SeedScalars, step, f"client {client}")
        expected = tuple(self.seed_for(step, client, k) for k in range(self.local_steps))
        if m.seeds != expected:
            raise ValueError(f"client {client} sent seed(s) {m.seeds} at step {step}; the schedule gives "
                             f"{expected if len(expected) > 1 else expected[0]}")
        return tuple(zip(m.seeds, m.values))

    def aggregate(self, step, ups, secret=None):
        got = {c: self.check(step, c, m) for c, m in sorted(ups.items())}
        if not self.shared_seed:
            return StepUpdates(step, (tuple(pair for pairs in self._weighted(got).values() for pair in pairs),))
        values = list(got.values())
        robust = agg.median(values) if self.aggregator == "median" else agg.trimmed_mean(values, self.trim)
        return Scalars(step, (robust,))

    def _weighted(self, got: dict) -> dict:
        """The pairs each client contributes to the mean (FedKSeed may weigh them by data size)."""
        return got

    def ops(self, step, down):
        if self.shared_seed:
            value = _one(down, Scalars, step, "broadcast").values
            if len(value) != 1:
                raise ValueError(f"a robust broadcast carries one scalar, got {len(value)}")
            return [("update", (self.seed_for(step, SHARED),), (-self.lr * value[0],))]
        (pairs,) = _one(down, StepUpdates, step, "broadcast").steps
        if not pairs or len(pairs) % self.local_steps:
            raise ValueError(f"the broadcast of step {step} has {len(pairs)} projections; it needs a positive multiple "
                             f"of {self.local_steps} (one per local step of each client)")
        clients = len(pairs) // self.local_steps  # the mean is over clients; a client's local steps add up
        return [("update", tuple(s for s, _ in pairs), tuple(-self.lr * v / clients for _, v in pairs))]

    def history(self, first_step, downs):
        if self.shared_seed:
            return Scalars(first_step, tuple(d.values[0] for d in downs))
        return _join_steps(first_step, downs)

    def steps_of(self, history):
        if self.shared_seed:
            if not isinstance(history, Scalars):
                raise ValueError(f"this history is a Scalars message, got {type(history).__name__}")
            return [Scalars(history.first_step + i, (v,)) for i, v in enumerate(history.values)]
        return _split_steps(history)
