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
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .client import Replica, dense_frame_bytes, flat_weights, from_dense, load_flat, to_dense
from .configs import ZOWarmUpConfig
from .data import dirichlet_split, iid_split
from .seeds import step_seed, unit
from .wire import MAX_FRAME_BYTES, ByteCounter, Scalars, StepUpdates, decode

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


class ZOWarmUp:
    """Runs ZOWarmUp (or its High-Res-Only baseline) on a task, one round per `step()`; the simulator keeps
    one model, as every client holds the same global weights at the start of a round."""

    name = "zowarmup"
    no_orbit = ("a ZOWarmUp run has no orbit: its warm-up rounds average dense first-order weights, which are not "
                "a sum of seeded updates")

    def __init__(self, task, cfg: ZOWarmUpConfig):
        cfg.validate()
        self.task, self.cfg = task, cfg
        self.params = [p for p in task.model.parameters() if p.requires_grad]
        self.parts = (iid_split(task.labels, cfg.clients, seed=cfg.seed) if cfg.dirichlet is None else
                      dirichlet_split(task.labels, cfg.clients, cfg.dirichlet, seed=cfg.seed, min_size=1))
        self.high = high_tier(cfg)
        self.counter = ByteCounter()
        self.max_bytes = max(MAX_FRAME_BYTES, dense_frame_bytes(self.params))  # what a party accepts (dense weights)
        self.adam: list[torch.Tensor] | None = None  # FedAdam's (m, v), flat
        self.replica: Replica | None = None  # made at the pivot: the ZO rounds' seeded perturbations
        self.round = 0

    @property
    def rounds(self) -> int:
        return self.cfg.rounds

    def phase(self, t: int) -> str:
        return "fo" if self.cfg.high_res_only or t < self.cfg.warmup_rounds else "zo"

    def step(self) -> dict:
        t = self.round
        if self.phase(t) == "fo":
            loss, picked = self._fo_round(t)
        else:
            loss, picked = self._zo_round(t)
        self.round += 1
        return dict(step=self.round, loss=loss, answered=len(picked), phase=self.phase(t))

    def _exchange(self, client: int, direction: str, msg):
        """msg as it arrives at the other end: encoded, counted, decoded."""
        return decode(self.counter.send(client, direction, msg), max_bytes=self.max_bytes)

    def _server_step(self, w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The server optimizer on a pseudo-gradient `delta` (the change the clients propose)."""
        if self.cfg.server_opt == "fedavg":
            return w + self.cfg.server_lr * delta
        if self.adam is None:
            self.adam = [torch.zeros_like(w), torch.zeros_like(w)]
        m, v = self.adam
        m.mul_(ADAM["beta1"]).add_(delta, alpha=1 - ADAM["beta1"])
        v.mul_(ADAM["beta2"]).addcmul_(delta, delta, value=1 - ADAM["beta2"])
        return w + self.cfg.server_lr * m / (v.sqrt() + ADAM["eps"])

    def _fo_round(self, t: int) -> tuple[float, list[int]]:
        cfg = self.cfg
        picked = sample(cfg, t, self.high)
        w = flat_weights(self.params).clone()
        uploads, sizes, losses = [], [], []
        for c in picked:
            start = self._exchange(c, "down", to_dense(t, w))
            load_flat(self.params, from_dense(start))
            losses.append(self._local_sgd(t, c))
            if not math.isfinite(losses[-1]):
                load_flat(self.params, w)
                raise FloatingPointError(f"non-finite loss for client {c} in round {t}; the weights were left "
                                         "as the round began (lower fo_lr)")
            uploads.append(from_dense(self._exchange(c, "up", to_dense(t, flat_weights(self.params)))))
            sizes.append(len(self.parts[c]))
        avg = sum(s / sum(sizes) * u.double() for s, u in zip(sizes, uploads)).float()
        load_flat(self.params, self._server_step(w, avg - w))
        return sum(losses) / len(losses), picked

    def _local_sgd(self, t: int, c: int) -> float:
        cfg, task, model = self.cfg, self.task, self.task.model
        rows, losses = self.parts[c], []
        for e in range(cfg.local_epochs):
            order = np.random.default_rng([cfg.seed, t, c, e]).permutation(len(rows))
            for i in range(0, len(rows), cfg.fo_batch):
                loss = task.losses(model, task.batch([rows[j] for j in order[i:i + cfg.fo_batch]])).mean()
                grads = torch.autograd.grad(loss, self.params)
                with torch.no_grad():
                    for p, g in zip(self.params, grads):
                        p.sub_(cfg.fo_lr * g)
                losses.append(float(loss.detach()))
        return sum(losses) / len(losses)

    @torch.no_grad()
    def _zo_round(self, t: int) -> tuple[float, list[int]]:
        cfg, task = self.cfg, self.task
        if self.replica is None:
            self.replica = Replica(task.model, eps=cfg.eps * cfg.tau, dist="rademacher")  # w +- eps * (tau r)
        if t == cfg.warmup_rounds:  # the pivot: every client receives the warmed-up weights once
            pivot = to_dense(t, flat_weights(self.params))
            for c in range(cfg.clients):
                self._exchange(c, "down", pivot)
        picked = sample(cfg, t, list(range(cfg.clients)))
        n = sum(len(self.parts[c]) for c in picked)
        pairs, losses = [], []
        for c in picked:
            batch = task.batch(self.parts[c])
            seeds = [step_seed(cfg.seed, t, c, s) for s in range(cfg.perturbations)]
            diffs = []
            for seed in seeds:
                plus, minus = self.replica.evaluate_pair(seed, lambda: task.losses(task.model, batch).mean())
                if not (math.isfinite(float(plus)) and math.isfinite(float(minus))):
                    raise FloatingPointError(f"non-finite loss for client {c} in round {t}; weights unchanged")
                diffs.append(float(plus) - float(minus))
                losses.append((float(plus) + float(minus)) / 2)
            up = self._exchange(c, "up", Scalars(t, tuple(diffs)))
            share = 1.0 if cfg.zo_update == "sum" else len(self.parts[c]) / n / cfg.perturbations
            pairs += [(s, share * cfg.tau * d / (2 * cfg.eps)) for s, d in zip(seeds, up.values)]
        down = StepUpdates(t, (tuple(pairs),))
        for c in range(cfg.clients):  # every client, sampled or not, applies the gathered list
            received = self._exchange(c, "down", down)
        self._zo_update(received.steps[0])
        return sum(losses) / len(losses), picked

    def _zo_update(self, pairs) -> None:
        seeds = tuple(s for s, _ in pairs)
        if self.cfg.server_opt == "fedavg":
            k = -self.cfg.server_lr * self.cfg.zo_lr
            self.replica.apply([("update", seeds, tuple(k * g for _, g in pairs))])
            return
        w = flat_weights(self.params).clone()
        if self.round == self.cfg.warmup_rounds:
            self.adam = None
        self.replica.apply([("update", seeds, tuple(-self.cfg.zo_lr * g for _, g in pairs))])
        delta = flat_weights(self.params) - w
        load_flat(self.params, self._server_step(w, delta))

    def state_dict(self) -> dict:
        return dict(round=self.round, weights=flat_weights(self.params).clone(), adam=self.adam,
                    counter=self.counter.state_dict())

    def load_state_dict(self, state: dict) -> None:
        load_flat(self.params, state["weights"])
        self.adam = state["adam"]
        self.counter.load_state_dict(state["counter"])
        self.round = state["round"]

    def orbit_history(self) -> None:
        return None

    def close(self) -> None:
        if self.replica is not None:
            self.replica.close()
