"""The simulator's driver for round-based algorithms (FedMeZO, ZOWarmUp): the same outputs as zofed.sim
(metrics.jsonl, summary.json, plots, an orbit where the run has one) and the same resumption.

An algorithm offers: task, cfg (a dataclass with rounds, eval_every, seed), name, counter (ByteCounter),
round, step() -> a metrics row, state_dict() / load_state_dict() (tensors and plain data), close(),
and orbit_history() -> a wire message of its broadcasts, or None with `no_orbit` saying why.

Unlike the step simulator, whose state is rebuilt from the seed history, these runs checkpoint their
weights (FedMeZO's dense average and ZOWarmUp's warm-up are not seed sums): `checkpoint.pt`, written
atomically every `checkpoint_every` rounds, sealed with its sha256 (zofed.atomic), and loaded with
torch.load(weights_only=True).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pickle
import time

import torch

from . import atomic
from . import orbit as orbits
from .client import weights_sha256
from .sim import (CHECKPOINT, MetricsLog, _mean_bytes, _write_json, check_resumable, load_checkpoint, read_rows,
                  resumable, say_resuming, summarize)
from .sim import ROUND_CHECKPOINT as STATE


def _config(algo) -> dict:
    return dict(dataclasses.asdict(algo.cfg), strategy=algo.name)


def _save_state(out, algo, base_sha, rows, metrics, seconds) -> None:
    buf = io.BytesIO()
    torch.save(dict(config=_config(algo), task=algo.task.name, task_options=algo.task.options, base_sha256=base_sha,
                    rows=len(rows), metrics_sha256=metrics.sha256.hexdigest(), seconds=seconds,
                    state=algo.state_dict()), buf)
    atomic.write_sealed(os.path.join(out, STATE), buf.getvalue())


def _load_state(path: str):
    data = atomic.read_sealed(path)
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except (RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as exc:  # sealed, yet not torch's
        raise atomic.DamagedFileError(f"{path} is not a readable checkpoint ({exc})") from None


def _resume(out, algo, base_sha) -> tuple[list, float]:
    ck = load_checkpoint(os.path.join(out, STATE), _load_state)
    check_resumable(out, ck, _config(algo), algo.task, base_sha)
    rows = read_rows(out, ck["rows"], ck["metrics_sha256"])
    algo.load_state_dict(ck["state"])
    return rows, ck["seconds"]


def run(algo, out: str | None = None, progress: bool = True, checkpoint_every: int = 20) -> dict:
    """Run `algo` to its last round; with `out`, write the outputs there and resume from them if present."""
    from tqdm import tqdm

    task, cfg = algo.task, algo.cfg
    base_sha = weights_sha256(task.model)
    with contextlib.ExitStack() as stack:  # the folder stays locked until every output is written
        stack.callback(algo.close)
        if out:
            stack.enter_context(atomic.folder_lock(out))
        resuming = resumable(out, STATE, CHECKPOINT)
        if resuming:
            rows, before = _resume(out, algo, base_sha)
            say_resuming(out, "round", algo.round, cfg.rounds)
        else:
            ev = task.evaluate(task.model)
            rows, before = [dict(step=0, accuracy=ev["accuracy"], test_loss=ev["loss"], bytes_up=0, bytes_down=0)], 0.0
        first = dict(accuracy=rows[0]["accuracy"], loss=rows[0]["test_loss"])
        t0 = time.perf_counter()
        metrics = None
        if out:
            metrics = MetricsLog(out, rows)
            stack.callback(metrics.close)
            if not resuming:
                _save_state(out, algo, base_sha, rows, metrics, 0.0)
        bar = stack.enter_context(tqdm(total=cfg.rounds, initial=algo.round, desc=f"{algo.name} x{cfg.clients}",
                                       disable=not progress))
        while algo.round < cfg.rounds:
            row = algo.step()
            if algo.round % cfg.eval_every == 0 or algo.round == cfg.rounds:
                ev = task.evaluate(task.model)
                row.update(accuracy=ev["accuracy"], test_loss=ev["loss"], **_mean_bytes(algo.counter, cfg.clients))
                bar.set_postfix(acc=f"{100 * ev['accuracy']:.1f}%")
            rows.append(row)
            if metrics:
                metrics.append(row)
                if algo.round % checkpoint_every == 0 or algo.round == cfg.rounds:
                    _save_state(out, algo, base_sha, rows, metrics, before + time.perf_counter() - t0)
            bar.update(1)
        seconds = before + time.perf_counter() - t0
        final_sha = weights_sha256(task.model)
        summary = summarize(_config(algo), task, first, rows, algo.counter, cfg.clients, cfg.rounds, seconds, base_sha,
                            final_sha)
        if out:
            history = algo.orbit_history()
            if history is None:
                summary.update(orbit=None, no_orbit=algo.no_orbit)
            else:
                config = dict(strategy=algo.name, strategy_options={}, lr=0.0, eps=cfg.eps, dist=algo.dist,
                              run_seed=cfg.seed, steps=cfg.rounds, task=task.name, task_options=task.options)
                orbits.save(os.path.join(out, "orbit"), orbits.Orbit(config, base_sha, final_sha, history))
                summary["orbit_bytes"] = os.path.getsize(os.path.join(out, "orbit"))
            _write_json(os.path.join(out, "summary.json"), summary)
            from .plots import plot_run

            plot_run(rows, out, title=f"{algo.name}, {cfg.clients} clients")
    return summary
