"""The client side: a model replica driven by seeds, and a client that answers rounds with it.

A replica's trainable parameters change only through broadcast seeds and scalars, applied with the
multi-seed update of zokernels, so two replicas that apply the same broadcasts are bit-identical;
`digest()` lets them prove it cheaply. Projections use the perturbation engine in shadow mode: the weights
are never written during the forwards, so evaluating a seed leaves them exactly as they were.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from zokernels import spec
from zokernels.engine import Engine

from .strategies import Strategy
from .transport import split_frames
from .wire import Ask, Checksum, Dense, PoolState, Report, decode, encode


def weights_sha256(model: nn.Module) -> str:
    """sha256 of every tensor in the state dict, in name order (name, dtype, shape and raw bytes): the
    model_sha256 of run summaries and orbits."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(_raw_bytes(t))
    return h.hexdigest()


def _raw_bytes(t: torch.Tensor) -> bytes:
    """A tensor's elements as stored, row-major (any dtype, bfloat16 included)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


class Replica:
    """The trainable parameters of `model` (requires_grad=True), driven by seeds through the perturbation engine
    (zokernels.engine, shadow mode: the weights are never written during the forwards).

    keep_base: keep a copy of the starting trainable weights, for strategies that rebuild from them
    (the FedKSeed pool); costs one copy of the trainable parameters. spec_version: the noise stream
    (docs/noise.md) its perturbations and updates use; a run's replicas all take the run's.
    """

    def __init__(self, model: nn.Module, *, eps: float = 1e-3, dist: str = "gaussian", keep_base: bool = False,
                 backend: str | None = None, spec_version: int = spec.SPEC_VERSION):
        self.model, self.eps = model, eps
        self.engine = Engine(model, shadow=True, dist=dist, backend=backend, spec_version=spec_version)
        self.params = self.engine.params()
        self.base = [p.detach().clone() for p in self.params] if keep_base else None
        self.step = 0  # the step whose starting weights it holds (advance() moves it)

    def noise(self) -> dict:
        """Its perturbations' eps, dist and spec_version: what every replica of a run shares."""
        return dict(eps=self.eps, dist=self.engine.dist, spec_version=self.engine.spec_version)

    def projection(self, seed: int, closure: Callable[[], torch.Tensor]) -> float:
        """(L(w + eps z) - L(w - eps z)) / (2 eps) on the closure's batch."""
        return self.engine.projection(seed, self.eps, closure)

    def evaluate_pair(self, seed: int, closure: Callable):
        """The closure's outputs at w +- eps z(seed), whatever they are (per-example losses, say)."""
        return self.engine.evaluate_pair(seed, self.eps, closure)

    @torch.no_grad()
    def apply(self, ops: Iterable[tuple], chunk: int = 4096) -> None:
        """Apply strategy ops in order; consecutive updates merge into multi-seed passes of up to `chunk`
        pairs, which is bit-identical to applying them one by one."""
        seeds: list[int] = []
        coeffs: list[float] = []
        for kind, op_seeds, op_coeffs in ops:
            if kind == "rebuild":
                seeds, coeffs = [], []  # superseded: the rebuild does not depend on the current weights
                if self.base is None:
                    raise RuntimeError("this strategy rebuilds from the base weights: make the Replica with "
                                       "keep_base=True")
                for p, b in zip(self.params, self.base):
                    p.copy_(b)
            elif kind != "update":
                raise ValueError(f"unknown op {kind!r}")
            seeds.extend(op_seeds)
            coeffs.extend(op_coeffs)
            if len(seeds) >= chunk:
                self.engine.apply(seeds, coeffs)
                seeds, coeffs = [], []
        if seeds:
            self.engine.apply(seeds, coeffs)

    def advance(self, first_step: int, steps: list[list[tuple]]) -> None:
        """Apply the ops of steps first_step, first_step + 1, ... (one list per step), skipping those this
        replica already holds: a replica shared by several clients takes each step once. Its weights at a step
        are a function of the broadcasts before it, the same for every client, so sharing is exact."""
        if first_step > self.step:
            raise ValueError(f"the ops of step {first_step} arrived at a replica on step {self.step}")
        skip = self.step - first_step
        self.apply([op for ops in steps[skip:] for op in ops])
        self.step = max(self.step, first_step + len(steps))

    def close(self) -> None:
        """Remove the shadow-mode hooks: the model runs plain forwards again."""
        self.engine.close()

    def keyed(self) -> list[tuple[int, str, torch.Tensor, torch.Tensor | None]]:
        """(noise key, name, parameter, its base copy or None) of every trainable parameter, in noise-key order."""
        base = self.base or [None] * len(self.params)
        return sorted(zip(self.engine.keys, self.engine.names, self.params, base), key=lambda k: k[0])

    def digest(self, base: bool = False) -> bytes:
        """A 16-byte blake2b digest of the trainable weights (in noise-key order); base=True: of the base copy."""
        h = hashlib.blake2b(digest_size=16)
        for _, _, p, b in self.keyed():
            h.update(_raw_bytes(b if base else p))
        return h.digest()


@torch.no_grad()
def local_steps(replica: Replica, strategy: Strategy, step: int, client: int,
                closures: Sequence[Callable]) -> tuple[list[float], list[float]]:
    """A client's local steps of a round (FedKSeed's local_steps = H): for h = 0..H-1, the projection at the
    current weights along z(strategy.seed_for(step, client, h)) on closures[h]'s batch, then the local ZO-SGD
    step w -= lr * g * z. The weights are restored exactly afterwards (the round's result arrives as the
    broadcast), so a replica shared by several simulated clients serves each in turn. A closure returns a
    loss or per-example losses (averaged). Returns the H projections and the H losses (L+ + L-) / 2."""
    if len(closures) != strategy.local_steps:
        raise ValueError(f"{strategy.name} takes {strategy.local_steps} local step(s) per round: give as many "
                         f"closures, got {len(closures)}")
    start = [p.detach().clone() for p in replica.params]
    projections, losses = [], []
    try:
        for h, closure in enumerate(closures):
            seed = strategy.seed_for(step, client, h)
            plus, minus = replica.evaluate_pair(seed, closure)
            lp, lm = float(plus.float().mean()), float(minus.float().mean())
            g = (lp - lm) / (2 * replica.eps)
            if not math.isfinite(g):
                raise FloatingPointError(f"non-finite loss for client {client} at step {step}, local step {h}; "
                                         "the weights are restored to the round's")
            projections.append(g)
            losses.append((lp + lm) / 2)
            if h + 1 < len(closures):  # the last local update would be undone at once
                replica.apply([("update", (seed,), (-strategy.lr * g,))])
    finally:
        for p, w in zip(replica.params, start):
            p.copy_(w)
    return projections, losses


class Client:
    """One federated client: its replica (possibly shared with other clients of this process, see
    Replica.advance), its own copy of the strategy's state, and its step counter. The one client runtime:
    every transport drives `handle`.

    data(step) -> the step's closures (one per local step; each returns a loss or per-example losses) on the
    client's own examples. `answer` returns the encoded reply for the current step, `receive` applies a
    broadcast, `catch_up` applies the frames a returning client gets from the server, `checksum` is the
    replica digest to report, `handle` does any of them as a transport's request asks (zofed.transport).
    """

    def __init__(self, cid: int, replica: Replica, strategy: Strategy, *, byzantine: bool = False, data=None,
                 task=None, examples=None):
        if strategy.keeps_base and replica.base is None:
            raise ValueError(f"a {strategy.name} client needs Replica(..., keep_base=True)")
        self.cid, self.replica, self.strategy, self.byzantine, self.data = cid, replica, strategy, byzantine, data
        self.task, self.examples = task, examples  # examples(step): the indices behind data(step)'s batches
        self.step = 0
        # what save_state keeps of the strategy's state: its snapshot() message as of the last one it made (or
        # the pool state this client caught up from) and the per-step broadcasts applied since; None for a
        # strategy without snapshots (it keeps no state: tests/test_client_snapshot.py)
        base = strategy.snapshot()
        self._strategy_state = None if base is None else (base, [])

    def _projection(self, step: int, closures: Sequence[Callable]) -> tuple:
        """(projection, loss) at the replica's current weights: with local steps, the H projections and the
        mean of their losses. A closure's outputs are averaged (per-example losses)."""
        if self.strategy.local_steps > 1:
            projections, losses = local_steps(self.replica, self.strategy, step, self.cid, closures)
            return projections, float(np.mean(losses))
        (closure,) = closures
        plus, minus = self.replica.evaluate_pair(self.strategy.seed_for(step, self.cid), closure)
        lp, lm = float(plus.float().mean()), float(minus.float().mean())
        g = (lp - lm) / (2 * self.replica.eps)
        if not math.isfinite(g):
            raise FloatingPointError(f"non-finite loss for client {self.cid} at step {step}; the weights were "
                                     "left unchanged")
        return g, (lp + lm) / 2

    def answer(self, closure: Callable[[], torch.Tensor] | Sequence[Callable[[], torch.Tensor]]) -> bytes:
        """The reply for the current step; with local steps, `closure` is one closure per local step."""
        p, _ = self._projection(self.step, [closure] if callable(closure) else closure)
        return encode(self.strategy.up(self.step, self.cid, p, self.byzantine))

    def _round(self, ask: Ask) -> list[bytes]:
        """The reply to a round of ask.count steps, every step's projection taken at the current weights (the
        round's), and the Report of their losses."""
        if ask.step != self.step:
            raise ValueError(f"client {self.cid} is on step {self.step}, asked to answer step {ask.step}")
        if self.replica.step != self.step:
            raise ValueError(f"client {self.cid} on step {self.step} shares a replica on step {self.replica.step}")
        if self.data is None:
            raise ValueError(f"client {self.cid} has no data to answer with (Client(..., data=))")
        return self._reply(ask, [self._projection(t, self.data(t)) for t in range(ask.step, ask.step + ask.count)])

    def _reply(self, ask: Ask, results: list[tuple]) -> list[bytes]:
        reply = self.strategy.reply(ask.step, self.cid, [p for p, _ in results], self.byzantine)
        return [encode(reply), encode(Report(ask.step, tuple(loss for _, loss in results)))]

    def _ops(self, msg) -> tuple[int, list[list[tuple]]]:
        """(first step, per-step ops) of a broadcast, history or pool state; moves the client's step past it."""
        if isinstance(msg, PoolState):
            ops = self.strategy.restore(msg)
            self.step = msg.step
            self._strategy_state = (msg, [])
            return msg.step - 1, [ops]  # the rebuild the step before msg.step ends with
        first, steps = self.step, []
        for down in self.strategy.steps_of(msg):
            if down.first_step != self.step:
                raise ValueError(f"catch-up for step {down.first_step} arrived at a client on step {self.step}")
            steps.append(self.strategy.ops(self.step, down))
            self.step += 1
            self._remember(down)
        return first, steps

    def _remember(self, down) -> None:
        """Keep the strategy's newest snapshot and the broadcasts since (what save_state writes)."""
        if self._strategy_state is None:
            return
        base, since = self._strategy_state
        newest = self.strategy.snapshot()
        if newest.step > base.step:  # the strategy made one at this step (FedKSeed: a rebuild) and holds the rest
            self._strategy_state = (newest, [])
        else:
            since.append(down)

    def _apply(self, msgs) -> None:
        for msg in msgs:
            first, steps = self._ops(msg)
            if isinstance(msg, PoolState) and self.replica.step >= msg.step:
                continue  # a shared replica already holds that step's weights
            if isinstance(msg, PoolState):
                self.replica.apply(steps[0])
                self.replica.step = msg.step
            else:
                self.replica.advance(first, steps)

    def receive(self, frame: bytes) -> None:
        self._apply([decode(frame)])

    def catch_up(self, frames: Iterable[bytes]) -> None:
        self._apply([decode(f) for f in frames])

    def checksum(self) -> bytes:
        """The Checksum of this client's replica at its step."""
        if self.replica.step != self.step:
            raise ValueError(f"client {self.cid} is on step {self.step} but shares a replica on step "
                             f"{self.replica.step}: only a caught-up client can report its weights")
        return encode(Checksum(self.step, self.replica.digest()))

    def save_state(self) -> bytes:
        """This client at its step, as bytes for load_state: the replica's trainable weights (raw, in noise-key
        order), what the strategy needs to go on from here (its snapshot() as of its last one and the broadcasts
        since: FedKSeed's pool accumulators; nothing for strategies without snapshots), and the digests that
        load_state checks: the replica's, and for a strategy that rebuilds from the base weights the base's (the
        base is not saved: a client rebuilt from the run config has it)."""
        if self.replica.step != self.step:
            raise ValueError(f"client {self.cid} is on step {self.step} but shares a replica on step "
                             f"{self.replica.step}: only a caught-up client can save its state")
        frames = b""
        if self._strategy_state is not None:
            base, since = self._strategy_state
            frames = encode(base) + (encode(self.strategy.history(since[0].first_step, since)) if since else b"")
        header = dict(client=self.cid, step=self.step, strategy=self._identity(), frames=len(frames),
                      digest=self.replica.digest().hex(),
                      base=self.replica.digest(base=True).hex() if self.replica.base is not None else None,
                      tensors=[[name, str(p.dtype), list(p.shape)] for _, name, p, _ in self.replica.keyed()])
        return b"".join([_STATE_MAGIC, json.dumps(header).encode(), b"\n", frames,
                         *(_raw_bytes(p) for _, _, p, _ in self.replica.keyed())])

    @torch.no_grad()
    def load_state(self, state: bytes) -> None:
        """Bring a new client (step 0, built from the same run config) to the state save_state wrote; ValueError
        naming the problem for a state that is not this client's, is damaged, or gives other weights than it
        recorded (the client is then left unusable: build a new one)."""
        if self.step or self.replica.step:
            raise ValueError(f"a client state loads into a new client; client {self.cid} is on step {self.step}")
        if not state.startswith(_STATE_MAGIC) or b"\n" not in state[len(_STATE_MAGIC):]:
            raise ValueError("not a zofed client state (Client.save_state writes one)")
        line, _, rest = state[len(_STATE_MAGIC):].partition(b"\n")
        try:
            header = json.loads(line)
        except ValueError:
            header = None
        if not isinstance(header, dict) or set(header) != _STATE_KEYS:
            raise ValueError("not a zofed client state: its header is not the JSON object save_state writes")
        if header["client"] != self.cid:
            raise ValueError(f"this is client {header['client']}'s state, not client {self.cid}'s")
        if header["strategy"] != self._identity():
            raise ValueError(f"this state is of the strategy {header['strategy']}, this client runs "
                             f"{self._identity()}")
        keyed = self.replica.keyed()
        if header["tensors"] != [[name, str(p.dtype), list(p.shape)] for _, name, p, _ in keyed]:
            raise ValueError("this state's weights do not fit this client's model (other names, dtypes or shapes)")
        if header["base"] is not None and header["base"] != self.replica.digest(base=True).hex():
            raise ValueError("this client's base weights (the run's starting weights, which a rebuild starts "
                             "from) are not those of the state: the task builds other weights than the run's")
        sizes = [p.numel() * p.element_size() for _, _, p, _ in keyed]
        if len(rest) != header["frames"] + sum(sizes):
            raise ValueError(f"this client state is truncated or overlong: {len(rest)} bytes after its header, "
                             f"{header['frames'] + sum(sizes)} expected")
        frames, at = rest[:header["frames"]], header["frames"]
        for (_, _, p, _), n in zip(keyed, sizes):
            p.copy_(torch.frombuffer(bytearray(rest[at:at + n]), dtype=torch.uint8).view(p.dtype).view(p.shape))
            at += n
        if frames:  # the strategy's state: its snapshot, then the broadcasts since (their ops on the strategy only)
            base, *since = (decode(f) for f in split_frames(frames))
            downs = [d for msg in since for d in self.strategy.steps_of(msg)]
            self.strategy.restore(base)
            for step, down in enumerate(downs, base.step):
                self.strategy.ops(step, down)
            self._strategy_state = (base, downs)
            if base.step + len(downs) != header["step"]:
                raise ValueError(f"this client state's strategy reaches step {base.step + len(downs)}, its weights "
                                 f"step {header['step']}")
        self.step = self.replica.step = header["step"]
        if self.replica.digest().hex() != header["digest"]:
            raise ValueError(f"loading this state gave client {self.cid} other weights than it recorded")

    def _identity(self) -> dict:
        """The strategy, its lr and run seed, and the replica's noise spec version: what a state must have been
        saved with (the digests check the rest)."""
        return dict(name=self.strategy.name, lr=self.strategy.lr, run_seed=self.strategy.run_seed,
                    spec_version=self.replica.engine.spec_version)

    def handle(self, request: bytes) -> bytes:
        """A transport's request (zofed.transport): apply its broadcasts, histories and pool states in order,
        answer its Asks; returns the reply frames."""
        reply: list[bytes] = []
        for frame in split_frames(request):
            msg = decode(frame)
            if isinstance(msg, Ask):
                reply += self._round(msg) if msg.count else [self.checksum()]
            elif isinstance(msg, (Checksum, Report)):
                raise ValueError(f"a {type(msg).__name__} frame is a client's to send, not to receive")
            else:
                self._apply([msg])
        return b"".join(reply)


_STATE_MAGIC = b"zofed client state 1\n"  # Client.save_state: this line, a JSON header line, frames, weights
_STATE_KEYS = {"client", "step", "strategy", "frames", "digest", "base", "tensors"}


def flat_weights(params) -> torch.Tensor:
    """The parameters as one float32 vector (what dense FedAvg uploads and averages)."""
    return torch.cat([p.detach().float().reshape(-1) for p in params])


@torch.no_grad()
def load_flat(params, flat: torch.Tensor) -> None:
    n = 0
    for p in params:
        p.copy_(flat[n:n + p.numel()].view_as(p))
        n += p.numel()


def dense_frame_bytes(params) -> int:
    """The size of a Dense frame of these parameters: what a receiver of dense weights accepts (more than
    wire.MAX_FRAME_BYTES for a model over about 4M weights)."""
    return Dense.frame_bytes(sum(p.numel() for p in params))


def to_dense(step: int, flat: torch.Tensor) -> Dense:
    return Dense(step, flat.float().numpy().astype("<f4").tobytes())


def from_dense(msg: Dense) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(msg.data, dtype="<f4").copy())


def split_clients(task, cfg) -> list[list[int]]:
    """Each client's examples (indices into the task's training set): iid, or Dirichlet(cfg.dirichlet) label skew."""
    from .data import dirichlet_split, iid_split

    if cfg.dirichlet is None:
        return iid_split(task.labels, cfg.clients, seed=cfg.seed)
    return dirichlet_split(task.labels, cfg.clients, cfg.dirichlet, convention=cfg.convention, seed=cfg.seed,
                           min_size=1)


def batches(part: list[int], cfg, step: int, client: int, count: int) -> list[list[int]]:
    """A client's `count` batches of a step (one per local step), drawn with replacement from its examples by
    a generator seeded with (seed, step, client)."""
    drawn = np.random.default_rng([cfg.seed, step, client]).integers(0, len(part), cfg.batch * count)
    return [[part[i] for i in drawn[h * cfg.batch:(h + 1) * cfg.batch]] for h in range(count)]


def run_config(cfg, task) -> dict:
    """What a client needs to rebuild itself anywhere (JSON-serializable): the run's config and the task."""
    import dataclasses

    return dict(config=dataclasses.asdict(cfg), task=task.name, task_options=dict(task.options))


def make_clients(run_config: dict, cids, *, shared: bool = False, task=None, replica=None) -> dict[int, Client]:
    """The clients `cids` of a run, each with its data, its strategy instance and a replica: its own (a copy
    of the task's model), or with shared=True one replica for all of them (`replica`, or a new one on the task's
    model). `task`: the run's task if this process has it already (else built from the run config)."""
    import copy

    from . import tasks
    from .configs import SimConfig

    cfg = SimConfig(**run_config["config"])
    if task is None:
        task = tasks.build(run_config["task"], **run_config["task_options"])
    parts = split_clients(task, cfg)
    sizes = [len(p) for p in parts] if cfg.client_weights == "data-size" else None
    keep_base = cfg.make_strategy(sizes).keeps_base
    noise = dict(eps=cfg.eps, dist=cfg.dist, spec_version=cfg.spec_version, keep_base=keep_base)
    if shared and replica is not None and replica.noise() != {k: noise[k] for k in replica.noise()}:
        raise ValueError(f"the shared replica perturbs with {replica.noise()}, the run with {noise}")
    one = (replica or Replica(task.model, **noise)) if shared else None
    clients = {}
    for c in cids:
        own = one or Replica(copy.deepcopy(task.model), **noise)
        strategy = cfg.make_strategy(sizes)

        def data(step, c=c, model=own.model, h=strategy.local_steps):
            return [lambda b=b: task.losses(model, task.batch(b)) for b in batches(parts[c], cfg, step, c, h)]

        clients[c] = Client(c, own, strategy, byzantine=c >= cfg.clients - cfg.byzantine, data=data, task=task,
                            examples=lambda step, c=c, h=strategy.local_steps: batches(parts[c], cfg, step, c, h))
    return clients


@torch.no_grad()
def answer_together(clients: list[Client], ask: Ask) -> dict[int, bytes] | None:
    """The replies of several clients to the same round, their batches run through one pair of forwards per step:
    the in-process transport's speed-up where it gives the bits each client alone computes. That holds when
    they share one replica at the round's step and the step's seed (FeedSign, DP-FeedSign, robust ZO-FedSGD;
    no local steps) and the task's per-example losses do not depend on the batch (task.batch_invariant).
    None where it does not hold: each client then answers alone."""
    first = clients[0]
    replica, task, strategy = first.replica, first.task, first.strategy
    if len(clients) < 2 or task is None or not task.batch_invariant or not strategy.shared_seed or \
            strategy.local_steps != 1 or not ask.count or replica.step != ask.step or \
            any(c.replica is not replica or c.task is not task or c.examples is None or c.step != ask.step or
                c.strategy.name != strategy.name for c in clients):
        return None
    results: dict[int, list[tuple]] = {c.cid: [] for c in clients}
    for t in range(ask.step, ask.step + ask.count):
        per_client = [c.examples(t)[0] for c in clients]
        indices = [i for b in per_client for i in b]
        plus, minus = replica.evaluate_pair(strategy.seed_for(t, first.cid),
                                            lambda: task.losses(replica.model, task.batch(indices)))
        n = 0
        for c, b in zip(clients, per_client):
            lp, lm = float(plus[n:n + len(b)].float().mean()), float(minus[n:n + len(b)].float().mean())
            g = (lp - lm) / (2 * replica.eps)
            if not math.isfinite(g):
                raise FloatingPointError(f"non-finite loss for client {c.cid} at step {t}; the weights were left "
                                         "unchanged")
            results[c.cid].append((g, (lp + lm) / 2))
            n += len(b)
    return {c.cid: b"".join(c._reply(ask, results[c.cid])) for c in clients}


def make_client(run_config: dict, cid: int) -> Client:
    """Client `cid` of a run, built from the run config alone (what a transport's other side calls)."""
    return make_clients(run_config, [cid])[cid]


class ModelEvaluator:
    """What a run's loop needs from the model (zofed.loop): held-out evaluation, the model_sha256, and the replica
    digest a checkpoint records. It follows every broadcast on a replica of the task's model (`replica`, which
    an in-process transport may share with its clients: Replica.advance applies each step once)."""

    def __init__(self, task, cfg, data_sizes=None):
        self.task = task
        self.base_sha256 = weights_sha256(task.model)
        strategy = cfg.make_strategy(data_sizes)
        self.replica = Replica(task.model, eps=cfg.eps, dist=cfg.dist, spec_version=cfg.spec_version,
                               keep_base=strategy.keeps_base)
        self.follower = Client(-1, self.replica, strategy)

    def follow(self, frames: bytes) -> None:
        self.follower.handle(frames)

    def evaluate(self) -> dict:
        return self.task.evaluate(self.task.model)

    def sha256(self) -> str:
        return weights_sha256(self.task.model)

    def digest(self) -> str:
        return self.replica.digest().hex()

    def close(self) -> None:
        self.replica.close()
