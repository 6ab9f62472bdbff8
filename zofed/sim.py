"""The in-process simulator: K clients sharing ONE model replica, a real parameter server, real wire frames.

FeedSign and ZO-FedSGD replicas are identical by construction (every client applies the same
broadcasts), so one replica stands for all of them; per-client state is data and counters. Every
message is encoded, decoded and counted exactly as it would travel (zofed.wire), catch-up traffic of
clients that were offline included. Where the strategy shares one seed per step, all answering
clients' batches run through the same perturbed forwards, and each client's projection is computed
from its own examples' losses (the numbers a client alone would compute, up to summation order).

    summary = zofed.sim.run(zofed.tasks.build("vader"), SimConfig(strategy="feedsign"), out="runs/a")
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch

from . import atomic
from . import orbit as orbits
from . import strategies
from .client import Replica, local_steps, weights_sha256
from .configs import DEFAULT_LR, SimConfig  # noqa: F401 (DEFAULT_LR: part of this module's API)
from .data import dirichlet_split, iid_split
from .seeds import unit
from zokernels.seeding import derive_seed
from .server import ParameterServer
from .wire import ByteCounter, decode, encode

_OFFLINE, _LATENCY, _SECRET = 0x0F, 0x1A, 0x5EC


def split_clients(task, cfg: SimConfig) -> list[list[int]]:
    if cfg.dirichlet is None:
        return iid_split(task.labels, cfg.clients, seed=cfg.seed)
    return dirichlet_split(task.labels, cfg.clients, cfg.dirichlet, convention=cfg.convention, seed=cfg.seed,
                           min_size=1)


def _write_json(path: str, obj) -> None:
    atomic.write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


CHECKPOINT = "checkpoint.json"
ROUND_CHECKPOINT = "checkpoint.pt"  # zofed.rounds' (FedMeZO, ZOWarmUp): a folder holds one kind of run
METRICS = "metrics.jsonl"
_CHECKPOINT_KEYS = {"config", "task", "task_options", "base_sha256", "rows", "metrics_sha256", "seconds"}


def _differences(there: dict, here: dict) -> str:
    keys = sorted(k for k in set(there) | set(here) if there.get(k) != here.get(k))
    return ", ".join(f"{k}: {there.get(k)!r} there, {here.get(k)!r} here" for k in keys)


def resumable(out: str | None, mine: str, other: str) -> bool:
    """Whether `out` holds a checkpoint named `mine`; ValueError if it holds one of the other kind of run."""
    if not out:
        return False
    if os.path.exists(os.path.join(out, other)):
        raise ValueError(f"{out} holds a run of another strategy (it has {other}); use another --out folder")
    return os.path.exists(os.path.join(out, mine))


def cannot_resume(why: str) -> atomic.DamagedFileError:
    return atomic.DamagedFileError(f"{why}; the run cannot resume from it: start it again with another --out "
                                   "(this folder is left as it is)")


def load_checkpoint(path: str, read, keys=_CHECKPOINT_KEYS) -> dict:
    """read(path), verified whole by its seal and holding `keys`; DamagedFileError saying what to do otherwise."""
    try:
        ck = read(path)
    except atomic.DamagedFileError as exc:
        raise cannot_resume(str(exc)) from None
    if not isinstance(ck, dict) or not keys <= set(ck):
        raise cannot_resume(f"{path} is not a checkpoint of this zofed version")
    return ck


def _resume(out: str, cfg: SimConfig, task, replica, strategy, server, base_sha) -> tuple[list, list, float]:
    """Bring a fresh model, strategy and server to the last checkpoint in `out`: (rows, broadcasts, seconds).
    The weights are rebuilt from the broadcasts (as an orbit replay does) and checked against its digest."""
    ck = load_checkpoint(os.path.join(out, CHECKPOINT), atomic.read_sealed_json,
                         _CHECKPOINT_KEYS | {"step", "digest", "history", "server"})
    check_resumable(out, ck, dataclasses.asdict(cfg), task, base_sha)
    rows = read_rows(out, ck["rows"], ck["metrics_sha256"])
    downs = strategy.steps_of(decode(base64.b64decode(ck["history"]))) if ck["step"] else []
    replica.apply([op for t, down in enumerate(downs) for op in strategy.ops(t, down)])
    if replica.digest().hex() != ck["digest"]:
        raise RuntimeError(f"rebuilding {out} at step {ck['step']} gave other weights than the run had; "
                           "the library or the task changed since: start over in another folder")
    server.load_state_dict(ck["server"], downs)
    return rows, list(downs), ck["seconds"]


def check_resumable(out: str, ck: dict, config: dict, task, base_sha: str) -> None:
    """Refuse to resume `out` from checkpoint `ck` unless it was written by this config, task and base weights."""
    here = dict(config, task=task.name, **{f"task.{k}": v for k, v in task.options.items()})
    there = dict(ck["config"], task=ck["task"], **{f"task.{k}": v for k, v in ck["task_options"].items()})
    if here != there:
        raise ValueError(f"{out} holds a run with another config ({_differences(there, here)}); use another "
                         "--out folder, or delete this one to start over")
    if ck["base_sha256"] != base_sha:
        raise ValueError(f"{out} was started on other base weights ({ck['base_sha256'][:16]}...); refusing to resume")


def read_rows(out: str, n: int, sha256: str) -> list[dict]:
    """The first n rows of out/metrics.jsonl (those a checkpoint covers), verified against their sha256. Lines
    after them are not read: the resumed run writes them again."""
    path = os.path.join(out, METRICS)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise cannot_resume(f"{path} is missing") from None
    tail = data.split(b"\n", n)
    if len(tail) <= n:
        raise cannot_resume(f"{path} is damaged or truncated: it holds {len(tail) - 1} of the {n} lines the checkpoint "
                            "covers")
    covered = data[:len(data) - len(tail[-1])]
    if hashlib.sha256(covered).hexdigest() != sha256:
        raise cannot_resume(f"{path} is damaged: its first {n} lines do not match the sha256 the checkpoint "
                            "recorded (a changed bit or a torn write)")
    return [json.loads(line) for line in covered.decode().splitlines()]


class MetricsLog:
    """out/metrics.jsonl: `rows` written atomically, then a JSON row per line, flushed as the run goes. It keeps
    the sha256 of the lines written, which a checkpoint records so that resume can verify them (read_rows)."""

    def __init__(self, out: str, rows: list[dict]):
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        path = os.path.join(out, METRICS)
        atomic.write_bytes(path, data)  # on resume this drops lines written after the checkpoint: they come again
        self.sha256 = hashlib.sha256(data)
        self.file = open(path, "ab")

    def append(self, row: dict) -> None:
        line = (json.dumps(row) + "\n").encode()
        self.file.write(line)
        self.file.flush()
        self.sha256.update(line)

    def close(self) -> None:
        self.file.close()


def _checkpoint(out, cfg, task, replica, strategy, server, base_sha, rows, metrics, downs, seconds) -> None:
    history = encode(strategy.history(0, downs)) if downs else b""
    atomic.write_sealed_json(os.path.join(out, CHECKPOINT), dict(
        config=dataclasses.asdict(cfg), task=task.name, task_options=task.options, base_sha256=base_sha,
        step=len(downs), rows=len(rows), metrics_sha256=metrics.sha256.hexdigest(), digest=replica.digest().hex(),
        seconds=seconds, history=base64.b64encode(history).decode(), server=server.state_dict()))


def run(task, cfg: SimConfig, out: str | None = None, progress: bool = True, checkpoint_every: int = 20) -> dict:
    """Run `cfg` on `task`; with `out`, write metrics.jsonl, orbit, summary.json and plots there.

    With `out`, a checkpoint is written atomically every `checkpoint_every` steps, and calling run again
    with the same task and config resumes from it (after a crash or kill -9), ending bit-identical to an
    uninterrupted run: everything random is hashed from (seed, step, client). Every file a resume reads is
    verified (the checkpoint is sealed with its sha256 and records the sha256 of the metrics lines it covers):
    a damaged one raises zofed.atomic.DamagedFileError and the folder is left as it is. While it runs, the
    folder is locked: a second run on it raises zofed.atomic.FolderInUseError."""
    cfg.validate()
    from tqdm import tqdm

    model = task.model
    parts = split_clients(task, cfg)
    sizes = [len(p) for p in parts]  # FedKSeed's data-size client weights
    server_strategy, strategy = cfg.make_strategy(data_sizes=sizes), cfg.make_strategy(data_sizes=sizes)
    counter = ByteCounter()
    server = ParameterServer(server_strategy, cfg.clients, participation=cfg.participation, quorum=cfg.quorum,
                             deadline=cfg.deadline, sampling_seed=derive_seed(cfg.seed, _SECRET),
                             secret=cfg.server_secret, counter=counter)  # None: private, os.urandom
    replica = Replica(model, eps=cfg.eps, dist=cfg.dist, keep_base=isinstance(strategy, strategies.FedKSeed))
    byzantine = set(range(cfg.clients - cfg.byzantine, cfg.clients))
    base_sha = weights_sha256(model)
    with contextlib.ExitStack() as stack:  # the folder stays locked until every output is written
        stack.callback(replica.close)
        if out:
            stack.enter_context(atomic.folder_lock(out))
        resuming = resumable(out, CHECKPOINT, ROUND_CHECKPOINT)
        if resuming:
            rows, history, before = _resume(out, cfg, task, replica, strategy, server, base_sha)
            first = dict(accuracy=rows[0]["accuracy"], loss=rows[0]["test_loss"])
            say_resuming(out, "step", server.step, cfg.steps)
        else:
            first = task.evaluate(model)
            rows = [dict(step=0, accuracy=first["accuracy"], test_loss=first["loss"], bytes_up=0, bytes_down=0)]
            history, before = [], 0.0
        t0 = time.perf_counter()
        metrics = None
        if out:
            metrics = MetricsLog(out, rows)
            stack.callback(metrics.close)
            if not resuming:
                _checkpoint(out, cfg, task, replica, strategy, server, base_sha, rows, metrics, history, 0.0)
        bar = stack.enter_context(tqdm(total=cfg.steps, initial=server.step, desc=f"{cfg.strategy} x{cfg.clients}",
                                       disable=not progress))
        while server.step < cfg.steps:
            step = server.step
            _availability(server, cfg, step)
            sampled = server.open_round()
            batches = {c: _batches(parts[c], cfg, step, c, strategy.local_steps) for c in sampled}
            proj, losses = _projections(task, replica, strategy, step, batches, cfg.eps)
            arrivals = sorted((unit(cfg.seed, _LATENCY, step, server.attempt, c), c) for c in sampled)
            counted = [c for at, c in arrivals
                       if server.receive(c, encode(strategy.up(step, c, proj[c], c in byzantine)), at)]
            down_frame = server.close()
            if down_frame is None:  # nobody answered in time: the server retries the step with a new sample
                if server.attempt >= 100:
                    raise RuntimeError(f"step {step}: no reply arrived before the {cfg.deadline} s deadline in 100 "
                                       "rounds; raise the deadline or the participation")
                continue
            down = decode(down_frame)
            replica.apply(strategy.ops(step, down))
            history.append(down)
            row = dict(step=step + 1, loss=float(np.mean([losses[c] for c in counted])), answered=len(counted))
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                ev = task.evaluate(model)
                row.update(accuracy=ev["accuracy"], test_loss=ev["loss"], **_mean_bytes(counter, cfg.clients))
                bar.set_postfix(acc=f"{100 * ev['accuracy']:.1f}%")
            rows.append(row)
            if metrics:
                metrics.append(row)
                if (step + 1) % checkpoint_every == 0 or step + 1 == cfg.steps:
                    _checkpoint(out, cfg, task, replica, strategy, server, base_sha, rows, metrics, history,
                                before + time.perf_counter() - t0)
            bar.update(1)
        seconds = before + time.perf_counter() - t0
        final_sha = weights_sha256(model)
        summary = _summary(cfg, task, first, rows, counter, server, base_sha, final_sha, seconds)
        if out:
            config = dict(strategy=cfg.strategy, strategy_options=cfg.strategy_options(), lr=cfg.lr, eps=cfg.eps,
                          dist=cfg.dist, run_seed=cfg.seed, steps=cfg.steps, task=task.name, task_options=task.options)
            orbit = orbits.Orbit(config, base_sha, final_sha, strategy.history(0, history))
            orbits.save(os.path.join(out, "orbit"), orbit)
            summary["orbit_bytes"] = os.path.getsize(os.path.join(out, "orbit"))
            _write_json(os.path.join(out, "summary.json"), summary)
            from .plots import plot_run

            plot_run(rows, out, title=f"{cfg.strategy}, {cfg.clients} clients")
    return summary


def say_resuming(out: str, unit: str, done: int, total: int) -> None:
    print(f"resuming {out} from {unit} {done} of {total}", file=sys.stderr)


def _availability(server: ParameterServer, cfg: SimConfig, step: int) -> None:
    """Clients go offline with probability cfg.dropout per step; one coming back catches up first (the
    shared replica already holds those steps: the frames are decoded and counted, not applied)."""
    def bring_online(c: int) -> None:
        server.set_online(c, True)
        for frame in server.catch_up(c):
            decode(frame)

    for c in range(cfg.clients):
        online = unit(cfg.seed, _OFFLINE, step, c) >= cfg.dropout
        if online and c not in server.online:
            bring_online(c)
        elif not online:
            server.set_online(c, False)
    if not server.online:  # somebody must answer: the lowest id stays reachable
        bring_online(0)


def _batches(part: list[int], cfg: SimConfig, step: int, client: int, count: int) -> list[list[int]]:
    """A client's `count` batches of a step (one per local step), drawn with replacement from its examples by
    a generator seeded with (seed, step, client)."""
    drawn = np.random.default_rng([cfg.seed, step, client]).integers(0, len(part), cfg.batch * count)
    return [[part[i] for i in drawn[h * cfg.batch:(h + 1) * cfg.batch]] for h in range(count)]


def _projections(task, replica, strategy, step, batches, eps):
    """Each answering client's projection and mean loss at w +- eps z on its batch. With local steps (FedKSeed's
    H > 1) a client's H projections along its local ZO-SGD steps (client.local_steps) and its mean loss over them."""
    proj, losses = {}, {}
    model = replica.model
    if strategy.local_steps > 1:
        for c, client_batches in batches.items():
            closures = [lambda b=b: task.losses(model, task.batch(b)) for b in client_batches]
            proj[c], client_losses = local_steps(replica, strategy, step, c, closures)
            losses[c] = float(np.mean(client_losses))
        return proj, losses
    groups = [list(batches)] if strategy.shared_seed else [[c] for c in batches]
    for group in groups:
        seed = strategy.seed_for(step, group[0])
        indices = [i for c in group for i in batches[c][0]]
        plus, minus = replica.evaluate_pair(seed, lambda: task.losses(model, task.batch(indices)))
        if not (torch.isfinite(plus).all() and torch.isfinite(minus).all()):
            raise FloatingPointError(f"non-finite loss at step {step}; the weights were left unchanged")
        n = 0
        for c in group:
            k = len(batches[c][0])
            lp, lm = float(plus[n:n + k].mean()), float(minus[n:n + k].mean())
            proj[c], losses[c] = (lp - lm) / (2 * eps), (lp + lm) / 2
            n += k
    return proj, losses


def _mean_bytes(counter: ByteCounter, clients: int) -> dict:
    up = [counter.client(c, "up") for c in range(clients)]
    down = [counter.client(c, "down") for c in range(clients)]
    return dict(bytes_up=sum(u["bytes"] for u in up) / clients, bytes_down=sum(d["bytes"] for d in down) / clients,
                payload_bits_up=sum(u["payload_bits"] for u in up) / clients,
                payload_bits_down=sum(d["payload_bits"] for d in down) / clients)


def _summary(cfg, task, first, rows, counter, server, base_sha, final_sha, seconds) -> dict:
    # DP-FeedSign's server secret stays in the server's checkpoint: a summary is for anyone who reads the run
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "server_secret"}
    summary = summarize(config, task, first, rows, counter, cfg.clients, cfg.steps, seconds, base_sha, final_sha)
    for c in summary["clients"]:
        c["byzantine"] = c["client"] >= cfg.clients - cfg.byzantine
    summary.update(payload_bits_up_per_client_per_step=summary["payload_bits_up_per_client"] / cfg.steps,
                   payload_bits_down_per_client_per_step=summary["payload_bits_down_per_client"] / cfg.steps,
                   stragglers=server.stragglers)
    return summary


def summarize(config: dict, task, first, rows, counter, clients, steps, seconds, base_sha, final_sha) -> dict:
    """What summary.json holds for any run (zofed.sim and zofed.rounds): accuracies, bytes per client, hashes."""
    last, means = rows[-1], _mean_bytes(counter, clients)
    return dict(
        config=config, task=task.name, task_options=task.options,
        initial_accuracy=first["accuracy"], final_accuracy=last["accuracy"],
        gain_points=100 * (last["accuracy"] - first["accuracy"]),
        initial_test_loss=first["loss"], final_test_loss=last["test_loss"],
        bytes_up_per_client=means["bytes_up"], bytes_down_per_client=means["bytes_down"],
        payload_bits_up_per_client=means["payload_bits_up"], payload_bits_down_per_client=means["payload_bits_down"],
        clients=[dict(client=c, up=counter.client(c, "up"), down=counter.client(c, "down")) for c in range(clients)],
        steps=steps, seconds=seconds, base_sha256=base_sha, model_sha256=final_sha)
