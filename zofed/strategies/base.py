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

The registry. A strategy is one file (imported in strategies/__init__.py); its class declares everything a run
derives from it, and nothing else names it (zofed.configs, `zofed run`, orbits, plots and tables read these):

    @register
    class MyStrategy(Strategy):
        name = "my-strategy"   # `zofed run --strategy my-strategy`, the orbit's strategy
        default_lr = 1e-3      # a run's lr when its config gives none
        options = (Option("my_width", int, 4, "what it is, in one line", valid=POSITIVE_INT),)
        #   each Option is a SimConfig field, a `zofed run --my-width` flag and TOML key with its --help line, default
        #   and check ("config field 'my_width' must be a positive integer, got 0"); its value reaches the
        #   constructor as keyword `my_width` (Option.keyword) and the orbit's strategy_options (Option.replay)
        @classmethod
        def label(cls, values): ...       # the runs' name in plots and tables (default: name)
        @classmethod
        def check_run(cls, config): ...   # checks across fields (FedKSeed: importance sampling needs B = 1)
        @classmethod
        def build(cls, *, lr, run_seed, values, data_sizes=None): ...  # what else a run needs to build it

A round-based algorithm (zofed.rounds drives it; its interface is in that module's docstring) is one file too,
imported here, holding its config and registering register_round(RoundAlgorithm(name, config, build, label, task)):
its config dataclass (a CheckedConfig) has fields that are its flags and TOML keys (their comments the --help
text, validate() their checks), build(task, config) makes the algorithm, aggregate returns a Round. A module that
registers imports no torch at module level (the protocol core stays torch-free): the parts that touch tensors
import it when called (fedmezo.py, zowarmup.py). run_label(config) is a run's name in plots and tables.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..seeds import step_seed, unit
from ..wire import Dense, Message, PoolState, Scalars, SeedScalars, StepUpdates, Votes

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
    options: tuple[Option, ...] = ()  # its config fields, flags and TOML keys (see Option)
    default_lr = 1e-3  # a run's lr when its config gives none

    @classmethod
    def label(cls, values: dict) -> str:
        """Its runs' name in plots and tables; values: its options' values by field name."""
        return cls.name

    @classmethod
    def check_run(cls, config) -> None:
        """Raise field_error(...) if the run config's fields (its options and the run's, e.g. steps_per_round)
        do not make a run of this strategy; each option's own check has passed."""

    @classmethod
    def replay_options(cls, values: dict) -> dict:
        """What an orbit records (its strategy_options) to rebuild this strategy with lr and run_seed."""
        return {o.keyword: values[o.name] for o in cls.options if o.keyword and o.replay}

    @classmethod
    def keywords(cls, values: dict) -> dict:
        """Its constructor's keywords from its options' values (by field name)."""
        return {o.keyword: values[o.name] for o in cls.options if o.keyword}

    @classmethod
    def build(cls, *, lr: float, run_seed: int, values: dict, data_sizes: Sequence[int] | None = None) -> Strategy:
        """This strategy for a run whose config holds its options' `values` (by field name); data_sizes: the
        clients' example counts, for a strategy that can weigh clients by them (FedKSeed's client_weights)."""
        return cls(lr=lr, run_seed=run_seed, **cls.keywords(values))

    def __init__(self, *, lr: float, run_seed: int):
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive finite number, got {lr}")
        step_seed(run_seed, 0)  # validates the run seed
        self.lr, self.run_seed = float(lr), run_seed

    def seed_for(self, step: int, client: int, local: int = 0) -> int:
        return step_seed(self.run_seed, step)

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


def field_error(name: str, why: str, value) -> ValueError:
    """The error of a bad config field, in the one form every check uses: "config field 'lr' must be ..., got -1"."""
    return ValueError(f"config field {name!r} {why}, got {value!r}")


POSITIVE_INT = ("a positive integer", lambda v: v >= 1)
POSITIVE = ("a positive finite number", lambda v: v > 0 and math.isfinite(v))
NON_NEGATIVE = ("a finite number >= 0", lambda v: v >= 0 and math.isfinite(v))


@dataclass(frozen=True)
class Option:
    """A config field a strategy takes: a zofed.configs.SimConfig field, the `zofed run --<name with ->` flag and
    its --config TOML key. Every step run's config holds every registered strategy's options (a summary's config
    has the same keys whatever the strategy); a value other than the default is refused for a strategy that does
    not take the option."""

    name: str
    type: type  # int, float, str or bool
    default: object
    doc: str  # one line: what the option is (`zofed run --help`)
    choices: tuple = ()  # the values allowed (also the flag's choices), or
    valid: tuple | None = None  # (what a value must be, its test), e.g. POSITIVE_INT; the type is checked first
    keyword: str | None = ""  # the strategy's constructor keyword ("": the option's name; None: build() reads it)
    replay: bool = True  # recorded in the orbit's strategy_options: the constructor needs it to replay broadcasts

    def __post_init__(self):
        if self.type not in (int, float, str, bool) or not isinstance(self.default, self.type) or \
                isinstance(self.default, bool) != (self.type is bool):
            raise ValueError(f"option {self.name!r}: its type must be int, float, str or bool and its default "
                             f"one of that type, got {self.type!r} and {self.default!r}")
        if self.keyword == "":
            object.__setattr__(self, "keyword", self.name)

    def error(self, value) -> ValueError | None:
        """The error naming this config field if `value` is not one it takes, else None."""
        kinds = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
        ok_type = isinstance(value, bool) if self.type is bool else not isinstance(value, bool) and isinstance(
            value, (int, float) if self.type is float else self.type)
        if not ok_type:
            return field_error(self.name, "must be " + kinds[self.type], value)
        if self.choices and value not in self.choices:
            return field_error(self.name, f"must be one of {tuple(self.choices)}", value)
        if self.valid and not self.valid[1](value):
            return field_error(self.name, "must be " + self.valid[0], value)
        return None


STRATEGIES: dict[str, type] = {}  # name -> step strategy class: what `zofed run --strategy` and orbits accept


def register(cls: type) -> type:
    """Add a step strategy class to the registry under its name (a class decorator)."""
    if not cls.name or cls.name in ROUNDS or cls.name in STRATEGIES and STRATEGIES[cls.name] is not cls:
        raise ValueError(f"a strategy needs a name of its own, got {cls.name!r}")
    for option in cls.options:
        for other in STRATEGIES.values():
            theirs = {o.name: o for o in other.options}.get(option.name)
            if theirs is not None and theirs != option and other is not cls:
                raise ValueError(f"strategy {cls.name!r} declares option {option.name!r} otherwise than strategy "
                                 f"{other.name!r}: one config field, one declaration (share the Option object)")
    STRATEGIES[cls.name] = cls
    return cls


def make(name: str, **kw) -> Strategy:
    """A strategy by name with its options (lr, run_seed, and those its constructor takes)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES)}")
    return STRATEGIES[name](**kw)


@dataclass(frozen=True)
class RoundAlgorithm:
    """A round-based algorithm (FedMeZO, ZOWarmUp) as the registry knows it; zofed.rounds drives it."""

    name: str  # `zofed run --strategy NAME`
    config: type  # its config dataclass: its fields are its flags and TOML keys, its validate() their checks
    build: Callable  # (task, config) -> the algorithm zofed.rounds.run drives; may import torch, when called
    label: str = ""  # its name in plots and tables ("": its name)
    task: str = "vader"  # the task a run takes when its config names none
    replay: type | None = None  # the Strategy that replays its orbit's broadcasts (None: its runs have no orbit)


class Round(NamedTuple):
    """What a round algorithm's aggregate(t, uploads) gives: the broadcast (None: none) and its recipients, and the
    message that brings the global model to the round's end (the broadcast, or what only the server holds:
    ZOWarmUp's warm-up)."""

    down: object
    to: list
    model: object


def expect_upload(msg, kind: type, step: int, client: int):
    """msg, if it is a `kind` upload for `step`; ValueError naming the client otherwise."""
    first = getattr(msg, "step", None) if isinstance(msg, Dense) else getattr(msg, "first_step", None)
    if not isinstance(msg, kind) or first != step:
        raise ValueError(f"client {client}: expected a {kind.__name__} upload for step {step}, got {msg!r:.80}")
    return msg


class CheckedConfig:
    """The checks of a run config dataclass (SimConfig, a round algorithm's): types from the annotations (strings:
    the module imports annotations from __future__), then ranges, each failure a field_error."""

    def _bad(self, name: str, why: str):
        raise field_error(name, why, getattr(self, name))

    def _check_types(self) -> None:
        for f in dataclasses.fields(self):
            v, kind = getattr(self, f.name), f.type.split(" |")[0]
            if v is None and "None" in f.type:
                continue
            ok = {"str": isinstance(v, str), "bool": isinstance(v, bool),
                  "int": isinstance(v, int) and not isinstance(v, bool),
                  "float": isinstance(v, (int, float)) and not isinstance(v, bool)}[kind]
            if not ok:
                self._bad(f.name, "must be " + {"str": "a string", "bool": "true or false", "int": "an integer",
                                                "float": "a number"}[kind])

    def _check(self, positive_ints=(), positive=(), unit=(), choices=None) -> None:
        """positive_ints >= 1; positive: finite > 0 (skipped when None); unit: in (0, 1]; choices: allowed values."""
        self._check_types()
        for name in positive_ints:
            if getattr(self, name) < 1:
                self._bad(name, "must be a positive integer")
        for name in positive:
            v = getattr(self, name)
            if v is not None and not (v > 0 and math.isfinite(v)):
                self._bad(name, "must be a positive finite number")
        for name in unit:
            if not 0 < getattr(self, name) <= 1:
                self._bad(name, "must be in (0, 1]")
        for name, allowed in (choices or {}).items():
            if getattr(self, name) not in allowed:
                self._bad(name, f"must be one of {tuple(allowed)}")
        if not 0 <= self.seed < 2**63:
            self._bad("seed", "must be an integer in [0, 2**63)")


ROUNDS: dict[str, RoundAlgorithm] = {}  # name -> round algorithm: the other `zofed run --strategy` choices


def register_round(algorithm: RoundAlgorithm) -> RoundAlgorithm:
    """Add a round algorithm to the registry under its name."""
    name = algorithm.name
    if not name or name in STRATEGIES or name in ROUNDS and ROUNDS[name] != algorithm:
        raise ValueError(f"a round algorithm needs a name of its own, got {name!r}")
    ROUNDS[name] = algorithm
    return algorithm


def run_label(config: dict) -> str:
    """A run's name in plots and tables, from its config (summary.json's "config", which names the strategy)."""
    name = config["strategy"]
    if name in ROUNDS:
        label = ROUNDS[name].label or name
    elif name not in STRATEGIES:  # a run of a strategy this installation does not register
        label = name
    else:
        cls = STRATEGIES[name]
        label = cls.label({o.name: config.get(o.name, o.default) for o in cls.options})
    # runs on another noise stream are other runs: say so, or a v1 and a v2 run share a name
    version = config.get("spec_version", 1)
    return label if version == 1 else f"{label} (noise v{version})"
