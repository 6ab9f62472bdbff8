"""FedKSeed: ZO-FedSGD on a pool of K candidate seeds, with exact catch-up from the pool's accumulators."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from ..seeds import pool_seed, unit
from ..wire import PoolState
from .base import _PICK, POSITIVE_INT, Option, _local, field_error, register
from .zo_fedsgd import BYZANTINE_SCALE, ZOFedSGD

CLIENT_WEIGHTS = ("equal", "data-size")  # how a server weighs the clients it averages

@register
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
    keeps_base = True
    SAMPLINGS = ("uniform", "importance")
    options = (Option("pool_size", int, 64, "candidate seeds in the pool",
                      valid=("an integer in [1, 65536]", lambda v: 1 <= v <= 1 << 16)),
               Option("pool_sampling", str, "uniform", "uniform, or importance (FedKSeed's probability-differentiated)",
                      choices=SAMPLINGS, keyword="sampling"),
               Option("pool_local_steps", int, 1, "ZO-SGD steps per client per round", valid=POSITIVE_INT,
                      keyword="local_steps"),
               Option("client_weights", str, "equal", "weigh clients equally, or by data size (FedKSeed's option)",
                      choices=CLIENT_WEIGHTS, keyword=None),
               BYZANTINE_SCALE)

    @classmethod
    def label(cls, values):  # the pool's options stay out of a table's strategy column
        return cls.name

    @classmethod
    def check_run(cls, config):
        if config.steps_per_round > 1 and config.pool_sampling == "importance":
            raise field_error("steps_per_round", "must be 1 with pool_sampling 'importance' (its probabilities change "
                              "with each step's broadcast, so a round's later seeds are not known at its start)",
                              config.steps_per_round)

    @classmethod
    def build(cls, *, lr, run_seed, values, data_sizes=None):
        weighted = values["client_weights"] == "data-size"
        if weighted and data_sizes is None:
            raise ValueError("config field 'client_weights' = 'data-size' needs the clients' data sizes "
                             "(make_strategy(data_sizes=...))")
        return cls(lr=lr, run_seed=run_seed, data_sizes=data_sizes if weighted else None, **cls.keywords(values))

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

    def snapshot(self) -> PoolState:
        return self.checkpoint

    def history_floor(self) -> int:
        return self.checkpoint.step

    def restore(self, state) -> list[tuple]:
        """Adopt a PoolState; the op rebuilds the replica at that point."""
        if not isinstance(state, PoolState):
            raise ValueError(f"FedKSeed catches up from a PoolState, got {type(state).__name__}")
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
