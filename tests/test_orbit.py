"""Orbits: compact, replayed bit for bit, and a corrupt or mismatched file gets a clear OrbitError."""

import json
import struct
import zlib

import pytest

import fedtoy  # noqa: F401  (registers the "toy" task)
from zofed import orbit as orbits
from zofed import sim, tasks
from zofed.client import weights_sha256
from zofed.wire import Votes

VADER_CONFIG = dict(strategy="feedsign", strategy_options={}, lr=0.002, eps=0.001, dist="gaussian", run_seed=0,
                    steps=10_000, task="vader", task_options=dict(model="minilm", lora_rank=4))


def _feedsign_orbit(steps=10_000):
    signs = tuple(1 if (i * 2654435761) >> 7 & 1 else -1 for i in range(steps))
    return orbits.Orbit(dict(VADER_CONFIG, steps=steps), "ab" * 32, "cd" * 32, Votes(0, signs))


def test_feedsign_orbit_of_10000_steps_fits_in_1_5_kb():
    data = orbits.to_bytes(_feedsign_orbit())
    assert len(data) <= 1500, len(data)  # 1.5 KB read the strict way
    back = orbits.from_bytes(data)
    assert back == _feedsign_orbit()


CASES = [dict(strategy="feedsign"), dict(strategy="dp-feedsign", dp_epsilon=1.0), dict(strategy="zo-fedsgd"),
         dict(strategy="zo-fedsgd", aggregator="median"), dict(strategy="fedkseed", pool_size=16)]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(map(str, kw.values())))
def test_replay_rebuilds_the_run_bit_for_bit(kw, tmp_path):
    cfg = sim.SimConfig(clients=4, steps=130, lr=0.05, batch=8, eval_every=65, seed=5, **kw)
    summary = sim.run(tasks.build("toy"), cfg, out=str(tmp_path), progress=False)
    orbit = orbits.load(tmp_path / "orbit")
    assert orbit.final_sha256 == summary["model_sha256"] != summary["base_sha256"] == orbit.base_sha256
    for chunk in (1, 7, 4096):  # chunking the multi-seed update does not change a bit
        task = orbits.replay(orbit, chunk=chunk)
        assert weights_sha256(task.model) == summary["model_sha256"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(131))
    assert (tmp_path / "loss_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "accuracy_bytes.png").read_bytes()[:4] == b"\x89PNG"


def test_runs_are_deterministic(tmp_path):
    cfg = dict(strategy="zo-fedsgd", clients=3, steps=40, lr=0.05, batch=8, eval_every=40, seed=2, dropout=0.3,
               dirichlet=0.5)
    a = sim.run(tasks.build("toy"), sim.SimConfig(**cfg), progress=False)
    b = sim.run(tasks.build("toy"), sim.SimConfig(**cfg), progress=False)
    assert a["model_sha256"] == b["model_sha256"] and a["clients"] == b["clients"]
    c = sim.run(tasks.build("toy"), sim.SimConfig(**dict(cfg, seed=3)), progress=False)
    assert c["model_sha256"] != a["model_sha256"]


def test_replay_refuses_another_base_model(tmp_path):
    sim.run(tasks.build("toy"), sim.SimConfig(clients=2, steps=5, eval_every=5), out=str(tmp_path), progress=False)
    orbit = orbits.load(tmp_path / "orbit")
    with pytest.raises(orbits.OrbitError, match="wrong base model"):
        orbits.replay(orbit, task=tasks.build("toy", hidden=9))
    bad_final = orbits.Orbit(orbit.config, orbit.base_sha256, "00" * 32, orbit.history)
    with pytest.raises(orbits.OrbitError, match="replay ended at weights"):
        orbits.replay(bad_final)


def _recrc(data: bytes) -> bytes:
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


def test_version_and_config_errors():
    data = bytearray(orbits.to_bytes(_feedsign_orbit(100)))
    spec = bytearray(data)
    spec[5] = 9
    with pytest.raises(orbits.OrbitError, match="noise spec version 9"):
        orbits.from_bytes(_recrc(bytes(spec)))
    fmt = bytearray(data)
    fmt[4] = 2
    with pytest.raises(orbits.OrbitError, match="format version 2"):
        orbits.from_bytes(_recrc(bytes(fmt)))
    with pytest.raises(orbits.OrbitError, match="bad magic"):
        orbits.from_bytes(b"PK\x03\x04" + bytes(data[4:]))
    wrong_steps = orbits.Orbit(dict(VADER_CONFIG, steps=99), "ab" * 32, "cd" * 32, Votes(0, (1,) * 100))
    with pytest.raises(orbits.OrbitError, match="holds 100 steps from step 0, the config says 99"):
        orbits.from_bytes(orbits.to_bytes(wrong_steps))
    bad_strategy = orbits.Orbit(dict(VADER_CONFIG, strategy="fedsomething", steps=1), "ab" * 32, "cd" * 32,
                                Votes(0, (1,)))
    with pytest.raises(orbits.OrbitError, match="'strategy' must be one of .*fedkseed.*, got 'fedsomething'"):
        orbits.from_bytes(orbits.to_bytes(bad_strategy))


def test_save_is_atomic_and_loads_back(tmp_path):
    path = tmp_path / "orbit"
    orbits.save(path, _feedsign_orbit(300))
    assert orbits.load(path) == _feedsign_orbit(300)
    assert not (tmp_path / "orbit.tmp").exists()
    info = orbits.info(orbits.load(path))
    assert info["steps"] == 300 and info["history_payload_bits"] == 300 and info["size_bytes"] == path.stat().st_size
