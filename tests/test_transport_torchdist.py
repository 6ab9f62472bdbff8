"""The torch.distributed transport: rank 0 here, the clients on ranks it starts itself (gloo, 127.0.0.1).
One child process per module runs every scenario (tests/transport_torchdist_scenarios.py)."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from zofed.transports import torchdist

HERE = pathlib.Path(__file__).parent


def run_child(cmd: list[str], out: pathlib.Path, timeout: int) -> subprocess.CompletedProcess:
    """cmd in its own process group, bounded in time; the whole group is killed whatever happens."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    with open(out / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            else:
                try:  # anything it left behind
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    assert code == 0, (out / "log.txt").read_text()[-4000:]
    return code


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchdist")
    run_child([sys.executable, str(HERE / "transport_torchdist_scenarios.py"), str(out)], out, timeout=240)
    return json.loads((out / "results.json").read_text())


def test_replies_and_bytes_equal_inproc_bit_for_bit(scenarios):
    here, there = scenarios["inproc"], scenarios["torchdist"]
    assert there["replies"] == here["replies"]
    assert all(len(r) == 4 for r in there["replies"])
    assert there["counter"] == here["counter"] and there["counter"]


def test_a_refused_request_ends_with_the_clients_error_and_stops_every_rank(scenarios):
    assert "torchdist rank 2" in scenarios["refused"] and "client 1 is on step 4" in scenarios["refused"]
    assert scenarios["children_left"] == 0
    for pid in scenarios["pids"]:
        assert not os.path.exists(f"/proc/{pid}") or "zofed.transports.torchdist" not in \
            pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")


@pytest.mark.parametrize("processes", [1, 0, "2", True])
def test_processes_must_be_two_or_more(processes):
    with pytest.raises(ValueError, match="--processes must be an integer >= 2"):
        torchdist.open(dict(processes=processes))
