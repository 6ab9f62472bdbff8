"""ZOWarmUp (zowarmup.txt section 3, Algorithm 1): first-order warm-up by the high-resource clients, then
zeroth-order rounds by everyone.

Clients are split into tiers by `high_fraction` (a hash of (seed, client) ranks them). Rounds
0..N-1: the sampled high-resource clients train `local_epochs` of SGD from the global weights and
upload them (dense float32); the server averages them by data size and applies the average as a
pseudo-gradient with FedAvg (w += server_lr * (avg - w)) or FedAdam. At the pivot every client receives
the warmed-up weights once. Rounds N..N+M-1: each sampled client (high or low) takes ONE step's worth of
probes on its whole local data: S seeds from the schedule (step_seed(run, round, client, s): the
server's seeds, never sent), z = tau * Rademacher, uploads the S differences L(w + eps z) - L(w - eps z)
(32 bits each); the server broadcasts the gathered list as (seed, coefficient) pairs whose sum is the
gradient estimate g. zo_update = "sum" (default) is Algorithm 1's line 31, g = sum over the |Q| * S
probes of tau * dL / (2 eps) * r (coefficient tau * dL / (2 eps)); "data-mean" weighs each probe by
p_j / S (p_j: its client's share of the sampled data), a mean about |Q| * S times smaller. Every client
applies g with the server optimizer: FedAvg w -= server_lr * zo_lr * g, or FedAdam on the pseudo-gradient
-zo_lr * g (its moments restart at the pivot: the low-resource clients never saw the warm-up's).

`high_res_only=True` is the paper's High-Res-Only baseline: the low-resource clients are left out and
every round is a first-order round of the high-resource tier.

Everything random is hashed from (seed, round, client), so a run resumed from `state_dict` continues
bit-identically. A run has no orbit: the warm-up's dense averages are not a sum of seeds.

As a round strategy (zofed.rounds drives it through a transport): a warm-up round sends each sampled client the
global weights (Dense) with its Ask, and the server keeps the new weights (the clients receive them when next
sampled, or at the pivot); a ZO round's Ask goes to the sampled clients, its broadcast to every client, whose
state applies it with the server optimizer (FedAdam's moments live on each replica in the ZO phase). The ZO
rounds' server side is seed/scalar arithmetic; the warm-up's holds the dense weights and steps them with torch
(the pinned bits are torch's FedAdam arithmetic, which a numpy rewrite would not reproduce). This module
registers ZOWarmUp with `import zofed.strategies`, which loads no torch: the functions that touch tensors import
torch and zofed.client's tensor helpers when called.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from zokernels import spec

from ..data import dirichlet_split, iid_split
from ..seeds import step_seed, unit
from ..wire import MAX_FRAME_BYTES, Ask, Dense, Scalars, StepUpdates
from .base import CheckedConfig, Round, RoundAlgorithm, expect_upload, register_round

SERVER_OPTS = ("fedavg", "fedadam")
ZO_UPDATES = ("sum", "data-mean")  # the ZO update: Algorithm 1's sum, or a data-weighted mean


@dataclass
class ZOWarmUpConfig(CheckedConfig):
    """ZOWarmUp: `warmup_rounds` first-order rounds, then `zo_rounds` zeroth-order ones."""

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
    # noise spec version of z (docs/noise.md): 2 is a cheaper stream (Philox-7, 32 Rademacher signs per word, a
    # polynomial Gaussian), not bit-compatible with 1
    spec_version: int = 1
    seed: int = 0  # the run seed
    eval_every: int = 10  # rounds between held-out evaluations

    @property
    def rounds(self) -> int:
        return self.warmup_rounds + self.zo_rounds

    def validate(self) -> None:
        self._check(positive_ints=("clients", "local_epochs", "fo_batch", "perturbations", "eval_every"),
                    positive=("fo_lr", "server_lr", "zo_lr", "eps", "dirichlet"),
                    unit=("high_fraction", "participation", "tau"),
                    choices=dict(server_opt=SERVER_OPTS, zo_update=ZO_UPDATES, spec_version=spec.SPEC_VERSIONS))
        for name in ("warmup_rounds", "zo_rounds"):
            if getattr(self, name) < 0:
                self._bad(name, "must be an integer >= 0")
        if self.rounds < 1:
            self._bad("zo_rounds", "leaves no rounds at all (warmup_rounds + zo_rounds must be >= 1)")


ADAM = dict(beta1=0.9, beta2=0.999, eps=1e-3)  # FedAdam's moments and adaptivity (Reddi et al.'s tau)
_TIER, _SAMPLE = 0x71E2, 0x5A3


def high_tier(cfg: ZOWarmUpConfig) -> list[int]:
    """The high-resource clients: the round(high_fraction * clients) (at least one) ranked first by a hash."""
    n = max(1, round(cfg.high_fraction * cfg.clients))
    return sorted(sorted(range(cfg.clients), key=lambda c: unit(cfg.seed, _TIER, c))[:n])


def sample(cfg: ZOWarmUpConfig, t: int, eligible: list[int]) -> list[int]:
    """The clients of round t: each eligible one with probability `participation`, at least one."""
    draws = {c: unit(cfg.seed, _SAMPLE, t, c) for c in eligible}
    picked = [c for c in eligible if draws[c] < cfg.participation]
    return picked or [min(eligible, key=draws.get)]


def server_step(cfg: ZOWarmUpConfig, moments: list | None, w, delta):
    """The server optimizer on a pseudo-gradient `delta` (the change the clients propose; w, delta: flat tensors):
    the new weights, and FedAdam's (m, v) (made on first use, updated in place)."""
    import torch

    if cfg.server_opt == "fedavg":
        return w + cfg.server_lr * delta, moments
    if moments is None:
        moments = [torch.zeros_like(w), torch.zeros_like(w)]
    m, v = moments
    m.mul_(ADAM["beta1"]).add_(delta, alpha=1 - ADAM["beta1"])
    v.mul_(ADAM["beta2"]).addcmul_(delta, delta, value=1 - ADAM["beta2"])
    return w + cfg.server_lr * m / (v.sqrt() + ADAM["eps"]), moments


class State:
    """A client's (or the global model's) side: the trainable parameters, the Replica of the ZO rounds' seeded
    perturbations (made at the first ZO round, so the warm-up runs plain autograd), FedAdam's moments of the ZO
    phase, and `round`: the round whose starting weights it holds."""

    def __init__(self, model, cfg: ZOWarmUpConfig):
        self.model, self.cfg = model, cfg
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.replica = None  # a zofed.client.Replica
        self.adam: list | None = None
        self.round = 0

    def zo(self):
        from ..client import Replica

        if self.replica is None:
            self.replica = Replica(self.model, eps=self.cfg.eps * self.cfg.tau, dist="rademacher",
                                   spec_version=self.cfg.spec_version)  # w +- eps tau r
        return self.replica

    def close(self) -> None:
        if self.replica is not None:
            self.replica.close()


class ZOWarmUp:
    """ZOWarmUp (or its High-Res-Only baseline) as a round strategy; see the module docstring."""

    name = "zowarmup"
    dist = "rademacher"
    no_orbit = ("a ZOWarmUp run has no orbit: its warm-up rounds average dense first-order weights, which are not "
                "a sum of seeded updates")

    def __init__(self, task, cfg: ZOWarmUpConfig):
        from ..client import flat_weights

        cfg.validate()
        self.task, self.cfg = task, cfg
        self.parts = (iid_split(task.labels, cfg.clients, seed=cfg.seed) if cfg.dirichlet is None else
                      dirichlet_split(task.labels, cfg.clients, cfg.dirichlet, seed=cfg.seed, min_size=1))
        self.high = high_tier(cfg)
        self.w = flat_weights(p for p in task.model.parameters() if p.requires_grad)  # the server's, in the warm-up
        self.max_bytes = max(MAX_FRAME_BYTES, Dense.frame_bytes(self.w.numel()))  # what a party accepts
        self.adam: list | None = None  # the server's FedAdam (m, v) of the warm-up, flat
        self.round = 0
        self._picked: list[int] = []
        self._loss = 0.0

    @property
    def rounds(self) -> int:
        return self.cfg.rounds

    def phase(self, t: int) -> str:
        return "fo" if self.cfg.high_res_only or t < self.cfg.warmup_rounds else "zo"

    # the server side

    def requests(self, t: int) -> dict[int, list]:
        from ..client import to_dense

        cfg = self.cfg
        if self.phase(t) == "fo":
            self._picked = sample(cfg, t, self.high)
            start = to_dense(t, self.w)
            return {c: [start, Ask(t, 1)] for c in self._picked}
        self._picked = sample(cfg, t, list(range(cfg.clients)))
        asks = {c: [Ask(t, 1)] for c in self._picked}
        if t == cfg.warmup_rounds:  # the pivot: every client receives the warmed-up weights once
            pivot = to_dense(t, self.w)
            return {c: [pivot] + asks.get(c, []) for c in range(cfg.clients)}
        return asks

    def aggregate(self, t: int, uploads: dict) -> Round:
        from ..client import from_dense, to_dense

        cfg = self.cfg
        missing = sorted(set(self._picked) - set(uploads))
        if missing:
            raise RuntimeError(f"ZOWarmUp round {t}: sampled clients {missing} did not answer")
        losses = [x for c in self._picked for x in uploads[c][1]]
        self._loss = sum(losses) / len(losses)
        if self.phase(t) == "fo":
            sizes = [len(self.parts[c]) for c in self._picked]
            flats = [from_dense(expect_upload(uploads[c][0], Dense, t, c)) for c in self._picked]
            avg = sum(s / sum(sizes) * u.double() for s, u in zip(sizes, flats)).float()
            self.w, self.adam = server_step(cfg, self.adam, self.w, avg - self.w)
            return Round(None, [], to_dense(t + 1, self.w))
        n = sum(len(self.parts[c]) for c in self._picked)
        pairs = []
        for c in self._picked:
            up = expect_upload(uploads[c][0], Scalars, t, c)
            if len(up.values) != cfg.perturbations:
                raise ValueError(f"client {c}: {len(up.values)} differences, round {t} asked {cfg.perturbations}")
            share = 1.0 if cfg.zo_update == "sum" else len(self.parts[c]) / n / cfg.perturbations
            pairs += [(step_seed(cfg.seed, t, c, s), share * cfg.tau * d / (2 * cfg.eps))
                      for s, d in enumerate(up.values)]
        down = StepUpdates(t, (tuple(pairs),))
        return Round(down, list(range(cfg.clients)), down)  # every client, sampled or not, applies it

    def conclude(self, t: int, change) -> dict:
        self.round += 1
        return dict(step=self.round, loss=self._loss, answered=len(self._picked), phase=self.phase(t))

    def orbit_history(self) -> None:
        return None

    # the client side

    def make_state(self, model) -> State:
        return State(model, self.cfg)

    def client_update(self, state: State, c: int, t: int, params: tuple) -> tuple:
        if state.round != t:
            raise ValueError(f"client {c} holds the weights of round {state.round}, asked to answer round {t}")
        return self._local_sgd(state, t, c) if self.phase(t) == "fo" else self._probes(state, t, c)

    def _local_sgd(self, state: State, t: int, c: int) -> tuple:
        """`local_epochs` of SGD from the round's weights: the trained weights (Dense) and the mean loss. The state
        is left as the round began (the round's result arrives later)."""
        import torch

        from ..client import flat_weights, load_flat, to_dense

        cfg, task = self.cfg, self.task
        w = flat_weights(state.params).clone()
        rows, losses = self.parts[c], []
        try:
            for e in range(cfg.local_epochs):
                order = np.random.default_rng([cfg.seed, t, c, e]).permutation(len(rows))
                for i in range(0, len(rows), cfg.fo_batch):
                    loss = task.losses(state.model, task.batch([rows[j] for j in order[i:i + cfg.fo_batch]])).mean()
                    grads = torch.autograd.grad(loss, state.params)
                    with torch.no_grad():
                        for p, g in zip(state.params, grads):
                            p.sub_(cfg.fo_lr * g)
                    losses.append(float(loss.detach()))
            mean = sum(losses) / len(losses)
            if not math.isfinite(mean):
                raise FloatingPointError(f"non-finite loss for client {c} in round {t}; the weights were left as "
                                         "the round began (lower fo_lr)")
            return to_dense(t, flat_weights(state.params)), (mean,)
        finally:
            load_flat(state.params, w)

    def _probes(self, state: State, t: int, c: int) -> tuple:
        """S probes on the client's whole data: the differences L(w + eps z) - L(w - eps z), and their losses."""
        import torch

        task, diffs, losses = self.task, [], []
        with torch.no_grad():
            rep, batch = state.zo(), task.batch(self.parts[c])
            for s in range(self.cfg.perturbations):
                plus, minus = rep.evaluate_pair(step_seed(self.cfg.seed, t, c, s),
                                                lambda: task.losses(state.model, batch).mean())
                if not (math.isfinite(float(plus)) and math.isfinite(float(minus))):
                    raise FloatingPointError(f"non-finite loss for client {c} in round {t}; weights unchanged")
                diffs.append(float(plus) - float(minus))
                losses.append((float(plus) + float(minus)) / 2)
        return Scalars(t, tuple(diffs)), losses

    def apply(self, state: State, msg) -> None:
        """Global weights (Dense: the weights at the start of round msg.step), or a ZO round's broadcast, applied
        once per state with the server optimizer."""
        from ..client import from_dense, load_flat

        if isinstance(msg, Dense):
            load_flat(state.params, from_dense(msg))
            state.round = msg.step
            return
        t = msg.first_step
        if state.round > t:
            return
        if state.round < t:
            raise ValueError(f"the broadcast of round {t} arrived at a client holding round {state.round}")
        self.zo_update(state, t, msg.steps[0])
        state.round = t + 1

    def zo_update(self, state: State, t: int, pairs) -> None:
        """w -= server_lr * zo_lr * g (FedAvg), or FedAdam on the pseudo-gradient -zo_lr * g, its moments restarted
        at the pivot (the low-resource clients never saw the warm-up's)."""
        import torch

        from ..client import flat_weights, load_flat

        cfg, seeds = self.cfg, tuple(s for s, _ in pairs)
        with torch.no_grad():
            rep = state.zo()
            if cfg.server_opt == "fedavg":
                k = -cfg.server_lr * cfg.zo_lr
                rep.apply([("update", seeds, tuple(k * g for _, g in pairs))])
                return
            w = flat_weights(state.params).clone()
            if t == cfg.warmup_rounds:
                state.adam = None
            rep.apply([("update", seeds, tuple(-cfg.zo_lr * g for _, g in pairs))])
            new, state.adam = server_step(cfg, state.adam, w, flat_weights(state.params) - w)
            load_flat(state.params, new)

    # checkpoints: the global model's state and the server's (FedAdam's moments: the server's up to the pivot,
    # the replicas' after it)

    def state_dict(self, state: State) -> dict:
        from ..client import flat_weights

        server_moments = self.cfg.high_res_only or self.round <= self.cfg.warmup_rounds
        return dict(round=self.round, weights=flat_weights(state.params).clone(),
                    adam=self.adam if server_moments else state.adam)

    def load_state_dict(self, state: State, saved: dict) -> None:
        from ..client import load_flat

        load_flat(state.params, saved["weights"])
        self.round = state.round = saved["round"]
        self.w = saved["weights"].clone()
        if self.cfg.high_res_only or self.round <= self.cfg.warmup_rounds:
            self.adam = saved["adam"]
        else:
            state.adam = saved["adam"]


register_round(RoundAlgorithm("zowarmup", ZOWarmUpConfig, ZOWarmUp, task="digits"))
