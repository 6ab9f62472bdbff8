"""Resumable runs: kill -9 at any point, run the same thing again, end bit-identical; nothing written is lost."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import fedtoy  # noqa: F401  (registers the "toy" task)
from zofed import atomic, sim, tasks

CFG = dict(strategy="fedkseed", clients=4, steps=300, lr=0.05, batch=8, eval_every=25, seed=3, dropout=0.2,
           pool_size=16)
CHILD = """
import sys
sys.path.insert(0, {tests!r})
import fedtoy
from zofed import sim, tasks
sim.run(tasks.build("toy"), sim.SimConfig(**{cfg!r}), out={out!r}, progress=False, checkpoint_every=7)
"""


def _files(out):
    return {name: open(os.path.join(out, name), "rb").read() for name in ("metrics.jsonl", "orbit")}


def _kill_after(out, step):
    """Start the run in a child process and kill -9 it once its checkpoint has passed `step`."""
    code = CHILD.format(tests=os.path.dirname(__file__), cfg=CFG, out=str(out))
    child = subprocess.Popen([sys.executable, "-c", code])
    path = os.path.join(out, sim.CHECKPOINT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                if json.load(f)["content"]["step"] >= step:  # a sealed JSON file (zofed.atomic)
                    break
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with open(path) as f:
        return json.load(f)["content"]["step"]


def test_kill_9_and_resume_is_bit_identical(tmp_path):
    whole = sim.run(tasks.build("toy"), sim.SimConfig(**CFG), out=str(tmp_path / "whole"), progress=False)
    out = tmp_path / "killed"
    first = _kill_after(out, 60)
    assert 60 <= first < CFG["steps"], "the child finished before it could be killed"
    second = _kill_after(out, first + 50)  # the same command again, killed again
    assert first < second < CFG["steps"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= second + 1  # what was written is still there
    resumed = sim.run(tasks.build("toy"), sim.SimConfig(**CFG), out=str(out), progress=False)
    assert resumed["model_sha256"] == whole["model_sha256"]
    assert resumed["clients"] == whole["clients"]  # byte counters continued exactly
    assert _files(out) == _files(tmp_path / "whole")
    again = sim.run(tasks.build("toy"), sim.SimConfig(**CFG), out=str(out), progress=False)  # finished: no-op
    assert again["model_sha256"] == whole["model_sha256"] and _files(out) == _files(tmp_path / "whole")


def test_resume_refuses_another_config(tmp_path):
    cfg = dict(CFG, steps=20)
    sim.run(tasks.build("toy"), sim.SimConfig(**cfg), out=str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="lr: 0.05 there, 0.01 here"):
        sim.run(tasks.build("toy"), sim.SimConfig(**dict(cfg, lr=0.01)), out=str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="task.hidden: 8 there, 9 here"):
        sim.run(tasks.build("toy", hidden=9), sim.SimConfig(**cfg), out=str(tmp_path), progress=False)
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 20  # untouched by the refusals


def test_a_failed_write_leaves_the_old_file_and_no_tmp(tmp_path, monkeypatch):
    path = tmp_path / "f"
    atomic.write_bytes(str(path), b"old")
    (tmp_path / "folder").mkdir()
    with pytest.raises(OSError):  # os.replace onto a folder
        atomic.write_bytes(str(tmp_path / "folder"), b"new")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        atomic.write_bytes(str(path), b"new")
    assert path.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["f", "folder"]
