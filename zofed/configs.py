"""The step simulator's run configuration, SimConfig, and its checks (a round algorithm's config sits in its own
file under zofed.strategies).

Torch-free, so `zofed run` rejects a bad config at once. Every check raises ValueError naming the field:
"config field 'lr' must be a positive finite number, got -1". SimConfig's strategy-specific fields come from
the registry (zofed.strategies: each strategy's options).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from zokernels import spec

from . import strategies
from .data import CONVENTIONS

DISTS = ("gaussian", "rademacher", "uniform")


@dataclass(init=False, repr=False, eq=False)  # __init__, __repr__, __eq__ below: over every field, options too
class SimConfig(strategies.CheckedConfig):
    """A simulated run of a step strategy (zofed.sim). lr is the step size (for FeedSign the size of each
    signed step along z).

    Its fields: the run's own, declared here, then every registered strategy's options (zofed.strategies.Option:
    dp_epsilon, aggregator, pool_size, ...), joined when a config is made (sim_fields()); dataclasses.fields and
    dataclasses.asdict see both. Every field is a keyword: SimConfig(strategy="fedkseed", pool_size=16)."""

    strategy: str = "feedsign"  # the federated algorithm
    clients: int = 5  # K, simulated clients
    steps: int = 400  # steps of the run
    # B: steps per round. A round carries B steps' seeds (from the schedule), a client answers all B in one message,
    # the server broadcasts the B results at once. The B directions are evaluated at the same weights (the round's):
    # B amortizes a transport's per-message cost, and B = 1 is the plain algorithm
    steps_per_round: int = 1
    lr: float | None = None  # step size (FeedSign: each signed step along z); None: the strategy's default
    eps: float = 1e-3  # perturbation scale
    batch: int = 16  # examples per client per step
    byzantine: int = 0  # the last `byzantine` clients attack (reversed sign / random projection)
    dirichlet: float | None = None  # label-skew concentration beta; None: iid
    convention: str = "per-class"  # how --dirichlet skews the labels: a Dirichlet draw per class or per client
    # dp-feedsign: the server's private seed; None: drawn from os.urandom. Kept in the checkpoint only (not in
    # summary.json, metrics or orbit); give one to make a DP-FeedSign run reproducible
    server_secret: int | None = None
    participation: float = 1.0  # fraction of online clients sampled per round
    dropout: float = 0.0  # probability that a client is offline at a step (it catches up when back)
    quorum: int | None = None  # replies that close a round; None: every sampled client
    deadline: float | None = None  # seconds; simulated reply latencies are uniform in [0, 1) s
    dist: str = "gaussian"  # distribution of z
    # noise spec version of z (docs/noise.md): 2 is a cheaper stream (Philox-7, 32 Rademacher signs per word, a
    # polynomial Gaussian), not bit-compatible with 1
    spec_version: int = 1
    seed: int = 0  # the run seed
    eval_every: int = 50  # steps between held-out evaluations

    def __init__(self, **values):
        fields = {f.name: f for f in sim_fields()}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise TypeError(f"SimConfig has no field(s) {unknown}; its fields are {sorted(fields)}")
        for name, f in fields.items():
            setattr(self, name, values.get(name, f.default))
        if self.lr is None:
            self.lr = strategies.STRATEGIES[self.strategy].default_lr if self.strategy in strategies.STRATEGIES \
                else 1e-3  # validate() refuses the unknown strategy

    def __repr__(self):
        return f"SimConfig({', '.join(f'{k}={v!r}' for k, v in dataclasses.asdict(self).items())})"

    def __eq__(self, other):
        return type(other) is SimConfig and dataclasses.asdict(self) == dataclasses.asdict(other)

    def _options(self) -> dict:
        """This run's strategy's options' values by field name."""
        return {o.name: getattr(self, o.name) for o in strategies.STRATEGIES[self.strategy].options}

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        self._check(positive_ints=("clients", "steps", "steps_per_round", "batch", "eval_every"),
                    positive=("lr", "eps", "dirichlet", "deadline"), unit=("participation",),
                    choices=dict(strategy=sorted(strategies.STRATEGIES), convention=CONVENTIONS, dist=DISTS,
                                 spec_version=spec.SPEC_VERSIONS))
        takers = option_takers()
        for name, (option, _) in takers.items():
            error = option.error(getattr(self, name))
            if error:
                raise error
        for name, (option, taken_by) in takers.items():
            if getattr(self, name) != option.default and self.strategy not in taken_by:
                which = f"strategy {taken_by[0]!r}" if len(taken_by) == 1 else \
                    "strategies " + ", ".join(map(repr, taken_by))
                self._bad(name, f"applies to {which} only (this run is {self.strategy!r})")
        if self.steps % self.steps_per_round:
            self._bad("steps_per_round", f"must divide steps={self.steps}")
        strategies.STRATEGIES[self.strategy].check_run(self)
        if self.server_secret is not None and not 0 <= self.server_secret < 2**64:
            self._bad("server_secret", "must be an integer in [0, 2**64)")
        if not 0 <= self.byzantine <= self.clients:
            self._bad("byzantine", f"must be an integer in [0, clients={self.clients}]")
        if not 0 <= self.dropout < 1:
            self._bad("dropout", "must be in [0, 1)")
        if self.quorum is not None and not 1 <= self.quorum <= self.clients:
            self._bad("quorum", f"must be in [1, clients={self.clients}]")

    def strategy_options(self) -> dict:
        """The options this strategy takes (what an orbit records to rebuild it)."""
        return strategies.STRATEGIES[self.strategy].replay_options(self._options())

    def make_strategy(self, data_sizes: list[int] | None = None) -> strategies.Strategy:
        """The strategy; data_sizes (examples per client) are needed with client_weights = "data-size"."""
        return strategies.STRATEGIES[self.strategy].build(lr=self.lr, run_seed=self.seed, values=self._options(),
                                                          data_sizes=data_sizes)


_RUN_FIELDS = dict(SimConfig.__dataclass_fields__)  # SimConfig's own, before any option joins them


def option_takers() -> dict:
    """option name -> (the Option, the names of the registered strategies that take it), in registry order."""
    takers = {}
    for name, cls in strategies.STRATEGIES.items():
        for option in cls.options:
            takers.setdefault(option.name, (option, []))[1].append(name)
    return takers


def sim_fields() -> tuple[dataclasses.Field, ...]:
    """SimConfig's fields: the run's own, then every registered strategy's options (the registry as it is now:
    a strategy registered later adds its options to the configs made after)."""
    takers = option_takers()
    clash = sorted(set(takers) & set(_RUN_FIELDS))
    if clash:
        raise ValueError(f"strategy option(s) {clash} would shadow SimConfig's own field(s): rename the option")
    options = dataclasses.make_dataclass("StrategyOptions", [  # dataclasses' own Field objects for the options
        (name, option.type.__name__, dataclasses.field(default=option.default, metadata=dict(option=option)))
        for name, (option, _) in takers.items()])
    SimConfig.__dataclass_fields__ = dict(_RUN_FIELDS, **options.__dataclass_fields__)
    return dataclasses.fields(SimConfig)


sim_fields()  # SimConfig's fields hold the built-in strategies' options from the start
