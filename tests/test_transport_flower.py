"""The Flower transport on real SuperLink / SuperNode processes (127.0.0.1, insecure: nothing leaves the
machine). One launcher process (this module run as a script) holds one deployment (4 SuperNodes) for the
module and runs on it: the acceptance run, compared with the in-process one; a run with a real fault (a SuperNode
killed mid-run, restarted after a round closed on its deadline); then a long run, during which the test SIGKILLs
the launcher: every Flower process must die with it. Each wait is bounded, and the test kills whatever is left
of the deployment, also when it fails."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("flwr")
pytestmark = pytest.mark.slow  # real Flower processes: seconds per message (README: transports)

import fedtoy  # noqa: E402,F401 (registers the "toy" task; the SuperNodes import it too)
from zofed import sim, tasks  # noqa: E402
from zofed.configs import SimConfig  # noqa: E402
from zofed.transports import children, flower  # noqa: E402

# B = 8: three rounds (README's acceptance uses B = 4; any B gives in-process's bits, B only sets the round count)
ACCEPTANCE = dict(strategy="feedsign", clients=4, steps=24, steps_per_round=8, lr=0.05, eval_every=24)
# three rounds: killed after the first, restarted once the second closed without it, in time for the third or the
# checksums after it (the ServerApp does not wait for a node that is not connected when the run ends)
FAULT = dict(strategy="feedsign", clients=3, steps=12, steps_per_round=4, lr=0.05, eval_every=12)
LONG = dict(strategy="feedsign", clients=4, steps=10_000, steps_per_round=1, lr=0.05, eval_every=10_000)
KILLED, DEADLINE_S = 2, 30.0  # the fault run's rounds close 30 s after they start without the killed client (a shorter
# deadline misses live clients too on a loaded machine: messages then queue on the SuperNodes)
TIMEOUT_S = 600  # the launcher's scenarios, at most


def _rows(path) -> list:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return []


def _json(path: str):
    with open(path) as f:
        return json.load(f)


def scenarios(out: str) -> None:
    """The launcher: the acceptance and fault runs on one deployment, their results in out/results.json, then a
    long run; it waits to be killed (and stops the deployment itself if nobody does within TIMEOUT_S)."""
    with flower.Deployment(os.path.join(out, "deploy"), 4) as d:
        got = {"home": d.env["FLWR_HOME"]}
        got["acceptance"] = flower.run_on(d, tasks.build("toy"), SimConfig(**ACCEPTANCE),
                                          os.path.join(out, "acceptance"), timeout_s=TIMEOUT_S)
        got["acceptance_replicas"] = _json(os.path.join(out, "acceptance", "replicas.json"))
        fault = os.path.join(out, "fault")
        proc = d.submit(flower.app_config(tasks.build("toy"), SimConfig(**FAULT), fault, DEADLINE_S))
        end, killed, restarted = time.monotonic() + TIMEOUT_S, None, False
        while proc.poll() is None:
            assert time.monotonic() < end, d.tail("flwr-run")
            rows = _rows(os.path.join(fault, "metrics.jsonl"))
            if killed is None and len(rows) >= 2:  # round 1 done
                d.kill_node(KILLED)
                killed = len(rows)
                left = children.marked(f"{d.children.token}/node{KILLED}")  # its SuperExec and ClientApps too
                assert not left, f"processes of the killed SuperNode left: {left}"
            if killed is not None and not restarted and len(rows) > killed:  # a round closed without it
                d.start_node(KILLED)
                restarted = True
            time.sleep(0.2)
        assert restarted, d.tail("flwr-run")
        got["fault_rows"] = _rows(os.path.join(fault, "metrics.jsonl"))
        got["fault_replicas"] = _json(os.path.join(fault, "replicas.json"))
        d.submit(flower.app_config(tasks.build("toy"), SimConfig(**LONG), os.path.join(out, "long")))
        with open(os.path.join(out, "results.json.tmp"), "w") as f:
            json.dump(got, f)
        os.replace(os.path.join(out, "results.json.tmp"), os.path.join(out, "results.json"))
        time.sleep(TIMEOUT_S)


def flower_processes(home: str) -> dict[int, str]:
    """pid -> command line of every process that runs with the deployment's FLWR_HOME (every process it
    started, and theirs, has it)."""
    mark, found = f"FLWR_HOME={home}".encode(), {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if mark in f.read().split(b"\0"):
                    with open(f"/proc/{pid}/cmdline", "rb") as g:
                        found[int(pid)] = g.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            pass
    return found


def _wait(what: str, ready, launcher: subprocess.Popen, log: str, timeout_s: float):
    end = time.monotonic() + timeout_s
    while not (got := ready()):
        if launcher.poll() is not None or time.monotonic() > end:
            with open(log, "rb") as f:
                tail = f.read()[-4000:].decode(errors="replace")
            pytest.fail(f"{what}: not within {timeout_s:.0f} s (launcher exit code {launcher.poll()}); its log ends:\n"
                        f"{tail}")
        time.sleep(0.2)
    return got


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("flower")
    log = str(out / "launcher.log")
    with open(log, "wb") as f:
        launcher = subprocess.Popen([sys.executable, __file__, str(out)], stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
    home = None
    try:
        results = out / "results.json"
        _wait("the launcher's results", results.exists, launcher, log, TIMEOUT_S)
        got = json.loads(results.read_text())
        home = got["home"]
        got["mid_run"] = _wait("a ClientApp of the long run", lambda: [c for c in flower_processes(home).values()
                                                                        if "flwr-clientapp" in c], launcher, log, 120)
        launcher.kill()  # SIGKILL: no finally, no atexit in the launcher
        launcher.wait()
        end = time.monotonic() + 30
        while flower_processes(home) and time.monotonic() < end:
            time.sleep(0.2)
        got["left"] = flower_processes(home)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        if home is not None:
            for pid in flower_processes(home):  # what the launcher's reaper missed: this test must not leave it
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
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


def test_a_sigkilled_launcher_leaves_no_flower_process(runs):
    assert runs["mid_run"]  # killed while a ClientApp ran (and the SuperLink, SuperNodes, SuperExecs, ServerApp)
    assert runs["left"] == {}


def test_the_serverapp_and_launcher_import_no_torch():
    code = ("import sys, zofed.transports.flower_server, zofed.transports.flower; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# zofed.transports.children without Flower: a child that starts a process in a session of its own (as Flower's
# SuperLink and SuperNode do) and stays, and one that leaves its orphan behind

SPAWN = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
         "start_new_session=True); time.sleep(120 if sys.argv[1] == 'stay' else 0)")
LAUNCHER = ("import sys, time; from zofed.transports.children import Children; c = Children(); "
            "[c.start(how, [sys.executable, '-c', sys.argv[2], how], log=sys.argv[1]) for how in ('stay', 'leave')]; "
            "print(c.token, flush=True); time.sleep(120)")


def _three_up(token: str) -> None:
    """Wait until "stay" and the two processes started in sessions of their own run (one orphaned)."""
    end = time.monotonic() + 60
    while len(children.marked(f"{token}/")) < 3:
        assert time.monotonic() < end, "the children did not start their processes"
        time.sleep(0.05)


def test_stopping_children_stops_what_they_started_in_other_sessions(tmp_path):
    c = children.Children()
    try:
        for how in ("stay", "leave"):
            c.start(how, [sys.executable, "-c", SPAWN, how], log=str(tmp_path / "log"))
        _three_up(c.token)
        c.stop(grace_s=1)
        assert children.marked(f"{c.token}/") == [] and c.reaper is None
    finally:
        children.kill_marked(f"{c.token}/")


def test_a_sigkilled_launcher_leaves_none_of_its_children(tmp_path):
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path / "log"), SPAWN],
                                stdout=subprocess.PIPE, start_new_session=True)
    token = None
    try:
        token = launcher.stdout.readline().decode().strip()
        assert token, "the launcher did not start"
        _three_up(token)
        launcher.kill()  # SIGKILL
        launcher.wait()
        end = time.monotonic() + 30
        while children.marked(f"{token}/") and time.monotonic() < end:
            time.sleep(0.05)
        assert children.marked(f"{token}/") == []
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        if token:
            children.kill_marked(f"{token}/")


if __name__ == "__main__":
    scenarios(sys.argv[1])
