"""One run at a time writes a folder: a second run on a folder another process is writing is refused (and
touches nothing there); the lock goes with its process, even one killed with kill -9."""

import subprocess
import sys

import pytest

import fedtoy  # noqa: F401  (registers the "toy" task)
from zofed import atomic, rounds, sim, tasks
from zofed.strategies import FedMeZO, FedMeZOConfig

HOLDER = """
import sys
from zofed import atomic
with atomic.folder_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()  # hold it until the test closes our stdin (or kills us)
"""
CFG = dict(clients=3, steps=6, lr=0.05, eval_every=3)


@pytest.fixture
def held(tmp_path):
    """tmp_path/run, locked by another process, as a run in progress locks it."""
    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline() == "locked\n"
    yield out, child
    child.kill()
    child.wait()


def _sim(out):
    return sim.run(tasks.build("toy"), sim.SimConfig(**CFG), out=str(out), progress=False)


def test_a_second_run_is_refused_and_writes_nothing(held):
    out, child = held
    with pytest.raises(atomic.FolderInUseError, match=f"{out} is in use by another zofed run"):
        _sim(out)
    with pytest.raises(atomic.FolderInUseError, match="use another --out"):
        rounds.run(FedMeZO(tasks.build("toy"), FedMeZOConfig(clients=3, rounds=2, local_steps=2)), out=str(out),
                   progress=False)
    assert [p.name for p in out.iterdir()] == [".lock"]
    child.stdin.close()  # the other run ends: its lock goes with it
    child.wait()
    assert _sim(out)["steps"] == 6 and (out / "summary.json").exists()


def test_a_killed_run_leaves_no_lock_behind(held):
    out, child = held
    child.kill()  # SIGKILL: no cleanup code runs, the OS drops the lock
    child.wait()
    assert _sim(out)["steps"] == 6
