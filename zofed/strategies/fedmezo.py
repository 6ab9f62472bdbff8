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
from dataclasses import dataclass

import numpy as np
from zokernels import spec

from ..data import dirichlet_split, iid_split
from ..seeds import step_seed
from ..wire import MAX_FRAME_BYTES, Ask, Dense, Report, SeedScalars, StepUpdates, decode, encode
from .base import CheckedConfig, Round, RoundAlgorithm, Strategy, _join_steps, _one, _split_steps, expect_upload, \
    register_round
from .fedkseed import CLIENT_WEIGHTS

SIGNALS = ("round-loss", "five-round-loss", "update")  # the heterogeneity signals (fedmezo.txt 5.4)


@dataclass
class FedMeZOConfig(CheckedConfig):
    """FedMeZO: `rounds` rounds of H = `local_steps` MeZO steps per client."""

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
    # noise spec version of z (docs/noise.md): 2 is a cheaper stream (Philox-7, 32 Rademacher signs per word, a
    # polynomial Gaussian), not bit-compatible with 1
    spec_version: int = 1
    seed: int = 0  # the run seed
    eval_every: int = 1  # rounds between held-out evaluations

    def validate(self) -> None:
        self._check(positive_ints=("clients", "rounds", "local_steps", "batch", "eval_every"),
                    positive=("lr", "eps", "dirichlet"),
                    choices=dict(encoding=("seeds", "dense"), signal=SIGNALS, client_weights=CLIENT_WEIGHTS,
                                 spec_version=spec.SPEC_VERSIONS))
        if not 0 <= self.alpha < 1:
            self._bad("alpha", "must be in [0, 1) so every eta_i stays positive")


class Broadcasts(Strategy):
    """FedMeZO's seed-replay broadcasts as a step strategy whose values are the final update coefficients, applied
    as they are (FedMeZO.aggregate computes them). Only replayed (orbits, the FedMeZO replicas), never run by the
    step simulator, so it is not in STRATEGIES."""

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


def heterogeneity(signal: list[float]) -> list[float]:
    """Phi in (-1, 1): tanh of each client's signal over the clients' mean magnitude."""
    scale = sum(abs(x) for x in signal) / len(signal)
    return [math.tanh(x / scale) if scale > 0 else 0.0 for x in signal]


class FedMeZO:
    """FedMeZO as a round strategy (zofed.rounds drives it through a transport). Every client answers every round;
    its request carries its learning rate eta_i (control, as before: the paper's server bookkeeping), its reply's
    report its mean loss and the norm of its local update. The server side (requests, aggregate, conclude) is
    torch-free: seed/scalar arithmetic, or numpy for the dense average; the client side (client_update, apply)
    runs on a state, a zofed.client.Replica whose `step` is the round whose starting weights it holds.
    task: the run's task (the clients' data); data_sizes give the client weights without it (a server alone)."""

    name = "fedmezo"
    dist = "gaussian"

    def __init__(self, task, cfg: FedMeZOConfig, data_sizes: list[int] | None = None):
        cfg.validate()
        self.task, self.cfg = task, cfg
        self.parts = None if task is None else (
            iid_split(task.labels, cfg.clients, seed=cfg.seed) if cfg.dirichlet is None else
            dirichlet_split(task.labels, cfg.clients, cfg.dirichlet, seed=cfg.seed))
        sizes = data_sizes or [len(p) for p in self.parts]
        self.weights = ([1 / cfg.clients] * cfg.clients if cfg.client_weights == "equal" else
                        [n / sum(sizes) for n in sizes])  # p_i
        # what a party accepts: dense weights are bigger than the wire's default limit for a model over ~4M weights
        self.max_bytes = MAX_FRAME_BYTES if task is None else max(MAX_FRAME_BYTES, Dense.frame_bytes(
            sum(p.numel() for p in task.model.parameters() if p.requires_grad)))
        self.phi = [0.0] * cfg.clients
        self.loss_gaps: list[list[float]] = []
        self.lrs: list[list[float]] = []
        self.downs: list[StepUpdates] = []  # the seed-replay broadcasts: the orbit
        self.round = 0
        self._uploads: dict = {}
        self.no_orbit = None if cfg.encoding == "seeds" else (
            "a dense FedMeZO run has no orbit: the average of the clients' weights is not a sum of seeded updates "
            "(use encoding = \"seeds\" for a bit-exact orbit)")

    # the server side (no torch)

    def requests(self, t: int) -> dict[int, list]:
        """Every client answers, at its personalized rate eta_i = eta_0 (1 + alpha * Phi_i)."""
        lrs = [self.cfg.lr * (1 + self.cfg.alpha * phi) for phi in self.phi]
        self.lrs.append(lrs)
        return {i: [Report(t, (lrs[i],)), Ask(t, 1)] for i in range(self.cfg.clients)}

    def aggregate(self, t: int, uploads: dict) -> Round:
        """Average dense weights (sum_i p_i w_i), or broadcast every client's pairs with coefficient -p_i eta_i g."""
        cfg, lrs = self.cfg, self.lrs[-1]
        missing = sorted(set(range(cfg.clients)) - set(uploads))
        if missing:
            raise RuntimeError(f"FedMeZO round {t}: clients {missing} did not answer (every client answers a round)")
        self._uploads = uploads
        if cfg.encoding == "dense":
            flats = [np.frombuffer(expect_upload(uploads[i][0], Dense, t, i).data, dtype="<f4")
                     for i in range(cfg.clients)]
            avg = sum(w * f.astype(np.float64) for w, f in zip(self.weights, flats)).astype("<f4")
            down = Dense(t + 1, avg.tobytes())
        else:
            ups = [expect_upload(uploads[i][0], SeedScalars, t * cfg.local_steps, i) for i in range(cfg.clients)]
            for i, up in enumerate(ups):  # the seeds are the schedule's: a client cannot choose its directions
                if up.seeds != tuple(step_seed(cfg.seed, t * cfg.local_steps + h, i) for h in range(cfg.local_steps)):
                    raise ValueError(f"client {i}: its seeds are not the schedule's {cfg.local_steps} of round {t}")
            down = StepUpdates(t, (tuple((s, -self.weights[i] * lrs[i] * g)
                                         for i in range(cfg.clients) for s, g in zip(ups[i].seeds, ups[i].values)),))
            self.downs.append(down)
        return Round(down, list(range(cfg.clients)), down)

    def conclude(self, t: int, change: float) -> dict:
        """The round's row; the next rates' heterogeneity signal (`change`: the norm of the global update)."""
        losses = [self._uploads[i][1][0] for i in range(self.cfg.clients)]
        norms = [self._uploads[i][1][1] for i in range(self.cfg.clients)]
        mean = sum(w * x for w, x in zip(self.weights, losses))
        self.loss_gaps.append([x - mean for x in losses])
        if self.cfg.signal == "round-loss":
            signal = self.loss_gaps[-1]
        elif self.cfg.signal == "five-round-loss":
            recent = self.loss_gaps[-5:]
            signal = [sum(r[i] for r in recent) / len(recent) for i in range(self.cfg.clients)]
        else:
            signal = [n - change for n in norms]
        self.phi = heterogeneity(signal)
        self.round += 1
        return dict(step=self.round, loss=mean, lrs=self.lrs[-1])

    def orbit_history(self) -> StepUpdates | None:
        return Broadcasts().history(0, self.downs) if self.no_orbit is None else None

    # the client side

    def make_state(self, model):
        from ..client import Replica

        return Replica(model, eps=self.cfg.eps, spec_version=self.cfg.spec_version)

    def client_update(self, rep, client: int, t: int, params: tuple) -> tuple:
        """H MeZO steps from the round's weights at rate params[0]; the upload, and (mean loss, update norm). The
        weights are restored afterwards: the round's result arrives as the broadcast."""
        import torch

        from ..client import flat_weights, to_dense

        cfg, task = self.cfg, self.task
        if rep.step != t:
            raise ValueError(f"client {client} holds the weights of round {rep.step}, asked to answer round {t}")
        (lr,) = params
        start = [p.detach().clone() for p in rep.params]
        pairs, losses = [], []
        try:
            with torch.no_grad():
                for h in range(cfg.local_steps):
                    seed = step_seed(cfg.seed, t * cfg.local_steps + h, client)
                    rows = np.random.default_rng([cfg.seed, t, h, client]).integers(0, len(self.parts[client]),
                                                                                    cfg.batch)
                    batch = task.batch([self.parts[client][i] for i in rows])
                    plus, minus = rep.evaluate_pair(seed, lambda: task.losses(rep.model, batch).mean())
                    g = (float(plus) - float(minus)) / (2 * cfg.eps)
                    if not math.isfinite(g):
                        raise FloatingPointError(f"non-finite loss for client {client} in round {t}")
                    rep.apply([("update", (seed,), (-lr * g,))])
                    pairs.append((seed, g))
                    losses.append((float(plus) + float(minus)) / 2)
                norm = _distance(rep.params, start)
                if cfg.encoding == "dense":
                    up = to_dense(t, flat_weights(rep.params))
                else:
                    seeds, values = zip(*pairs)
                    up = SeedScalars(t * cfg.local_steps, seeds, values)
        finally:
            with torch.no_grad():
                for p, s in zip(rep.params, start):
                    p.copy_(s)
        return up, (sum(losses) / len(losses), norm)

    def apply(self, rep, down) -> float | None:
        """A round's broadcast, once per state (a shared one skips it when it comes again); the change's norm."""
        import torch

        from ..client import from_dense, load_flat

        t = down.first_step if isinstance(down, StepUpdates) else down.step - 1
        if rep.step > t:
            return None
        if rep.step < t:
            raise ValueError(f"the broadcast of round {t} arrived at a replica holding round {rep.step}")
        start = [p.detach().clone() for p in rep.params]
        with torch.no_grad():
            if isinstance(down, Dense):
                load_flat(rep.params, from_dense(down))
            else:
                rep.apply(Broadcasts().ops(t, down))
            rep.step = t + 1
            return _distance(rep.params, start)

    # checkpoints: the global model's state and the server's

    def state_dict(self, rep) -> dict:
        return dict(round=self.round, weights=[p.detach().clone() for p in rep.params], phi=self.phi,
                    loss_gaps=self.loss_gaps, lrs=self.lrs,
                    downs=base64.b64encode(encode(self.orbit_history())).decode() if self.downs else "")

    def load_state_dict(self, rep, state: dict) -> None:
        import torch

        with torch.no_grad():
            for p, w in zip(rep.params, state["weights"]):
                p.copy_(w)
        self.round, self.phi, self.loss_gaps, self.lrs = state["round"], state["phi"], state["loss_gaps"], state["lrs"]
        rep.step = self.round
        self.downs = list(Broadcasts().steps_of(decode(base64.b64decode(state["downs"])))) if state["downs"] else []


def _distance(params, start) -> float:
    """||params - start||, summed per tensor in float32 as the personalization signal always was."""
    return math.sqrt(sum(float((p.float() - s.float()).pow(2).sum()) for p, s in zip(params, start)))


register_round(RoundAlgorithm("fedmezo", FedMeZOConfig, FedMeZO, replay=Broadcasts))
