"""The simulator's driver for round-based algorithms (FedMeZO, ZOWarmUp): the same outputs as zofed.sim
(metrics.jsonl, summary.json, plots, an orbit where the run has one) and the same resumption.

An algorithm offers: task, cfg (a dataclass with rounds, eval_every, seed), name, counter (ByteCounter),
round, step() -> a metrics row, state_dict() / load_state_dict() (tensors and plain data), close(),
and orbit_history() -> a wire message of its broadcasts, or None with `no_orbit` saying why.

Unlike the step simulator, whose state is rebuilt from the seed history, these runs checkpoint their
weights (FedMeZO's dense average and ZOWarmUp's warm-up are not seed sums): `checkpoint.pt`, written
atomically every `checkpoint_every` rounds and loaded with torch.load(weights_only=True).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import time

import torch

from . import atomic
from . import orbit as orbits
from .client import weights_sha256
from .sim import CHECKPOINT, _mean_bytes, _write_json, _write_lines, check_resumable, read_rows, summarize
from .sim import ROUND_CHECKPOINT as STATE


def _config(algo) -> dict:
    return dict(dataclasses.asdict(algo.cfg), strategy=algo.name)


def _save_state(out, algo, base_sha, rows, seconds) -> None:
    buf = io.BytesIO()
    torch.save(dict(config=_config(algo), task=algo.task.name, task_options=algo.task.options, base_sha256=base_sha,
                    rows=len(rows), seconds=seconds, state=algo.state_dict()), buf)
    atomic.write_bytes(os.path.join(out, STATE), buf.getvalue())


def _resume(out, algo, base_sha) -> tuple[list, float]:
    try:
        ck = torch.load(os.path.join(out, STATE), weights_only=True)
        if not isinstance(ck, dict) or not {"config", "task", "task_options", "base_sha256"} <= set(ck):
            raise KeyError("not a zofed round checkpoint")
    except (RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as exc:  # a damaged file
        raise RuntimeError(f"{out}/{STATE} is not a readable checkpoint ({exc}); delete it to start over") from None
    check_resumable(out, ck, _config(algo), algo.task, base_sha)
    algo.load_state_dict(ck["state"])
    return read_rows(out, ck["rows"]), ck["seconds"]


def run(algo, out: str | None = None, progress: bool = True, checkpoint_every: int = 20) -> dict:
    """Run `algo` to its last round; with `out`, write the outputs there and resume from them if present."""
    from tqdm import tqdm

    task, cfg = algo.task, algo.cfg
    base_sha = weights_sha256(task.model)
    if out and os.path.exists(os.path.join(out, CHECKPOINT)):
        raise ValueError(f"{out} holds a run of another strategy (it has {CHECKPOINT}); use another --out folder")
    resuming = bool(out) and os.path.exists(os.path.join(out, STATE))
    if resuming:
        rows, before = _resume(out, algo, base_sha)
    else:
        ev = task.evaluate(task.model)
        rows, before = [dict(step=0, accuracy=ev["accuracy"], test_loss=ev["loss"], bytes_up=0, bytes_down=0)], 0.0
    first = dict(accuracy=rows[0]["accuracy"], loss=rows[0]["test_loss"])
    t0 = time.perf_counter()
    metrics = None
    try:
        if out:
            os.makedirs(out, exist_ok=True)
            path = os.path.join(out, "metrics.jsonl")
            _write_lines(path, rows)  # on resume this drops lines written after the checkpoint: they come again
            metrics = open(path, "a")
            if not resuming:
                _save_state(out, algo, base_sha, rows, 0.0)
        with tqdm(total=cfg.rounds, initial=algo.round, desc=f"{algo.name} x{cfg.clients}", disable=not progress) as bar:
            while algo.round < cfg.rounds:
                row = algo.step()
                if algo.round % cfg.eval_every == 0 or algo.round == cfg.rounds:
                    ev = task.evaluate(task.model)
                    row.update(accuracy=ev["accuracy"], test_loss=ev["loss"], **_mean_bytes(algo.counter, cfg.clients))
                    bar.set_postfix(acc=f"{100 * ev['accuracy']:.1f}%")
                rows.append(row)
                if metrics:
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                    if algo.round % checkpoint_every == 0 or algo.round == cfg.rounds:
                        _save_state(out, algo, base_sha, rows, before + time.perf_counter() - t0)
                bar.update(1)
    finally:
        if metrics:
            metrics.close()
        algo.close()
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
