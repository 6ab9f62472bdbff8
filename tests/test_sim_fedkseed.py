"""FedKSeed's local steps per round and data-size client weights through the simulator (zofed.sim) on the toy
task: the orbit replays to the run's weights bit for bit, each option changes the run, an interrupted run
resumes bit-identical; DP-FeedSign's server secret stays in the checkpoint only."""

import json

import pytest

import fedtoy  # noqa: F401  (registers the "toy" task)
from zofed.client import split_clients
from zofed import atomic, orbit, sim, tasks
from zofed.client import weights_sha256

# Dirichlet label skew: the clients' data sizes differ, so data-size weights differ from equal ones
BASE = dict(strategy="fedkseed", clients=4, steps=30, lr=0.05, batch=8, eval_every=10, seed=5, pool_size=16,
            dirichlet=0.5, pool_sampling="importance")
VARIANTS = {"H=1, equal": {}, "H=2": dict(pool_local_steps=2), "data-size": dict(client_weights="data-size"),
            "H=3, data-size": dict(pool_local_steps=3, client_weights="data-size")}


def _run(out, **kw):
    return sim.run(tasks.build("toy"), sim.SimConfig(**dict(BASE, **kw)), out=str(out), progress=False,
                   checkpoint_every=7)


def test_local_steps_and_data_size_weights_replay_bit_identical_and_change_the_run(tmp_path):
    sizes = [len(p) for p in split_clients(tasks.build("toy"), sim.SimConfig(**BASE))]
    assert len(set(sizes)) > 1, sizes
    shas = {}
    for name, kw in VARIANTS.items():
        out = tmp_path / name.replace(" ", "").replace(",", "_")
        s = _run(out, **kw)
        replayed = orbit.replay(orbit.load(out / "orbit"), chunk=5)
        assert weights_sha256(replayed.model) == s["model_sha256"], name
        h = kw.get("pool_local_steps", 1)
        # each answer carries H (seed u64, projection f32) pairs
        assert s["clients"][0]["up"]["payload_bits"] == 96 * h * s["clients"][0]["up"]["messages"], name
        shas[name] = s["model_sha256"]
    assert len(set(shas.values())) == len(shas), shas  # every option changed the weights


def test_an_interrupted_run_with_local_steps_and_data_size_weights_resumes_bit_identical(tmp_path, monkeypatch):
    kw = VARIANTS["H=3, data-size"]
    whole = _run(tmp_path / "whole", **kw)
    calls = {"n": 0}

    def build_failing():
        task = tasks.build("toy")
        losses = task.losses

        def counting(model, batch):
            calls["n"] += 1
            if calls["n"] > 4 * 3 * 2 * 17:  # about 17 steps in (4 clients, 3 local steps, 2 forwards)
                raise KeyboardInterrupt
            return losses(model, batch)

        task.losses = counting
        return task

    with pytest.raises(KeyboardInterrupt):
        sim.run(build_failing(), sim.SimConfig(**dict(BASE, **kw)), out=str(tmp_path / "cut"), progress=False,
                checkpoint_every=7)
    assert 0 < atomic.read_sealed_json(str(tmp_path / "cut" / sim.CHECKPOINT))["step"] < BASE["steps"]
    resumed = _run(tmp_path / "cut", **kw)
    assert resumed["model_sha256"] == whole["model_sha256"] and resumed["clients"] == whole["clients"]
    for name in ("metrics.jsonl", "orbit"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


@pytest.mark.parametrize("secret", [0x1234567890ABCDEF, None])
def test_the_server_secret_stays_in_the_checkpoint(tmp_path, secret):
    cfg = sim.SimConfig(strategy="dp-feedsign", clients=3, steps=6, lr=0.05, eval_every=3, server_secret=secret)
    s = sim.run(tasks.build("toy"), cfg, out=str(tmp_path), progress=False)
    kept = atomic.read_sealed_json(str(tmp_path / sim.CHECKPOINT))["server"]["secret"]
    assert secret is None or kept == secret
    assert "server_secret" not in s["config"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "server_secret" not in summary["config"] and summary["model_sha256"] == s["model_sha256"]
    for name in ("summary.json", "metrics.jsonl"):
        text = (tmp_path / name).read_text()
        assert "secret" not in text and str(kept) not in text, name
    recorded = orbit.load(tmp_path / "orbit")
    assert "secret" not in json.dumps(recorded.config) and str(kept) not in json.dumps(recorded.config)
