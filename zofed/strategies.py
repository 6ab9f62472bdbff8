"""Federated ZO strategies: what a client sends, how the server aggregates, what every replica applies.

Pure integer and float logic, torch-free, so the parameter server can run them without the model.
One step of any strategy:

    seed   = strategy.seed_for(step, client)          # from the schedule: no seed bytes need travel
    up     = strategy.up(step, client, projection)    # the client's message (1 bit for FeedSign)
    down   = strategy.aggregate(step, {client: up})   # the server's broadcast (1 bit for FeedSign)
    ops    = strategy.ops(step, down)                 # what every replica applies, in order

`ops` are ("update", seeds, coeffs): w += sum_k coeff_k z(seed_k), or ("rebuild", seeds, coeffs):
w = base + sum_k coeff_k z(seed_k). Every party calls `ops` once per step, in step order, on its own
instance (the FedKSeed pool keeps its accumulators there), so replicas, the server's catch-up state
and an orbit replay stay in lockstep. Coefficients are computed in float64 here and rounded to
float32 once by the kernels, identically everywhere.
"""

from __future__ import annotations

import math

from . import aggregate as agg
from .seeds import SHARED, pool_seed, step_seed, unit
from .wire import Message, PoolState, Scalars, SeedScalars, StepUpdates, Votes

_BYZANTINE = 0xB7  # hash domain of a Byzantine client's random projection
_PICK = 0x91  # hash domain of a pool client's candidate choice
_TIE = 0x7E  # hash domain of FeedSign tie breaks


def _one(msg: Message, kind: type, step: int, what: str):
    if not isinstance(msg, kind):
        raise ValueError(f"{what}: expected a {kind.__name__} message, got {type(msg).__name__}")
    first = msg.step if isinstance(msg, PoolState) else msg.first_step
    if first != step:
        raise ValueError(f"{what}: message is for step {first}, the round is step {step}")
    return msg


class Strategy:
    """The interface every strategy implements; see the module docstring for the step."""

    name = ""
    shared_seed = True  # every client evaluates the same seed at a step (a simulator may batch their forwards)

    def __init__(self, *, lr: float, run_seed: int):
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive finite number, got {lr}")
        step_seed(run_seed, 0)  # validates the run seed
        self.lr, self.run_seed = float(lr), run_seed

    def seed_for(self, step: int, client: int) -> int:
        return step_seed(self.run_seed, step)

    def config(self) -> dict:
        """What an orbit records to rebuild this strategy (with lr and run_seed)."""
        return {}

    def up(self, step: int, client: int, projection: float, byzantine: bool = False) -> Message:
        raise NotImplementedError

    def check(self, step: int, client: int, msg: Message):
        """The content of a client's reply (a sign, a value, a (seed, value) pair); ValueError naming the
        problem if it is not a valid reply to this step. The server checks replies as they arrive."""
        raise NotImplementedError

    def aggregate(self, step: int, ups: dict[int, Message], secret: int = 0) -> Message:
        raise NotImplementedError

    def ops(self, step: int, down: Message) -> list[tuple]:
        raise NotImplementedError

    def history(self, first_step: int, downs: list[Message]) -> Message:
        """One catch-up message carrying the broadcasts of consecutive steps from first_step."""
        raise NotImplementedError

    def steps_of(self, history: Message) -> list[Message]:
        """The per-step broadcasts inside a catch-up message (the inverse of history())."""
        raise NotImplementedError


class FeedSign(Strategy):
    """feedsign.txt eq. 2-4: one shared seed per step, each client votes sign(p_k) (1 bit), the server
    broadcasts the majority sign (1 bit), every replica steps w -= lr * sign * z."""

    name = "feedsign"

    def up(self, step, client, projection, byzantine=False):
        sign = 1 if projection >= 0 else -1  # a zero projection (flat loss) votes +1, as sign() >= 0 would
        return Votes(step, (-sign if byzantine else sign,))  # a Byzantine client always reverses

    def check(self, step, client, msg):
        m = _one(msg, Votes, step, f"client {client}")
        if len(m.signs) != 1:
            raise ValueError(f"client {client} sent {len(m.signs)} votes for one step")
        return m.signs[0]

    def _signs(self, step, ups):
        return [self.check(step, c, m) for c, m in sorted(ups.items())]

    def aggregate(self, step, ups, secret=0):
        return Votes(step, (agg.majority_sign(self._signs(step, ups), step_seed(self.run_seed, step, SHARED, _TIE)),))

    def ops(self, step, down):
        sign = _one(down, Votes, step, "broadcast").signs
        if len(sign) != 1:
            raise ValueError(f"a FeedSign broadcast carries one sign, got {len(sign)}")
        return [("update", (self.seed_for(step, SHARED),), (-self.lr * sign[0],))]

    def history(self, first_step, downs):
        return Votes(first_step, tuple(d.signs[0] for d in downs))

    def steps_of(self, history):
        if not isinstance(history, Votes):
            raise ValueError(f"a FeedSign history is a Votes message, got {type(history).__name__}")
        return [Votes(history.first_step + i, (s,)) for i, s in enumerate(history.signs)]


class DPFeedSign(FeedSign):
    """feedsign.txt Definition 3: the broadcast sign is drawn by the exponential mechanism with privacy
    budget epsilon. Its randomness comes from the server's secret, which clients never see."""

    name = "dp-feedsign"

    def __init__(self, *, lr, run_seed, epsilon: float):
        super().__init__(lr=lr, run_seed=run_seed)
        if not (epsilon >= 0 and math.isfinite(epsilon)):
            raise ValueError(f"dp epsilon must be a finite number >= 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def config(self):
        return {"dp_epsilon": self.epsilon}

    def aggregate(self, step, ups, secret=0):
        return Votes(step, (agg.dp_sign(self._signs(step, ups), self.epsilon, step_seed(secret, step)),))


def _random_projection(run_seed: int, step: int, client: int, scale: float) -> float:
    """A Byzantine client's projection: uniform in [-scale, scale], hashed (the paper's "random number")."""
    return scale * (2 * unit(run_seed, step, client, _BYZANTINE) - 1)


class ZOFedSGD(Strategy):
    """ZO-FedSGD: each client its own seed, uploads (seed, p_k); the server broadcasts every pair; replicas
    step w -= lr * mean_k(p_k z_k). With a robust aggregator ("median", "trimmed-mean") all clients
    share the step's seed instead, upload p_k alone, and the server broadcasts the one robust scalar."""

    name = "zo-fedsgd"
    AGGREGATORS = ("mean", "median", "trimmed-mean")

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

    def config(self):
        return {"aggregator": self.aggregator, "trim": self.trim}

    def seed_for(self, step, client):
        return step_seed(self.run_seed, step, SHARED if self.shared_seed else client)

    def up(self, step, client, projection, byzantine=False):
        p = _random_projection(self.run_seed, step, client, self.byzantine_scale) if byzantine else projection
        if self.shared_seed:
            return Scalars(step, (p,))
        return SeedScalars(step, (self.seed_for(step, client),), (p,))

    def check(self, step, client, msg):
        if self.shared_seed:
            m = _one(msg, Scalars, step, f"client {client}")
            if len(m.values) != 1:
                raise ValueError(f"client {client} sent {len(m.values)} projections for one step")
            return m.values[0]
        m = _one(msg, SeedScalars, step, f"client {client}")
        if m.seeds != (self.seed_for(step, client),):
            raise ValueError(f"client {client} sent seed(s) {m.seeds} at step {step}; the schedule gives "
                             f"{self.seed_for(step, client)}")
        return m.seeds[0], m.values[0]

    def aggregate(self, step, ups, secret=0):
        got = [self.check(step, c, m) for c, m in sorted(ups.items())]
        if not self.shared_seed:
            return StepUpdates(step, (tuple(got),))
        robust = agg.median(got) if self.aggregator == "median" else agg.trimmed_mean(got, self.trim)
        return Scalars(step, (robust,))

    def ops(self, step, down):
        if self.shared_seed:
            value = _one(down, Scalars, step, "broadcast").values
            if len(value) != 1:
                raise ValueError(f"a robust broadcast carries one scalar, got {len(value)}")
            return [("update", (self.seed_for(step, SHARED),), (-self.lr * value[0],))]
        (pairs,) = _one(down, StepUpdates, step, "broadcast").steps
        if not pairs:
            raise ValueError(f"the broadcast of step {step} has no projections")
        return [("update", tuple(s for s, _ in pairs), tuple(-self.lr * v / len(pairs) for _, v in pairs))]

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


def _join_steps(first_step: int, downs: list[StepUpdates]) -> StepUpdates:
    return StepUpdates(first_step, tuple(d.steps[0] for d in downs))


def _split_steps(history: Message) -> list[StepUpdates]:
    if not isinstance(history, StepUpdates):
        raise ValueError(f"this history is a StepUpdates message, got {type(history).__name__}")
    return [StepUpdates(history.first_step + i, (s,)) for i, s in enumerate(history.steps)]


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


class FedKSeed(ZOFedSGD):
    """FedKSeed: seeds restricted to a pool of `pool_size` candidates fixed for the run; every party keeps
    one accumulated coefficient per candidate. Every `rebase_every` steps all replicas rebuild
    w = base + sum_j A_j z_j from the base weights, so a client that missed more than the server's
    history catches up exactly with K accumulators plus the broadcasts since the last rebuild.
    sampling="importance" draws candidates with probability proportional to |A_j| + mean_j |A_j|
    (candidates that moved the model more are tried more; the mean keeps every candidate reachable)."""

    name = "fedkseed"

    def __init__(self, *, lr, run_seed, pool_size: int = 64, sampling: str = "uniform", rebase_every: int = 100,
                 byzantine_scale: float = 100.0):
        super().__init__(lr=lr, run_seed=run_seed, byzantine_scale=byzantine_scale)
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or not 1 <= pool_size <= 1 << 16:
            raise ValueError(f"pool_size must be an integer in [1, 65536], got {pool_size!r}")
        if sampling not in ("uniform", "importance"):
            raise ValueError(f"sampling must be 'uniform' or 'importance', got {sampling!r}")
        if isinstance(rebase_every, bool) or not isinstance(rebase_every, int) or rebase_every < 1:
            raise ValueError(f"rebase_every must be a positive integer, got {rebase_every!r}")
        self.pool = tuple(pool_seed(run_seed, j) for j in range(pool_size))
        self.index = {s: j for j, s in enumerate(self.pool)}
        self.sampling, self.rebase_every = sampling, rebase_every
        self.acc = [0.0] * pool_size
        # the accumulators before the first step after the last rebuild: what a client that missed more
        # than the server's history receives, followed by the broadcasts since
        self.checkpoint = PoolState(0, tuple(self.acc))

    def config(self):
        return {"pool_size": len(self.pool), "sampling": self.sampling, "rebase_every": self.rebase_every}

    def seed_for(self, step, client):
        u = unit(self.run_seed, step, client, _PICK)
        if self.sampling == "uniform":
            return self.pool[min(int(u * len(self.pool)), len(self.pool) - 1)]
        floor = math.fsum(abs(a) for a in self.acc) / len(self.acc)
        weights = [abs(a) + floor for a in self.acc] if floor > 0 else [1.0] * len(self.acc)
        target, running = u * math.fsum(weights), 0.0
        for seed, w in zip(self.pool, weights):
            running += w
            if target < running:
                return seed
        return self.pool[-1]

    def ops(self, step, down):
        (update,) = super().ops(step, down)
        for seed, coeff in zip(update[1], update[2]):
            self.acc[self.index[seed]] += coeff
        if (step + 1) % self.rebase_every == 0:  # the rebuild supersedes this step's update
            self.checkpoint = PoolState(step + 1, tuple(self.acc))
            return [("rebuild", self.pool, self.checkpoint.values)]
        return [update]

    def load(self, state: PoolState) -> list[tuple]:
        """Adopt a PoolState; the op rebuilds the replica at that point."""
        if len(state.values) != len(self.pool):
            raise ValueError(f"pool state has {len(state.values)} accumulators, the pool has {len(self.pool)}")
        self.acc = list(state.values)
        return [("rebuild", self.pool, tuple(self.acc))]


STRATEGIES = {cls.name: cls for cls in (FeedSign, DPFeedSign, ZOFedSGD, FedKSeed)}


def make(name: str, **kw) -> Strategy:
    """A strategy by name with its options (lr, run_seed, and those its constructor takes)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES)}")
    return STRATEGIES[name](**kw)
