"""zofed.rounds, the driver of FedMeZO and ZOWarmUp runs: kill -9 and resume bit-identically, refuse what does
not match, write an orbit where the run has one (FedMeZO seed replay) and say why not otherwise."""

import os
import signal
import subprocess
import sys
import time

import pytest

import fedtoy  # noqa: F401  (registers the "toy" task)
from zofed import atomic, orbit, rounds, sim, tasks
from zofed.strategies import FedMeZO, FedMeZOConfig, ZOWarmUp, ZOWarmUpConfig

RUNS = {
    # FedAdam in both phases: its moments are part of the checkpoint; the kills land in both phases
    "zowarmup": (ZOWarmUp, ZOWarmUpConfig, dict(clients=10, high_fraction=0.3, warmup_rounds=40, zo_rounds=60,
                                                server_opt="fedadam", server_lr=0.02, participation=0.7,
                                                dirichlet=0.5, eval_every=9, seed=2)),
    # personalized rates: the heterogeneity signals' history is part of the checkpoint
    "fedmezo": (FedMeZO, FedMeZOConfig, dict(clients=3, rounds=40, local_steps=5, lr=0.05, batch=8, alpha=0.5,
                                             signal="five-round-loss", dirichlet=0.5, eval_every=4, seed=3)),
}
CHILD = """
import sys
sys.path.insert(0, {tests!r})
import fedtoy
from zofed import rounds, tasks
from zofed.strategies import {algo}, {config}
rounds.run({algo}(tasks.build("toy"), {config}(**{cfg!r})), out={out!r}, progress=False, checkpoint_every=3)
"""


def _make(name, **over):
    algo, config, cfg = RUNS[name]
    return algo(tasks.build("toy"), config(**dict(cfg, **over)))


def _done(out) -> int:
    try:
        return rounds._load_state(os.path.join(out, rounds.STATE))["state"]["round"]
    except (OSError, atomic.DamagedFileError):
        return -1


def _kill_after(name, out, at):
    algo, config, cfg = RUNS[name]
    code = CHILD.format(tests=os.path.dirname(__file__), algo=algo.__name__, config=config.__name__, cfg=cfg,
                        out=str(out))
    child = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and _done(out) < at:
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    return _done(out)


def _files(out):
    return {n: (out / n).read_bytes() for n in ("metrics.jsonl", "orbit") if (out / n).exists()}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_kill_9_and_resume_is_bit_identical(tmp_path, name):
    whole = rounds.run(_make(name), out=str(tmp_path / "whole"), progress=False)
    out = tmp_path / "killed"
    total = _make(name).cfg.rounds
    first = _kill_after(name, out, 12)
    assert 12 <= first < total, "the child finished before it could be killed"
    second = _kill_after(name, out, max(first + 3, 27 if name == "fedmezo" else 50))  # again; ZOWarmUp: in ZO
    assert first < second < total
    resumed = rounds.run(_make(name), out=str(out), progress=False)
    assert resumed["model_sha256"] == whole["model_sha256"] != resumed["base_sha256"]
    assert resumed["clients"] == whole["clients"]  # byte counters continued exactly
    assert _files(out) == _files(tmp_path / "whole") and "metrics.jsonl" in _files(out)
    again = rounds.run(_make(name), out=str(out), progress=False)  # finished: nothing to do, nothing changes
    assert again["model_sha256"] == whole["model_sha256"] and _files(out) == _files(tmp_path / "whole")


def test_resume_refuses_what_does_not_match(tmp_path):
    rounds.run(_make("zowarmup", warmup_rounds=2, zo_rounds=2), out=str(tmp_path / "a"), progress=False)
    with pytest.raises(ValueError, match="zo_lr: 0.0001 there, 0.05 here"):
        rounds.run(_make("zowarmup", warmup_rounds=2, zo_rounds=2, zo_lr=0.05), out=str(tmp_path / "a"),
                   progress=False)
    sim.run(tasks.build("toy"), sim.SimConfig(clients=3, steps=2, lr=0.05), out=str(tmp_path / "b"), progress=False)
    with pytest.raises(ValueError, match="another strategy"):
        rounds.run(_make("fedmezo", rounds=2), out=str(tmp_path / "b"), progress=False)
    with pytest.raises(ValueError, match="another strategy"):
        sim.run(tasks.build("toy"), sim.SimConfig(clients=3, steps=2, lr=0.05), out=str(tmp_path / "a"),
                progress=False)
    (tmp_path / "a" / rounds.STATE).write_bytes(b"\x00garbage")
    with pytest.raises(atomic.DamagedFileError, match="checkpoint.pt is damaged"):
        rounds.run(_make("zowarmup", warmup_rounds=2, zo_rounds=2), out=str(tmp_path / "a"), progress=False)


def test_fedmezo_orbit_replays_seed_runs_and_dense_runs_say_why_not(tmp_path):
    seeds = rounds.run(_make("fedmezo", rounds=6), out=str(tmp_path / "s"), progress=False)
    task = orbit.replay(orbit.load(tmp_path / "s" / "orbit"), chunk=7)
    from zofed.client import weights_sha256

    assert weights_sha256(task.model) == seeds["model_sha256"]
    assert seeds["orbit_bytes"] == (tmp_path / "s" / "orbit").stat().st_size
    dense = rounds.run(_make("fedmezo", rounds=6, encoding="dense"), out=str(tmp_path / "d"), progress=False)
    assert dense["orbit"] is None and "not a sum of seeded updates" in dense["no_orbit"]
    assert not (tmp_path / "d" / "orbit").exists()
    # the toy model is 83 weights, so dense is small too; still the seed replay's upload is smaller
    assert seeds["bytes_up_per_client"] < dense["bytes_up_per_client"]
