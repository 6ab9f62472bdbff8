"""The Flower transport on real SuperLink / SuperNode processes (127.0.0.1, insecure: nothing leaves the
machine). One deployment per module (4 SuperNodes) runs two runs: the acceptance run, compared with the
in-process one, and a run with a real fault (a SuperNode killed mid-run, restarted after a round closed on
its deadline). Every process is stopped when the module ends, also when a test fails; each wait is bounded."""

import json
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("flwr")
pytestmark = pytest.mark.slow  # real Flower processes: seconds per message (README: transports)

import fedtoy  # noqa: E402,F401 (registers the "toy" task; the SuperNodes import it too)
from zofed import sim, tasks  # noqa: E402
from zofed.configs import SimConfig  # noqa: E402
from zofed.transports import flower  # noqa: E402

ACCEPTANCE = dict(strategy="feedsign", clients=4, steps=24, steps_per_round=4, lr=0.05, eval_every=24)
FAULT = dict(strategy="feedsign", clients=3, steps=12, steps_per_round=4, lr=0.05, eval_every=12)
KILLED, DEADLINE_S = 2, 30.0  # the fault run's rounds close 30 s after they start without the killed client


def _rows(path) -> list:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return []


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("flower")
    got = {}
    with flower.Deployment(str(out / "deploy"), 4) as d:
        got["home"] = d.env["FLWR_HOME"]
        got["acceptance"] = flower.run_on(d, tasks.build("toy"), SimConfig(**ACCEPTANCE), str(out / "acceptance"),
                                          timeout_s=500)
        fault = out / "fault"
        proc = d.submit(flower.app_config(tasks.build("toy"), SimConfig(**FAULT), str(fault), DEADLINE_S))
        end, killed, restarted = time.monotonic() + 500, None, False
        while proc.poll() is None:
            assert time.monotonic() < end, d.tail("flwr-run")
            rows = _rows(fault / "metrics.jsonl")
            if killed is None and len(rows) >= 2:  # round 1 done
                d.kill_node(KILLED)
                killed = len(rows)
            if killed is not None and not restarted and len(rows) > killed:  # a round closed without it
                d.start_node(KILLED)
                restarted = True
            time.sleep(0.2)
        assert restarted, d.tail("flwr-run")
        assert (fault / "replicas.json").exists(), d.tail("flwr-run")
        got["fault_rows"] = _rows(fault / "metrics.jsonl")
        got["fault_replicas"] = json.loads((fault / "replicas.json").read_text())
        got["acceptance_replicas"] = json.loads((out / "acceptance" / "replicas.json").read_text())
    got["inproc"] = sim.run(tasks.build("toy"), SimConfig(**ACCEPTANCE), str(out / "inproc"), progress=False)
    return got


def test_same_model_and_bytes_as_inproc(runs):
    a, b = runs["acceptance"], runs["inproc"]
    assert a["model_sha256"] == b["model_sha256"]
    assert a["clients"] == b["clients"]  # every client's bytes and payload bits, both ways
    replicas = runs["acceptance_replicas"]
    assert sorted(replicas) == ["0", "1", "2", "3"]
    assert len({(r["step"], r["digest"]) for r in replicas.values()}) == 1 and replicas["0"]["step"] == 24


def test_a_killed_supernode_misses_rounds_then_catches_up_bit_identically(runs):
    assert any(r.get("answered", 3) < 3 for r in runs["fault_rows"][1:])  # a round closed on its deadline
    replicas = runs["fault_replicas"]
    assert sorted(replicas) == ["0", "1", "2"]
    assert len({(r["step"], r["digest"]) for r in replicas.values()}) == 1 and replicas["0"]["step"] == 12


def test_every_process_is_stopped(runs):
    """Nothing left that runs with the deployment's FLWR_HOME (every process it started, and theirs, has it)."""
    mark = f"FLWR_HOME={runs['home']}".encode()
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if mark in f.read().split(b"\0"):
                    left.append(pid)
        except OSError:
            pass
    assert not left


def test_the_serverapp_and_launcher_import_no_torch():
    code = ("import sys, zofed.transports.flower_server, zofed.transports.flower; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
