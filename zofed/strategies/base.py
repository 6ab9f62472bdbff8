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

import math
from collections.abc import Sequence

from ..seeds import step_seed, unit
from ..wire import Message, PoolState, Scalars, SeedScalars, StepUpdates, Votes

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
    keeps_base = False  # its replicas rebuild from the starting weights (Replica(keep_base=True))
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

    # the hooks of strategies whose state lets a client catch up without the whole history (FedKSeed's pool)

    def snapshot(self) -> Message | None:
        """A message that brings a client to snapshot's step whatever it missed before (its history floor)."""
        return None

    def history_floor(self) -> int | None:
        """The step before which the server need not keep broadcasts (snapshot() covers them); None: keep those
        of every client that may come back."""
        return None

    def restore(self, msg: Message) -> list[tuple]:
        """Adopt a snapshot() message; the ops that bring a replica to its step."""
        raise ValueError(f"a {type(msg).__name__} arrived for {self.name or 'a strategy'}, which has no snapshot")


_REPLY_FIELDS = {Votes: ("signs",), Scalars: ("values",), SeedScalars: ("seeds", "values")}


def _join_replies(msgs: list[Message]) -> Message:
    kind = type(msgs[0])
    return kind(msgs[0].first_step, *(tuple(x for m in msgs for x in getattr(m, f)) for f in _REPLY_FIELDS[kind]))


def _local(*parts: int, local: int) -> tuple[int, ...]:
    """Hash parts for local step `local`; local step 0 hashes as before local steps existed (same runs)."""
    return parts + ((local,) if local else ())


def _random_projection(run_seed: int, step: int, client: int, scale: float, local: int = 0) -> float:
    """A Byzantine client's projection: uniform in [-scale, scale], hashed (the paper's "random number")."""
    return scale * (2 * unit(*_local(run_seed, step, client, _BYZANTINE, local=local)) - 1)


def _join_steps(first_step: int, downs: list[StepUpdates]) -> StepUpdates:
    return StepUpdates(first_step, tuple(d.steps[0] for d in downs))


def _split_steps(history: Message) -> list[StepUpdates]:
    if not isinstance(history, StepUpdates):
        raise ValueError(f"this history is a StepUpdates message, got {type(history).__name__}")
    return [StepUpdates(history.first_step + i, (s,)) for i, s in enumerate(history.steps)]


STRATEGIES: dict[str, type] = {}  # name -> class: what `zofed run --strategy` and orbits accept


def register(cls: type) -> type:
    """Add a strategy class to the registry under its name (a class decorator)."""
    if not cls.name or cls.name in STRATEGIES and STRATEGIES[cls.name] is not cls:
        raise ValueError(f"a strategy needs a name of its own, got {cls.name!r}")
    STRATEGIES[cls.name] = cls
    return cls


def make(name: str, **kw) -> Strategy:
    """A strategy by name with its options (lr, run_seed, and those its constructor takes)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES)}")
    return STRATEGIES[name](**kw)
