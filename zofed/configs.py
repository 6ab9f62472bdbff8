"""Run configurations: the step simulator's SimConfig, FedMeZOConfig and ZOWarmUpConfig, and their checks.

Torch-free, so `zofed run` rejects a bad config at once. Every check raises ValueError naming the field:
"config field 'lr' must be a positive finite number, got -1". SimConfig's strategy-specific fields come from
the registry (zofed.strategies: each strategy's options), as do the round algorithms' names and configs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from . import strategies
from .data import CONVENTIONS
from .strategies.fedkseed import CLIENT_WEIGHTS

DISTS = ("gaussian", "rademacher", "uniform")
SIGNALS = ("round-loss", "five-round-loss", "update")  # FedMeZO's heterogeneity signals (fedmezo.txt 5.4)
SERVER_OPTS = ("fedavg", "fedadam")
ZO_UPDATES = ("sum", "data-mean")  # ZOWarmUp's ZO update: Algorithm 1's sum, or a data-weighted mean


class _DefaultLR(Mapping):
    """strategy name -> its default lr, read from the registry (Strategy.default_lr) when asked."""

    def __getitem__(self, name):
        return strategies.STRATEGIES[name].default_lr

    def __iter__(self):
        return iter(strategies.STRATEGIES)

    def __len__(self):
        return len(strategies.STRATEGIES)


DEFAULT_LR = _DefaultLR()


class _Checked:
    """Field checks shared by the configs: types from the annotations, then ranges."""

    def _bad(self, name: str, why: str):
        raise strategies.field_error(name, why, getattr(self, name))

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


@dataclass(init=False, repr=False, eq=False)  # __init__, __repr__, __eq__ below: over every field, options too
class SimConfig(_Checked):
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
                    choices=dict(strategy=sorted(strategies.STRATEGIES), convention=CONVENTIONS, dist=DISTS))
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


@dataclass
class FedMeZOConfig(_Checked):
    """FedMeZO (zofed.fedmezo): `rounds` rounds of H = `local_steps` MeZO steps per client."""

    clients: int = 5  # K, simulated clients
    rounds: int = 10  # communication rounds
    local_steps: int = 30  # H: MeZO steps per client per round
    lr: float = 1e-3  # eta_0: the MeZO step size
    eps: float = 1e-3  # perturbation scale
    batch: int = 16  # examples per client per MeZO step
    encoding: str = "seeds"  # upload: seeds (H seed/projection pairs, replayed) or dense weights
    client_weights: str = "equal"  # the server's average: equal 1/N (fedmezo.txt eq. 1), or by data size (FedAvg)
    alpha: float = 0.0  # personalization strength; 0: plain FedMeZO
    signal: str = "update"  # heterogeneity signal of the personalized rates (fedmezo.txt 5.4)
    dirichlet: float | None = None  # label-skew concentration beta; None: iid
    seed: int = 0  # the run seed
    eval_every: int = 1  # rounds between held-out evaluations

    def validate(self) -> None:
        self._check(positive_ints=("clients", "rounds", "local_steps", "batch", "eval_every"),
                    positive=("lr", "eps", "dirichlet"),
                    choices=dict(encoding=("seeds", "dense"), signal=SIGNALS, client_weights=CLIENT_WEIGHTS))
        if not 0 <= self.alpha < 1:
            self._bad("alpha", "must be in [0, 1) so every eta_i stays positive")


@dataclass
class ZOWarmUpConfig(_Checked):
    """ZOWarmUp (zofed.zowarmup): `warmup_rounds` first-order rounds, then `zo_rounds` zeroth-order ones."""

    clients: int = 50  # K, simulated clients
    high_fraction: float = 0.1  # the high-resource tier's share of the clients (the "10/90" split: 0.1)
    warmup_rounds: int = 100  # N: first-order rounds
    zo_rounds: int = 300  # M: zeroth-order rounds
    participation: float = 1.0  # fraction of the eligible clients sampled per round (at least one)
    local_epochs: int = 3  # client SGD epochs per warm-up round
    fo_batch: int = 64  # client SGD batch in the warm-up
    fo_lr: float = 0.1  # client SGD step in the warm-up
    server_opt: str = "fedavg"  # the server optimizer
    server_lr: float = 1.0  # the server optimizer's step
    zo_lr: float = 1e-4  # eta_zo; small because "sum" adds up |Q| * S estimates (150 with every client, S = 3)
    # the ZO update's estimate g: "sum" of the |Q| * S per-probe estimates (Algorithm 1, line 31), or "data-mean":
    # their mean weighted by the clients' data sizes (sum_j n_j / n / S, about |Q| * S times smaller: scale zo_lr)
    zo_update: str = "sum"
    perturbations: int = 3  # S: seeds per client per ZO round
    tau: float = 0.75  # scale of the Rademacher probes (z = tau * r)
    eps: float = 1e-3  # perturbation scale
    dirichlet: float | None = 0.1  # label-skew concentration beta; None: iid
    high_res_only: bool = False  # the baseline: low-resource clients left out, every round first-order
    seed: int = 0  # the run seed
    eval_every: int = 10  # rounds between held-out evaluations

    @property
    def rounds(self) -> int:
        return self.warmup_rounds + self.zo_rounds

    def validate(self) -> None:
        self._check(positive_ints=("clients", "local_epochs", "fo_batch", "perturbations", "eval_every"),
                    positive=("fo_lr", "server_lr", "zo_lr", "eps", "dirichlet"),
                    unit=("high_fraction", "participation", "tau"),
                    choices=dict(server_opt=SERVER_OPTS, zo_update=ZO_UPDATES))
        for name in ("warmup_rounds", "zo_rounds"):
            if getattr(self, name) < 0:
                self._bad(name, "must be an integer >= 0")
        if self.rounds < 1:
            self._bad("zo_rounds", "leaves no rounds at all (warmup_rounds + zo_rounds must be >= 1)")


def _fedmezo(task, cfg):
    from .fedmezo import FedMeZO

    return FedMeZO(task, cfg)


def _zowarmup(task, cfg):
    from .zowarmup import ZOWarmUp

    return ZOWarmUp(task, cfg)


# the round algorithms register here until their modules import no torch at module level (zofed.strategies)
strategies.register_round(strategies.RoundAlgorithm("fedmezo", FedMeZOConfig, _fedmezo))
strategies.register_round(strategies.RoundAlgorithm("zowarmup", ZOWarmUpConfig, _zowarmup, task="digits"))
sim_fields()  # SimConfig's fields hold the built-in strategies' options from the start
