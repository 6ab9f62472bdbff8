"""Step strategies' runs (FeedSign, DP-FeedSign, ZO-FedSGD, FedKSeed) on any transport: the server side of a run,
a real parameter server, real clients, real wire frames. Imports no torch at module level (a Flower ServerApp
runs StepDriver); `run` builds the in-process pieces (the task's model, its clients) when given none.

Every message is encoded, decoded and counted exactly as it travels (zofed.transport), catch-up traffic of
clients that were offline included. Client availability and reply latencies are hashed from the run's seed
(a property of the run, not of the transport), so every transport gives the same model_sha256.

    summary = zofed.sim.run(zofed.tasks.build("vader"), SimConfig(strategy="feedsign"), out="runs/a")
"""

from __future__ import annotations

import base64
import dataclasses

import numpy as np

from . import atomic, loop, strategies
from .configs import SimConfig
from .loop import CHECKPOINT, ROUND_CHECKPOINT  # noqa: F401 (part of this module's API)
from .seeds import unit
from .server import ParameterServer
from .transport import split_frames
from .wire import Ask, Report, decode, encode
from zokernels.seeding import derive_seed

_OFFLINE, _LATENCY, _SECRET = 0x0F, 0x1A, 0x5EC
_KEYS = loop.COMMON_KEYS | {"step", "digest", "history", "server", "counter"}


def _read_checkpoint(path: str):
    """A sealed step-run checkpoint as this version writes it. Those written before the transport seam kept the
    byte counter inside the server's state and had no steps_per_round (every round was one step): moved and
    filled in here, so their runs resume where they were."""
    ck = atomic.read_sealed_json(path)
    server = ck.get("server") if isinstance(ck, dict) else None
    if "counter" not in ck and isinstance(server, dict) and "counter" in server and isinstance(ck.get("config"), dict):
        ck["server"] = {k: v for k, v in server.items() if k != "counter"}
        ck["counter"] = server["counter"]
        ck["config"] = dict(ck["config"], steps_per_round=ck["config"].get("steps_per_round", 1))
    return ck


class StepDriver:
    """The server side of a step strategy's run for zofed.loop.run: rounds of B = cfg.steps_per_round steps over
    `transport` (started here with `run_config`), replies closing on the run's hashed latencies, quorum and
    deadline, broadcasts to the online clients, catch-up for those coming back. The evaluator follows every
    broadcast (evaluator.follow(frames)) and gives the replica digest a checkpoint records (evaluator.digest()).
    data_sizes: the clients' example counts (FedKSeed's data-size weights)."""

    unit, checkpoint, other = "step", CHECKPOINT, ROUND_CHECKPOINT

    def __init__(self, cfg: SimConfig, transport, evaluator, run_config: dict, data_sizes: list[int] | None = None):
        cfg.validate()
        self.cfg, self.transport, self.evaluator = cfg, transport, evaluator
        self.clients, self.total = cfg.clients, cfg.steps
        self.name = strategies.run_label(self.config())  # the run's name in its progress bar and plots
        self.strategy = cfg.make_strategy(data_sizes)
        self.server = ParameterServer(cfg.make_strategy(data_sizes), cfg.clients, participation=cfg.participation,
                                      quorum=cfg.quorum, deadline=cfg.deadline, steps_per_round=cfg.steps_per_round,
                                      sampling_seed=derive_seed(cfg.seed, _SECRET),
                                      secret=cfg.server_secret)  # None: private, os.urandom
        self.counter = transport.counter
        self.downs: list = []  # every broadcast: the orbit, and what a checkpoint rebuilds the run from
        transport.start(run_config, list(range(cfg.clients)))

    @property
    def position(self) -> int:
        return self.server.step

    def config(self) -> dict:
        return dataclasses.asdict(self.cfg)

    def _send(self, requests: dict[int, bytes]) -> dict[int, bytes]:
        return self.transport.exchange({c: r for c, r in requests.items() if r})

    def _availability(self, step: int) -> None:
        """Clients go offline with probability cfg.dropout per round; one coming back catches up first."""
        server, cfg = self.server, self.cfg

        def bring_online(c: int) -> None:
            server.set_online(c, True)
            self._send({c: b"".join(server.catch_up(c))})

        for c in range(cfg.clients):
            online = unit(cfg.seed, _OFFLINE, step, c) >= cfg.dropout
            if online and c not in server.online:
                bring_online(c)
            elif not online:
                server.set_online(c, False)
        if not server.online:  # somebody must answer: the lowest id stays reachable
            bring_online(0)

    def advance(self) -> dict:
        """One round (retried with a new sample while nobody answers in time): its metrics row."""
        server, cfg = self.server, self.cfg
        while True:
            step = server.step
            self._availability(step)
            sampled = server.open_round()
            replies = self.transport.exchange({c: encode(Ask(step, cfg.steps_per_round)) for c in sampled})
            arrivals = sorted((unit(cfg.seed, _LATENCY, step, server.attempt, c), c) for c in replies)
            losses = {}
            for at, c in arrivals:
                reply, report = split_frames(replies[c])
                if server.receive(c, reply, at):
                    losses[c] = _report(decode(report), step, c)
            frame = server.close()
            if frame is not None:
                break
            if server.attempt >= 100:
                raise RuntimeError(f"step {step}: no reply arrived before the {cfg.deadline} s deadline in 100 rounds; "
                                   "raise the deadline or the participation")
        self._send({c: frame for c in sorted(server.online)})
        self.evaluator.follow(frame)
        self.downs += self.strategy.steps_of(decode(frame))
        return dict(step=server.step, loss=float(np.mean([np.mean(v) for v in losses.values()])),
                    answered=len(losses))

    def save(self, path: str, common: dict) -> None:
        history = encode(self.strategy.history(0, self.downs)) if self.downs else b""
        atomic.write_sealed_json(path, dict(common, step=len(self.downs), digest=self.evaluator.digest(),
                                            history=base64.b64encode(history).decode(),
                                            server=self.server.state_dict(), counter=self.counter.state_dict()))

    def load(self, path: str) -> dict:
        return loop.load_checkpoint(path, _read_checkpoint, _KEYS)

    def restore(self, ck: dict) -> None:
        """Rebuild the run at the checkpoint from its broadcasts (as an orbit replay does): the server, the
        evaluator's replica (checked against the recorded digest), and each client at the step it had reached."""
        downs = list(self.strategy.steps_of(decode(base64.b64decode(ck["history"])))) if ck["step"] else []
        self.server.load_state_dict(ck["server"], downs)
        self.evaluator.follow(b"".join(f for _, f in self.server.history_messages(0, downs)) if downs else b"")
        if self.evaluator.digest() != ck["digest"]:
            raise RuntimeError(f"rebuilding the run at step {ck['step']} gave other weights than it had; the library "
                               "or the task changed since: start over in another folder")
        for c, need in sorted(self.server.synced.items()):
            if need:
                self._send({c: b"".join(f for _, f in self.server.history_messages(0, downs[:need]))})
        self.counter.load_state_dict(ck["counter"])  # the rebuild's traffic is not the run's
        self.downs = downs

    def finish(self, summary: dict) -> None:
        cfg = self.cfg
        # DP-FeedSign's server secret stays in the server's checkpoint: a summary is for anyone who reads the run
        summary["config"] = {k: v for k, v in summary["config"].items() if k != "server_secret"}
        for c in summary["clients"]:
            c["byzantine"] = c["client"] >= cfg.clients - cfg.byzantine
        summary.update(payload_bits_up_per_client_per_step=summary["payload_bits_up_per_client"] / cfg.steps,
                       payload_bits_down_per_client_per_step=summary["payload_bits_down_per_client"] / cfg.steps,
                       stragglers=self.server.stragglers)

    def orbit(self):
        cfg, task = self.cfg, self.evaluator.task
        return (dict(strategy=cfg.strategy, strategy_options=cfg.strategy_options(), lr=cfg.lr, eps=cfg.eps,
                     dist=cfg.dist, run_seed=cfg.seed, steps=cfg.steps, task=task.name, task_options=task.options),
                self.strategy.history(0, self.downs))

    def close(self) -> None:
        self.transport.close()
        self.evaluator.close()


def _report(msg, step: int, client: int) -> tuple:
    if not isinstance(msg, Report) or msg.step != step:
        raise ValueError(f"client {client}: expected the Report of step {step} after its reply, got {msg!r}")
    return msg.values


def run(task, cfg: SimConfig, out: str | None = None, progress: bool = True, checkpoint_every: int = 20,
        transport=None) -> dict:
    """Run `cfg` on `task`; with `out`, write metrics.jsonl, orbit, summary.json and plots there.

    transport: None runs the clients in this process on one replica, the task's model (zofed.transport.InProc).
    With `out`, a checkpoint is written atomically every `checkpoint_every` steps, and calling run again
    with the same task and config resumes from it (after a crash or kill -9), ending bit-identical to an
    uninterrupted run: everything random is hashed from (seed, step, client). Every file a resume reads is
    verified (the checkpoint is sealed with its sha256 and records the sha256 of the metrics lines it covers):
    a damaged one raises zofed.atomic.DamagedFileError and the folder is left as it is. While it runs, the
    folder is locked: a second run on it raises zofed.atomic.FolderInUseError."""
    from .client import ModelEvaluator, run_config, split_clients
    from .transport import InProc

    cfg.validate()
    sizes = [len(p) for p in split_clients(task, cfg)]  # FedKSeed's data-size client weights
    evaluator = ModelEvaluator(task, cfg, sizes)
    try:
        transport = transport or InProc(task=task, shared=True, replica=evaluator.replica)
        driver = StepDriver(cfg, transport, evaluator, run_config(cfg, task), sizes)
    except BaseException:
        evaluator.close()
        raise
    return loop.run(driver, evaluator, task.name, task.options, out=out, progress=progress,
                    checkpoint_every=checkpoint_every, eval_every=cfg.eval_every)
