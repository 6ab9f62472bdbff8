"""FedMeZO (fedmezo.txt 2.2, 3.3, 5.4): FedAvg over H local MeZO steps per round, in two exchange encodings.

Round r, from the global trainable weights S:
  each sampled client i runs H ZO-SGD steps from S with its learning rate eta_i and the seeds
  step_seed(run, r*H + h, i), then
  - "dense":  uploads its weights (float32, 32 bits each); the server averages them, sum_i p_i w_i, and
               broadcasts the average.
  - "seeds":  uploads its H (seed, projection) pairs; the server broadcasts every client's pairs with
               coefficients -p_i eta_i g_ih; each client restores S and applies them with the multi-seed
               update. Exact for plain ZO-SGD: w_i = S - eta_i sum_h g_ih z_ih, so
               sum_i p_i w_i = S - sum_i sum_h p_i eta_i g_ih z_ih. Bytes instead of megabytes, and every
               replica ends bit-identical (same S, same broadcast).
The client weights p_i: client_weights = "equal" (default) is the paper's p_i = 1/N (eq. 1's objective,
the aggregation of section 2.2 "according to Eq. (1)", and the analysis' eq. 28); "data-size" is FedAvg's
p_i = n_i / n (n_i the client's examples). The round's reported loss is weighted the same way.
The two encodings round differently: dense rounds after each local step and in the average, seeds
after each of the n*H broadcast terms. From the same S, with the same projections, they differ by at
most (n + 1) * H + 2 float32 roundings of the largest weight magnitude reached, per element (tested).
Over several rounds the projections themselves then drift apart, as any two fp32 runs do.

Personalized learning rates (Prop. 3.7): eta_i = eta_0 (1 + alpha * Phi_i), Phi_i in (-1, 1) from one of
three signals of the previous round(s) (section 5.4): "round-loss" (client's train loss minus the
mean), "five-round-loss" (that, averaged over the last five rounds), "update" (the norm of the client's
update minus the norm of the global update). Phi = tanh(x / mean|x|) over the clients.
"""

from __future__ import annotations

import base64
import math

import numpy as np
import torch

from .client import Replica, dense_frame_bytes, flat_weights, from_dense, load_flat, to_dense
from .configs import FedMeZOConfig
from .data import dirichlet_split, iid_split
from .seeds import step_seed
from .strategies import Broadcasts
from .wire import MAX_FRAME_BYTES, ByteCounter, Dense, SeedScalars, StepUpdates, decode, encode


def heterogeneity(signal: list[float]) -> list[float]:
    """Phi in (-1, 1): tanh of each client's signal over the clients' mean magnitude."""
    scale = sum(abs(x) for x in signal) / len(signal)
    return [math.tanh(x / scale) if scale > 0 else 0.0 for x in signal]


class FedMeZO:
    """Runs FedMeZO on a task, one round per `step()` (zofed.rounds.run drives it with outputs and resumption).
    `replicas`: one Replica per client (separate models, to show they agree), or one shared by all (what a
    simulator needs: the clients' trajectories run one after another)."""

    name = "fedmezo"
    dist = "gaussian"

    def __init__(self, task, cfg: FedMeZOConfig, replicas: list[Replica] | None = None):
        cfg.validate()
        self.task, self.cfg = task, cfg
        self.replicas = replicas or [Replica(task.model, eps=cfg.eps)]
        if len(self.replicas) not in (1, cfg.clients):
            raise ValueError(f"give one replica, or one per client ({cfg.clients}), not {len(self.replicas)}")
        labels = task.labels
        self.parts = (iid_split(labels, cfg.clients, seed=cfg.seed) if cfg.dirichlet is None else
                      dirichlet_split(labels, cfg.clients, cfg.dirichlet, seed=cfg.seed))
        total = sum(len(p) for p in self.parts)
        self.weights = ([1 / cfg.clients] * cfg.clients if cfg.client_weights == "equal" else
                        [len(p) / total for p in self.parts])  # p_i
        self.counter = ByteCounter()
        self.max_bytes = max(MAX_FRAME_BYTES, dense_frame_bytes(self.replicas[0].params))  # what a party accepts
        self.phi = [0.0] * cfg.clients
        self.loss_gaps: list[list[float]] = []
        self.lrs: list[list[float]] = []
        self.downs: list[StepUpdates] = []  # the seed-replay broadcasts: the orbit
        self.round = 0
        self.no_orbit = None if cfg.encoding == "seeds" else (
            "a dense FedMeZO run has no orbit: the average of the clients' weights is not a sum of seeded updates "
            "(use encoding = \"seeds\" for a bit-exact orbit)")

    def replica(self, client: int) -> Replica:
        return self.replicas[client if len(self.replicas) > 1 else 0]

    def _local(self, client: int, lr: float) -> tuple[list[tuple[int, float]], float]:
        """H MeZO steps from the replica's current weights: the (seed, projection) pairs and the mean loss."""
        cfg, rep, task = self.cfg, self.replica(client), self.task
        pairs, losses = [], []
        for h in range(cfg.local_steps):
            seed = step_seed(cfg.seed, self.round * cfg.local_steps + h, client)
            rows = np.random.default_rng([cfg.seed, self.round, h, client]).integers(0, len(self.parts[client]),
                                                                                     cfg.batch)
            batch = task.batch([self.parts[client][i] for i in rows])
            plus, minus = rep.evaluate_pair(seed, lambda: task.losses(rep.model, batch).mean())
            g = (float(plus) - float(minus)) / (2 * cfg.eps)
            if not math.isfinite(g):
                raise FloatingPointError(f"non-finite loss for client {client} in round {self.round}")
            rep.apply([("update", (seed,), (-lr * g,))])
            pairs.append((seed, g))
            losses.append((float(plus) + float(minus)) / 2)
        return pairs, sum(losses) / len(losses)

    @torch.no_grad()
    def step(self) -> dict:
        """One round; returns its record (learning rates, losses, bytes so far)."""
        cfg = self.cfg
        lrs = [cfg.lr * (1 + cfg.alpha * phi) for phi in self.phi]
        start = [[p.detach().clone() for p in r.params] for r in self.replicas]
        uploads, losses, norms = {}, [], []
        for i in range(cfg.clients):
            rep = self.replica(i)
            pairs, loss = self._local(i, lrs[i])
            losses.append(loss)
            own = start[i if len(self.replicas) > 1 else 0]
            norms.append(math.sqrt(sum(float((p.float() - s.float()).pow(2).sum()) for p, s in zip(rep.params, own))))
            if cfg.encoding == "dense":
                frame = self.counter.send(i, "up", to_dense(self.round, flat_weights(rep.params)))
                uploads[i] = decode(frame, max_bytes=self.max_bytes)
            else:
                seeds, values = zip(*pairs)
                uploads[i] = decode(self.counter.send(i, "up", SeedScalars(self.round * cfg.local_steps, seeds,
                                                                           values)))
            for p, s in zip(rep.params, own):  # back to S for the next client / the broadcast
                p.copy_(s)
        # the server: average dense weights, or broadcast every pair with its client's weight
        if cfg.encoding == "dense":
            flats = [from_dense(uploads[i]) for i in range(cfg.clients)]
            avg = sum(w * f.double() for w, f in zip(self.weights, flats)).float()
            down = to_dense(self.round, avg)
        else:
            down = StepUpdates(self.round, (tuple((s, -self.weights[i] * lrs[i] * g)
                                                  for i in range(cfg.clients)
                                                  for s, g in zip(uploads[i].seeds, uploads[i].values)),))
        frame = encode(down)
        for i in range(cfg.clients):
            self.counter.count(i, "down", frame, down)
            if len(self.replicas) > 1 or i == 0:  # a shared replica takes the broadcast once
                self._apply(self.replica(i), decode(frame, max_bytes=self.max_bytes))
        if cfg.encoding == "seeds":
            self.downs.append(down)
        global_norm = math.sqrt(sum(float((p.float() - s.float()).pow(2).sum())
                                    for p, s in zip(self.replicas[0].params, start[0])))
        self._personalize(losses, norms, global_norm)
        self.lrs.append(lrs)
        self.round += 1
        return dict(step=self.round, loss=sum(w * x for w, x in zip(self.weights, losses)), lrs=lrs)

    def _apply(self, rep: Replica, down) -> None:
        if isinstance(down, Dense):
            load_flat(rep.params, from_dense(down))
        else:
            rep.apply(Broadcasts().ops(down.first_step, down))

    def _personalize(self, losses, norms, global_norm) -> None:
        mean = sum(w * x for w, x in zip(self.weights, losses))
        self.loss_gaps.append([x - mean for x in losses])
        if self.cfg.signal == "round-loss":
            signal = self.loss_gaps[-1]
        elif self.cfg.signal == "five-round-loss":
            recent = self.loss_gaps[-5:]
            signal = [sum(r[i] for r in recent) / len(recent) for i in range(self.cfg.clients)]
        else:
            signal = [n - global_norm for n in norms]
        self.phi = heterogeneity(signal)

    def orbit_history(self) -> StepUpdates | None:
        return Broadcasts().history(0, self.downs) if self.no_orbit is None else None

    def state_dict(self) -> dict:
        if len(self.replicas) > 1:
            raise RuntimeError("state_dict covers the shared-replica simulator; save each client's replica instead")
        return dict(round=self.round, weights=[p.detach().clone() for p in self.replicas[0].params], phi=self.phi,
                    loss_gaps=self.loss_gaps, lrs=self.lrs, counter=self.counter.state_dict(),
                    downs=base64.b64encode(encode(self.orbit_history())).decode() if self.downs else "")

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for p, w in zip(self.replicas[0].params, state["weights"]):
            p.copy_(w)
        self.round, self.phi, self.loss_gaps, self.lrs = state["round"], state["phi"], state["loss_gaps"], state["lrs"]
        self.counter.load_state_dict(state["counter"])
        self.downs = Broadcasts().steps_of(decode(base64.b64decode(state["downs"]))) if state["downs"] else []

    def close(self) -> None:
        for r in self.replicas:
            r.close()
