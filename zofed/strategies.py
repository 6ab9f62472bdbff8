"""Federated ZO strategies: what a client sends, how the server aggregates, what every replica applies.

Pure integer and float logic, torch-free, so the parameter server can run them without the model.
One step of any strategy:

    seed   = strategy.seed_for(step, client)          # from the schedule: no seed bytes need travel
    up     = strategy.up(step, client, projection)    # the client's message (1 bit for FeedSign)
    down   = strategy.aggregate(step, {client: up}, secret)  # the server's broadcast (1 bit for FeedSign)
    ops    = strategy.ops(step, down)                 # what every replica applies, in order

`secret` is the server's private seed (DP-FeedSign's mechanism); no client may know it. A strategy with
local steps (FedKSeed, local_steps = H > 1) has its client take H steps from the round's weights, with the
seeds seed_for(step, client, h), and answer all H projections in one message; `reply_shape()` is the type
and number of entries of a valid reply, which the server checks from the frame header before decoding.

`ops` are ("update", seeds, coeffs): w += sum_k coeff_k z(seed_k), or ("rebuild", seeds, coeffs):
w = base + sum_k coeff_k z(seed_k). Every party calls `ops` once per step, in step order, on its own
instance (the FedKSeed pool keeps its accumulators there), so replicas, the server's catch-up state
and an orbit replay stay in lockstep. Coefficients are computed in float64 here and rounded to
float32 once by the kernels, identically everywhere.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

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


class Steps(Sequence):
    """The per-step broadcasts inside a catch-up message, made one at a time on demand: a history of millions
    of steps stays the size of its message until someone iterates it."""

    def __init__(self, n: int, make):
        self._n, self._make = n, make

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._make(j) for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"step {i} of {self._n}")
        return self._make(i)

    def __iter__(self):
        return map(self._make, range(self._n))


class Strategy:
    """The interface every strategy implements; see the module docstring for the step."""

    name = ""
    shared_seed = True  # every client evaluates the same seed at a step (a simulator may batch their forwards)
    local_steps = 1  # steps a client takes from the round's weights before answering

    def __init__(self, *, lr: float, run_seed: int):
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive finite number, got {lr}")
        step_seed(run_seed, 0)  # validates the run seed
        self.lr, self.run_seed = float(lr), run_seed

    def seed_for(self, step: int, client: int, local: int = 0) -> int:
        return step_seed(self.run_seed, step)

    def config(self) -> dict:
        """What an orbit records to rebuild this strategy (with lr and run_seed)."""
        return {}

    def up(self, step: int, client: int, projection: float, byzantine: bool = False) -> Message:
        raise NotImplementedError

    def reply_shape(self) -> tuple[type, int]:
        """The message type of a client's reply and its number of entries (fixed per strategy)."""
        raise NotImplementedError

    def check(self, step: int, client: int, msg: Message):
        """The content of a client's reply (a sign, a value, a (seed, value) pair); ValueError naming the
        problem if it is not a valid reply to this step. The server checks replies as they arrive."""
        raise NotImplementedError

    def aggregate(self, step: int, ups: dict[int, Message], secret: int | None = None) -> Message:
        raise NotImplementedError

    def ops(self, step: int, down: Message) -> list[tuple]:
        raise NotImplementedError

    def history(self, first_step: int, downs: list[Message]) -> Message:
        """One catch-up message carrying the broadcasts of consecutive steps from first_step (also a round's
        broadcast of its B steps)."""
        raise NotImplementedError

    def reply(self, step: int, client: int, projections: Sequence, byzantine: bool = False) -> Message:
        """A client's one reply to a round of len(projections) steps from `step`: the steps' up() messages
        joined (B signs for FeedSign, B values, or B runs of (seed, value) pairs)."""
        return _join_replies([self.up(step + i, client, p, byzantine) for i, p in enumerate(projections)])

    def replies_of(self, msg: Message, steps: int) -> list[Message]:
        """The per-step messages inside a round's reply (the inverse of reply()); ValueError if it does not
        hold `steps` steps of reply_shape() entries."""
        kind, per_step = self.reply_shape()
        if not isinstance(msg, kind):
            raise ValueError(f"expected a {kind.__name__} reply, got {type(msg).__name__}")
        fields = _REPLY_FIELDS[kind]
        columns = [tuple(getattr(msg, f)) for f in fields]
        if len(columns[0]) != per_step * steps:
            raise ValueError(f"a reply to {steps} step(s) holds {per_step * steps} entries, got {len(columns[0])}")
        return [kind(msg.first_step + i, *(col[i * per_step:(i + 1) * per_step] for col in columns))
                for i in range(steps)]

    def steps_of(self, history: Message) -> Sequence[Message]:
        """The per-step broadcasts inside a catch-up message (the inverse of history())."""
        raise NotImplementedError


_REPLY_FIELDS = {Votes: ("signs",), Scalars: ("values",), SeedScalars: ("seeds", "values")}


def _join_replies(msgs: list[Message]) -> Message:
    kind = type(msgs[0])
    return kind(msgs[0].first_step, *(tuple(x for m in msgs for x in getattr(m, f)) for f in _REPLY_FIELDS[kind]))


class FeedSign(Strategy):
    """feedsign.txt eq. 2-4: one shared seed per step, each client votes sign(p_k) (1 bit), the server
    broadcasts the majority sign (1 bit), every replica steps w -= lr * sign * z."""

    name = "feedsign"

    def up(self, step, client, projection, byzantine=False):
        sign = 1 if projection >= 0 else -1  # a zero projection (flat loss) votes +1, as sign() >= 0 would
        return Votes(step, (-sign if byzantine else sign,))  # a Byzantine client always reverses

    def reply_shape(self):
        return Votes, 1

    def check(self, step, client, msg):
        m = _one(msg, Votes, step, f"client {client}")
        if m.count != 1:
            raise ValueError(f"client {client} sent {m.count} votes for one step")
        return m.signs[0]

    def _signs(self, step, ups):
        return [self.check(step, c, m) for c, m in sorted(ups.items())]

    def aggregate(self, step, ups, secret=None):
        return Votes(step, (agg.majority_sign(self._signs(step, ups), step_seed(self.run_seed, step, SHARED, _TIE)),))

    def ops(self, step, down):
        m = _one(down, Votes, step, "broadcast")
        if m.count != 1:
            raise ValueError(f"a FeedSign broadcast carries one sign, got {m.count}")
        return [("update", (self.seed_for(step, SHARED),), (-self.lr * m.signs[0],))]

    def history(self, first_step, downs):
        return Votes(first_step, [d.signs[0] for d in downs])

    def steps_of(self, history):
        if not isinstance(history, Votes):
            raise ValueError(f"a FeedSign history is a Votes message, got {type(history).__name__}")
        signs, first = history.signs, history.first_step
        return Steps(len(signs), lambda i: Votes(first + i, (signs[i],)))


class DPFeedSign(FeedSign):
    """feedsign.txt Definition 3: the broadcast sign is drawn by the exponential mechanism with privacy
    budget epsilon. Its randomness comes from the server's secret, which clients never see: a client that
    knew it could recompute the mechanism's coin and undo the privacy."""

    name = "dp-feedsign"

    def __init__(self, *, lr, run_seed, epsilon: float):
        super().__init__(lr=lr, run_seed=run_seed)
        if not (epsilon >= 0 and math.isfinite(epsilon)):
            raise ValueError(f"dp epsilon must be a finite number >= 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def config(self):
        return {"dp_epsilon": self.epsilon}

    def aggregate(self, step, ups, secret=None):
        if secret is None:
            raise ValueError("DP-FeedSign's mechanism needs the server's private secret (aggregate(..., secret=))")
        return Votes(step, (agg.dp_sign(self._signs(step, ups), self.epsilon, step_seed(secret, step)),))


def _local(*parts: int, local: int) -> tuple[int, ...]:
    """Hash parts for local step `local`; local step 0 hashes as before local steps existed (same runs)."""
    return parts + ((local,) if local else ())


def _random_projection(run_seed: int, step: int, client: int, scale: float, local: int = 0) -> float:
    """A Byzantine client's projection: uniform in [-scale, scale], hashed (the paper's "random number")."""
    return scale * (2 * unit(*_local(run_seed, step, client, _BYZANTINE, local=local)) - 1)


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
    """FedKSeed (Qin et al. 2024, "Federated full-parameter tuning of billion-sized language models with
    communication cost under 18 kilobytes"): seeds restricted to a pool of K = `pool_size` candidates fixed
    for the run; every party keeps one accumulated coefficient A_j per candidate. Every `rebase_every` steps
    all replicas rebuild w = base + sum_j A_j z_j from the base weights, so a client that missed more than the
    server's history catches up exactly with the pool state plus the broadcasts since the last rebuild.

    sampling="importance" is FedKSeed's probability-differentiated seed sampling (its "FedKSeed-Pro"): the
    importance of candidate j is the mean of |clip(g, -clip, clip)| over its history, the scalar gradients g
    broadcast for it so far after an initial 0 (FedKSeed's grad_initial; clip: its bias_loss_clip, default
    1000); importances are min-max normalized to [0, 1] and p = softmax(normalized). So max p / min p <= e,
    and gradients of opposite signs add to a candidate's importance instead of cancelling. The probabilities
    change only with the broadcasts, so every party computes the same ones.

    local_steps=H: each client takes H ZO-SGD steps from the round's weights (seeds drawn with the round's
    probabilities), answers its H (seed, g) pairs, and the round's update is the mean over clients of each
    client's summed local steps. data_sizes: FedKSeed's data-size client weights (the server's option; the
    default weighs clients equally): the server scales each client's values by n_clients * size / total size
    of the clients that answered, so the replicas' mean becomes the data-weighted mean. With data-size
    weights the importance history holds those scaled values."""

    name = "fedkseed"
    SAMPLINGS = ("uniform", "importance")

    def __init__(self, *, lr, run_seed, pool_size: int = 64, sampling: str = "uniform", rebase_every: int = 100,
                 byzantine_scale: float = 100.0, local_steps: int = 1, clip: float = 1000.0,
                 data_sizes: Sequence[int] | None = None):
        super().__init__(lr=lr, run_seed=run_seed, byzantine_scale=byzantine_scale)
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or not 1 <= pool_size <= 1 << 16:
            raise ValueError(f"pool_size must be an integer in [1, 65536], got {pool_size!r}")
        if sampling not in self.SAMPLINGS:
            raise ValueError(f"sampling must be one of {self.SAMPLINGS}, got {sampling!r}")
        if isinstance(rebase_every, bool) or not isinstance(rebase_every, int) or rebase_every < 1:
            raise ValueError(f"rebase_every must be a positive integer, got {rebase_every!r}")
        if isinstance(local_steps, bool) or not isinstance(local_steps, int) or not 1 <= local_steps <= 1 << 16:
            raise ValueError(f"local_steps must be an integer in [1, 65536], got {local_steps!r}")
        if not (clip > 0 and math.isfinite(clip)):
            raise ValueError(f"clip must be a positive finite number, got {clip}")
        if data_sizes is not None and not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                              for n in data_sizes):
            raise ValueError(f"data_sizes must be positive integers (examples per client), got {data_sizes!r}")
        self.pool = tuple(pool_seed(run_seed, j) for j in range(pool_size))
        self.index = {s: j for j, s in enumerate(self.pool)}
        self.sampling, self.rebase_every, self.local_steps, self.clip = sampling, rebase_every, local_steps, float(clip)
        self.data_sizes = None if data_sizes is None else tuple(data_sizes)
        self.acc = [0.0] * pool_size
        self.abs_sum = [0.0] * pool_size  # sum of |clip(g)| over each candidate's history (the initial 0 included)
        self.uses = [1] * pool_size  # history lengths, the initial value included
        self._cdf: list[float] | None = None
        # the pool state before the first step after the last rebuild: what a client that missed more than the
        # server's history receives, followed by the broadcasts since
        self.checkpoint = PoolState(0, self._state())

    def config(self):
        return {"pool_size": len(self.pool), "sampling": self.sampling, "rebase_every": self.rebase_every,
                "local_steps": self.local_steps}

    def probabilities(self) -> list[float]:
        """Each candidate's sampling probability for the next step."""
        if self.sampling == "uniform":
            return [1 / len(self.pool)] * len(self.pool)
        weights = self._weights()
        total = math.fsum(weights)
        return [w / total for w in weights]

    def _weights(self) -> list[float]:
        """exp(min-max normalized importance): the softmax's numerators."""
        psi = [a / n for a, n in zip(self.abs_sum, self.uses)]
        lo, hi = min(psi), max(psi)
        return [math.exp((v - lo) / (hi - lo)) if hi > lo else 1.0 for v in psi]

    def seed_for(self, step, client, local=0):
        u = unit(*_local(self.run_seed, step, client, _PICK, local=local))
        if self.sampling == "uniform":
            return self.pool[min(int(u * len(self.pool)), len(self.pool) - 1)]
        if self._cdf is None:
            running, self._cdf = 0.0, []
            for w in self._weights():
                running += w
                self._cdf.append(running)
        return self.pool[min(bisect.bisect_right(self._cdf, u * self._cdf[-1]), len(self.pool) - 1)]

    def _weighted(self, got):
        if self.data_sizes is None:
            return got
        if max(got) >= len(self.data_sizes):
            raise ValueError(f"client {max(got)} has no data size (data_sizes covers {len(self.data_sizes)} clients)")
        total = sum(self.data_sizes[c] for c in got)
        return {c: tuple((s, v * (len(got) * self.data_sizes[c] / total)) for s, v in pairs)
                for c, pairs in got.items()}

    def ops(self, step, down):
        (update,) = super().ops(step, down)
        (pairs,) = down.steps
        for (seed, value), coeff in zip(pairs, update[2]):
            j = self.index.get(seed)
            if j is None:
                raise ValueError(f"the broadcast of step {step} holds seed {seed}, which is not in the pool")
            self.acc[j] += coeff
            self.abs_sum[j] += min(abs(value), self.clip)
            self.uses[j] += 1
        self._cdf = None
        if (step + 1) % self.rebase_every == 0:  # the rebuild supersedes this step's update
            self.checkpoint = PoolState(step + 1, self._state())
            return [("rebuild", self.pool, tuple(self.acc))]
        return [update]

    def _state(self) -> tuple[float, ...]:
        """What a PoolState carries: the K accumulators, then for importance sampling the K history sums and
        the K history lengths (float64 holds them exactly up to 2**53)."""
        extra = self.abs_sum + [float(n) for n in self.uses] if self.sampling == "importance" else []
        return tuple(self.acc + extra)

    def load(self, state: PoolState) -> list[tuple]:
        """Adopt a PoolState; the op rebuilds the replica at that point."""
        k = len(self.pool)
        parts = 3 if self.sampling == "importance" else 1
        if len(state.values) != parts * k:
            raise ValueError(f"pool state has {len(state.values)} values, a pool of {k} with {self.sampling} "
                             f"sampling has {parts * k}")
        values = list(state.values)
        if parts == 3:
            sums, uses = values[k:2 * k], values[2 * k:]
            if not all(v >= 0 for v in sums) or not all(n >= 1 and n == int(n) for n in uses):
                raise ValueError("pool state: history sums must be >= 0 and history lengths whole numbers >= 1")
            self.abs_sum, self.uses = sums, [int(n) for n in uses]
        self.acc = values[:k]
        self._cdf = None
        return [("rebuild", self.pool, tuple(self.acc))]


STRATEGIES = {cls.name: cls for cls in (FeedSign, DPFeedSign, ZOFedSGD, FedKSeed)}


def make(name: str, **kw) -> Strategy:
    """A strategy by name with its options (lr, run_seed, and those its constructor takes)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES)}")
    return STRATEGIES[name](**kw)
