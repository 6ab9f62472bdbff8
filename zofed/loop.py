"""The one run loop of zofed: metrics, evaluation cadence, atomic checkpoints, resume, summary, orbit and plots,
for every strategy (step strategies on any transport, zofed.sim; round-based ones, zofed.rounds). Imports no
torch: what needs the model sits behind an evaluator, and a run's own work behind a driver.

A driver (zofed.sim.StepDriver, zofed.rounds.RoundDriver) offers:
    name, clients, total, position      the run's name, client count, rounds' end and where it is (steps or rounds)
    unit                                "step" or "round" (what position counts)
    checkpoint, other                   its checkpoint's file name, and the other kind's (one kind per folder)
    config()                            the run's config (what resume compares; summary.json's "config"); its
                                        spec_version (the noise stream) is what the orbit records
    counter                             the ByteCounter of what crossed (a transport's)
    advance() -> row                    one round: its metrics row, without the evaluation fields
    save(path, common)                  write the checkpoint (common: the loop's fields, below) atomically
    load(path) -> checkpoint            read and verify it (load_checkpoint), the loop's fields among its keys
    restore(checkpoint)                 bring the run to it (verified), once the loop has checked it is this run's
    finish(summary)                     add its fields to the summary (and drop any private config field)
    orbit() -> (config, history) | str  what the orbit records, or why the run has none
    close()
An evaluator offers: base_sha256, evaluate() -> dict(accuracy, loss), sha256() (the model_sha256).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time

from zokernels import spec

from . import atomic

CHECKPOINT = "checkpoint.json"  # a step run's (sealed JSON: config, broadcasts, server state)
ROUND_CHECKPOINT = "checkpoint.pt"  # a round run's (FedMeZO, ZOWarmUp: weights, torch.save)
METRICS = "metrics.jsonl"
COMMON_KEYS = {"config", "task", "task_options", "base_sha256", "rows", "metrics_sha256", "seconds"}


def _spec_version(config: dict) -> int:
    """The noise spec version of a run: its config's; a round algorithm whose config has no such field runs its
    replicas on zofed.client.Replica's default, the library's."""
    return config.get("spec_version", spec.SPEC_VERSION)


def write_json(path: str, obj) -> None:
    atomic.write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


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


def load_checkpoint(path: str, read, keys=COMMON_KEYS) -> dict:
    """read(path), verified whole by its seal and holding `keys`; DamagedFileError saying what to do otherwise."""
    try:
        ck = read(path)
    except atomic.DamagedFileError as exc:
        raise cannot_resume(str(exc)) from None
    if not isinstance(ck, dict) or not keys <= set(ck):
        raise cannot_resume(f"{path} is not a checkpoint of this zofed version")
    return ck


def check_resumable(out: str, ck: dict, config: dict, task_name: str, task_options: dict, base_sha: str) -> None:
    """Refuse to resume `out` from checkpoint `ck` unless it was written by this config, task and base weights.
    A checkpoint written before run configs had a spec_version ran on version 1, the only stream there was."""
    old = {"spec_version": 1} if "spec_version" in config else {}
    here = dict(config, task=task_name, **{f"task.{k}": v for k, v in task_options.items()})
    there = dict({**old, **ck["config"]}, task=ck["task"], **{f"task.{k}": v for k, v in ck["task_options"].items()})
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


def mean_bytes(counter, clients: int) -> dict:
    up = [counter.client(c, "up") for c in range(clients)]
    down = [counter.client(c, "down") for c in range(clients)]
    return dict(bytes_up=sum(u["bytes"] for u in up) / clients, bytes_down=sum(d["bytes"] for d in down) / clients,
                payload_bits_up=sum(u["payload_bits"] for u in up) / clients,
                payload_bits_down=sum(d["payload_bits"] for d in down) / clients)


def summarize(config: dict, task_name, task_options, first, rows, counter, clients, steps, seconds, base_sha,
              final_sha) -> dict:
    """What summary.json holds for any run: accuracies, bytes per client, hashes."""
    last, means = rows[-1], mean_bytes(counter, clients)
    return dict(
        config=config, task=task_name, task_options=task_options,
        initial_accuracy=first["accuracy"], final_accuracy=last["accuracy"],
        gain_points=100 * (last["accuracy"] - first["accuracy"]),
        initial_test_loss=first["loss"], final_test_loss=last["test_loss"],
        bytes_up_per_client=means["bytes_up"], bytes_down_per_client=means["bytes_down"],
        payload_bits_up_per_client=means["payload_bits_up"], payload_bits_down_per_client=means["payload_bits_down"],
        clients=[dict(client=c, up=counter.client(c, "up"), down=counter.client(c, "down")) for c in range(clients)],
        steps=steps, seconds=seconds, base_sha256=base_sha, model_sha256=final_sha)


def say_resuming(out: str, unit: str, done: int, total: int) -> None:
    print(f"resuming {out} from {unit} {done} of {total}", file=sys.stderr)


def run(driver, evaluator, task_name: str, task_options: dict, *, out: str | None = None, progress: bool = True,
        checkpoint_every: int = 20, eval_every: int = 1) -> dict:
    """Run `driver` to its end; with `out`, write metrics.jsonl, checkpoints, orbit, summary.json and plots there
    and resume from them if present (bit-identical to an uninterrupted run). A round's row is evaluated when it
    reaches a multiple of eval_every or the end; a checkpoint is written likewise every checkpoint_every."""
    from tqdm import tqdm

    base_sha = evaluator.base_sha256

    def common(rows, metrics, seconds) -> dict:
        return dict(config=driver.config(), task=task_name, task_options=task_options, base_sha256=base_sha,
                    rows=len(rows), metrics_sha256=metrics.sha256.hexdigest(), seconds=seconds)

    def crossed(before: int, every: int) -> bool:
        return driver.position // every > before // every or driver.position == driver.total

    with contextlib.ExitStack() as stack:  # the folder stays locked until every output is written
        stack.callback(driver.close)
        if out:
            stack.enter_context(atomic.folder_lock(out))
        resuming = resumable(out, driver.checkpoint, driver.other)
        if resuming:
            ck = driver.load(os.path.join(out, driver.checkpoint))
            check_resumable(out, ck, driver.config(), task_name, task_options, base_sha)
            driver.restore(ck)
            rows, before = read_rows(out, ck["rows"], ck["metrics_sha256"]), ck["seconds"]
            say_resuming(out, driver.unit, driver.position, driver.total)
        else:
            ev = evaluator.evaluate()
            rows, before = [dict(step=0, accuracy=ev["accuracy"], test_loss=ev["loss"], bytes_up=0, bytes_down=0)], 0.0
        first = dict(accuracy=rows[0]["accuracy"], loss=rows[0]["test_loss"])
        t0 = time.perf_counter()
        metrics = None
        if out:
            metrics = MetricsLog(out, rows)
            stack.callback(metrics.close)
            if not resuming:
                driver.save(os.path.join(out, driver.checkpoint), common(rows, metrics, 0.0))
        bar = stack.enter_context(tqdm(total=driver.total, initial=driver.position,
                                       desc=f"{driver.name} x{driver.clients}", disable=not progress))
        while driver.position < driver.total:
            start = driver.position
            row = driver.advance()
            if crossed(start, eval_every):
                ev = evaluator.evaluate()
                row.update(accuracy=ev["accuracy"], test_loss=ev["loss"], **mean_bytes(driver.counter, driver.clients))
                bar.set_postfix(acc=f"{100 * ev['accuracy']:.1f}%")
            rows.append(row)
            if metrics:
                metrics.append(row)
                if crossed(start, checkpoint_every):
                    driver.save(os.path.join(out, driver.checkpoint),
                                common(rows, metrics, before + time.perf_counter() - t0))
            bar.update(driver.position - start)
        seconds = before + time.perf_counter() - t0
        summary = summarize(driver.config(), task_name, task_options, first, rows, driver.counter, driver.clients,
                            driver.total, seconds, base_sha, evaluator.sha256())
        driver.finish(summary)
        if out:
            from . import orbit as orbits

            orbit = driver.orbit()
            if isinstance(orbit, str):
                summary.update(orbit=None, no_orbit=orbit)
            else:
                config, history = orbit
                orbits.save(os.path.join(out, "orbit"), orbits.Orbit(config, base_sha, summary["model_sha256"],
                                                                      history, _spec_version(driver.config())))
                summary["orbit_bytes"] = os.path.getsize(os.path.join(out, "orbit"))
            write_json(os.path.join(out, "summary.json"), summary)
            from .plots import plot_run

            plot_run(rows, out, title=f"{driver.name}, {driver.clients} clients")
    return summary
