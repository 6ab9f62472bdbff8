"""The torch.distributed transport: rank 0 here, the clients on ranks it starts itself (gloo, 127.0.0.1).
One child process per module runs every scenario (tests/transport_torchdist_scenarios.py)."""

import json
import os
import pathlib
import time

import pytest
from conftest import torchrun

from zofed.transports import torchdist

HERE = pathlib.Path(__file__).parent


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchdist")
    torchrun(HERE / "transport_torchdist_scenarios.py", out, str(out), nproc=1, timeout=400)
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("strategy", ["feedsign", "zo-fedsgd", "fedkseed"])
def test_same_model_and_bytes_as_inproc(scenarios, strategy):
    """4 clients, 24 steps, B = 4, on 2 processes (all clients on rank 1) and in-process."""
    here, there = scenarios[strategy]["inproc"], scenarios[strategy]["torchdist"]
    assert there["model_sha256"] == here["model_sha256"]
    assert there["clients"] == here["clients"]  # every client's bytes and payload bits, both ways


def test_clients_that_drop_out_come_back_bit_identical(scenarios):
    """Dropouts (hashed from the run's seed) on 3 processes, noise spec version 2: the run equals in-process, and
    every client's replica at the end is bit for bit the run's model at the step it reached (replayed from the
    orbit), those that missed rounds and caught up included."""
    run = scenarios["dropout"]
    assert run["model_sha256"] == run["inproc"]["model_sha256"] and run["clients"] == run["inproc"]["clients"]
    assert sorted(run["replicas"]) == ["0", "1", "2", "3"]
    for step, digest in run["replicas"].values():
        assert digest == run["by_step"][str(step)]
    answered = {str(c["client"]): c["up"]["messages"] for c in run["clients"]}
    B = 4
    assert any(answered[c] < step // B for c, (step, _) in run["replicas"].items())  # holds rounds it missed


def test_a_rank_that_fails_ends_the_run_with_its_error_and_every_rank_stops(scenarios):
    assert "torchdist rank 1: ValueError: unknown task 'no-such-task'" in scenarios["refused"]
    assert scenarios["children_left"] == 0


@pytest.mark.parametrize("processes", [1, 0, "2", True])
def test_processes_must_be_two_or_more(processes):
    with pytest.raises(ValueError, match="--processes must be an integer >= 2"):
        torchdist.open(dict(processes=processes))


def test_the_launcher_kills_what_its_script_left_behind(tmp_path):
    """conftest.torchrun stops the script's whole process group even when the script itself exited cleanly
    (a rank or a child it started and did not stop must not outlive the test)."""
    script = tmp_path / "leaves_a_child.py"
    script.write_text("import subprocess, sys\n"
                      "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                      "print(child.pid)\n")
    pid = int(torchrun(script, tmp_path, nproc=1, timeout=60).split()[-1])
    # not our child (the script's): watch /proc until the kill lands, a bounded wait
    for _ in range(100):
        try:
            if pathlib.Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return  # killed, not yet reaped by its new parent
        except FileNotFoundError:
            return  # killed and reaped
        time.sleep(0.05)
    raise AssertionError(f"process {pid} left behind by the script is still running")
