"""Noise spec version 2 as a zofed run option (SimConfig.spec_version, the round configs', `--spec-version`): every
replica of a run uses the run's stream, orbits replay with the version their header records, checkpoints refuse a
resume with another one. Tiny runs on the toy task."""

import copy
import json
import struct
import zlib

import numpy as np
import pytest
import torch

import fedtoy  # noqa: F401  (registers the "toy" task)
import zokernels
from zofed import atomic, rounds, sim, tasks
from zofed import orbit as orbits
from zofed.cli import _fields, _parser, _run_options, main
from zofed.client import Replica, batches, make_clients, run_config, split_clients, weights_sha256
from zofed.configs import SimConfig
from zofed.strategies import FedMeZO, FedMeZOConfig, ZOWarmUp, ZOWarmUpConfig
from zokernels.engine import param_key

ZO_FEDSGD = dict(strategy="zo-fedsgd", clients=2, steps=6, lr=0.05, batch=8, eval_every=6, seed=7)


def _run(cfg: dict, out):
    return sim.run(tasks.build("toy"), SimConfig(**cfg), out=str(out), progress=False)


@pytest.fixture(scope="module")
def v2_run(tmp_path_factory):
    """A ZO-FedSGD run (2 clients, 6 steps) on spec version 2: its summary and folder."""
    out = tmp_path_factory.mktemp("v2")
    return _run(dict(ZO_FEDSGD, spec_version=2), out), out


def _trainable(model):
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


@torch.no_grad()
def _loss(task, model, batch) -> float:
    return float(task.losses(model, batch).float().mean())


def test_a_v2_run_is_a_transcription_on_zokernels_and_differs_from_v1(v2_run, tmp_path):
    summary, out = v2_run
    v1 = _run(ZO_FEDSGD, tmp_path / "v1")
    assert summary["model_sha256"] != v1["model_sha256"]
    assert summary["config"]["spec_version"] == 2 and v1["config"]["spec_version"] == 1
    recorded = orbits.load(out / "orbit")
    assert recorded.spec_version == 2 and (out / "orbit").read_bytes()[5] == 2
    steps = recorded.history.steps
    assert len(steps) == 6 and all(len(pairs) == 2 for pairs in steps)

    # client 0's projection at step 0, by hand: its batch at w + eps z and w - eps z, z from zokernels' v2 stream
    cfg, task = SimConfig(**dict(ZO_FEDSGD, spec_version=2)), tasks.build("toy")
    batch = task.batch(batches(split_clients(task, cfg)[0], cfg, 0, 0, 1)[0])
    seed, value = steps[0][0]
    losses = []
    for sign in (1, -1):
        model = copy.deepcopy(task.model)
        names, params = zip(*_trainable(model))
        zokernels.perturb_(list(params), seed, sign * cfg.eps, keys=[param_key(n) for n in names], spec_version=2)
        losses.append(_loss(task, model, batch))
    assert np.float32((losses[0] - losses[1]) / (2 * cfg.eps)) == np.float32(value)

    # the model: the orbit's (seed, projection) pairs through zokernels.update_ on the base weights, step by step
    names, params = zip(*_trainable(task.model))
    with torch.no_grad():
        for pairs in steps:
            zokernels.update_(list(params), [s for s, _ in pairs], [-cfg.lr * v / 2 for _, v in pairs],
                              keys=[param_key(n) for n in names], spec_version=2)
    assert weights_sha256(task.model) == summary["model_sha256"]


def test_a_v2_orbit_replays_bit_for_bit_with_its_recorded_version(v2_run, tmp_path):
    summary, out = v2_run
    recorded = orbits.load(out / "orbit")
    task = orbits.replay(recorded)  # verifies the final sha256 itself
    assert weights_sha256(task.model) == summary["model_sha256"]
    assert orbits.info(recorded)["spec_version"] == 2
    orbits.write_weights(tmp_path / "w.safetensors", recorded, task)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        assert f.metadata()["spec_version"] == "2"
    # the header's byte, not a default, picks the stream: the same orbit marked version 1 replays elsewhere
    as_v1 = orbits.from_bytes(orbits.to_bytes(orbits.Orbit(recorded.config, recorded.base_sha256,
                                                           recorded.final_sha256, recorded.history, 1)))
    with pytest.raises(orbits.OrbitError, match="replay ended at weights"):
        orbits.replay(as_v1)


def _with_header_byte(data: bytes, version: int) -> bytes:
    body = data[:5] + bytes([version]) + data[6:-4]
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("version", [0, 3, 255])
def test_an_orbit_of_a_version_this_zokernels_lacks_is_refused_naming_it(v2_run, version):
    data = (v2_run[1] / "orbit").read_bytes()
    assert orbits.from_bytes(_with_header_byte(data, 2)).spec_version == 2
    with pytest.raises(orbits.OrbitError, match=f"noise spec version {version}; this zokernels implements "
                                                "versions 1, 2"):
        orbits.from_bytes(_with_header_byte(data, version))
    recorded = orbits.from_bytes(data)
    with pytest.raises(orbits.OrbitError, match=f"noise spec version {version};"):
        orbits.to_bytes(orbits.Orbit(recorded.config, recorded.base_sha256, recorded.final_sha256, recorded.history,
                                     version))


class Killed(Exception):
    pass


FEEDSIGN = dict(strategy="feedsign", clients=3, steps=10, lr=0.05, batch=4, eval_every=5, seed=3, dropout=0.3,
                dist="rademacher", spec_version=2)


def test_a_v2_run_killed_mid_run_resumes_bit_identically_and_refuses_another_version(tmp_path, monkeypatch):
    whole = sim.run(tasks.build("toy"), SimConfig(**FEEDSIGN), out=str(tmp_path / "whole"), progress=False,
                    checkpoint_every=3)
    advance = sim.StepDriver.advance

    def dies_at_step_7(driver):
        if driver.position == 7:
            raise Killed
        return advance(driver)

    out = tmp_path / "killed"
    monkeypatch.setattr(sim.StepDriver, "advance", dies_at_step_7)
    with pytest.raises(Killed):
        sim.run(tasks.build("toy"), SimConfig(**FEEDSIGN), out=str(out), progress=False, checkpoint_every=3)
    monkeypatch.undo()
    ck = atomic.read_sealed_json(str(out / sim.CHECKPOINT))
    assert ck["step"] == 6 and ck["config"]["spec_version"] == 2
    with pytest.raises(ValueError, match="spec_version: 2 there, 1 here"):
        sim.run(tasks.build("toy"), SimConfig(**dict(FEEDSIGN, spec_version=1)), out=str(out), progress=False)
    resumed = sim.run(tasks.build("toy"), SimConfig(**FEEDSIGN), out=str(out), progress=False, checkpoint_every=3)
    assert {k: v for k, v in resumed.items() if k != "seconds"} == {k: v for k, v in whole.items() if k != "seconds"}
    for name in ("metrics.jsonl", "orbit"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    assert json.loads((out / "summary.json").read_text())["config"]["spec_version"] == 2


def test_a_checkpoint_without_spec_version_is_a_version_1_run(tmp_path):
    """Checkpoints written before the field existed (tests/test_resume_pre_transport.py resumes a whole one)."""
    cfg = dict(FEEDSIGN, spec_version=1)
    first = _run(cfg, tmp_path)
    ck = atomic.read_sealed_json(str(tmp_path / sim.CHECKPOINT))
    del ck["config"]["spec_version"]
    atomic.write_sealed_json(str(tmp_path / sim.CHECKPOINT), ck)
    with pytest.raises(ValueError, match="spec_version: 1 there, 2 here"):
        _run(dict(cfg, spec_version=2), tmp_path)
    assert _run(cfg, tmp_path)["model_sha256"] == first["model_sha256"]  # resumed (at its end) as version 1


def test_round_strategies_perturb_and_update_on_the_run_version(tmp_path):
    """FedMeZO (seed replay: its orbit records the version) and ZOWarmUp's ZO rounds."""
    fedmezo = dict(clients=2, rounds=2, local_steps=2, lr=0.05, batch=8, seed=4)
    got = {}
    for v in (1, 2):
        got[v] = rounds.run(FedMeZO(tasks.build("toy"), FedMeZOConfig(**fedmezo, spec_version=v)),
                            out=str(tmp_path / f"fedmezo{v}"), progress=False)
        assert got[v]["config"]["spec_version"] == v
        recorded = orbits.load(tmp_path / f"fedmezo{v}" / "orbit")
        assert recorded.spec_version == v
        orbits.replay(recorded)
    assert got[1]["model_sha256"] != got[2]["model_sha256"]
    zowarmup = dict(clients=3, high_fraction=0.34, warmup_rounds=1, zo_rounds=2, local_epochs=1, fo_batch=32,
                    zo_lr=0.05, dirichlet=None, eval_every=3, seed=5)
    shas = {v: rounds.run(ZOWarmUp(tasks.build("toy"), ZOWarmUpConfig(**zowarmup, spec_version=v)),
                          progress=False)["model_sha256"] for v in (1, 2)}
    assert shas[1] != shas[2]
    algo = ZOWarmUp(tasks.build("toy"), ZOWarmUpConfig(**zowarmup, spec_version=2))
    state = algo.make_state(algo.task.model)
    assert state.zo().noise()["spec_version"] == 2
    state.close()


def test_clients_take_the_run_version_and_refuse_a_state_or_shared_replica_of_another():
    task = tasks.build("toy")
    rc = {v: run_config(SimConfig(**dict(ZO_FEDSGD, spec_version=v)), task) for v in (1, 2)}
    assert rc[2]["config"]["spec_version"] == 2  # what torchdist and Flower clients are built from
    v1, v2 = make_clients(rc[1], [0])[0], make_clients(rc[2], [0])[0]
    assert (v1.replica.noise()["spec_version"], v2.replica.noise()["spec_version"]) == (1, 2)
    with pytest.raises(ValueError, match="this state is of the strategy"):
        v2.load_state(v1.save_state())
    shared = Replica(copy.deepcopy(task.model))  # version 1
    with pytest.raises(ValueError, match="the shared replica perturbs with"):
        make_clients(rc[2], [0, 1], shared=True, task=task, replica=shared)
    for c in (v1, v2):
        c.replica.close()
    shared.close()


def test_cli_takes_spec_version_and_refuses_an_unknown_one_in_one_line(tmp_path, capsys):
    kind, text = _fields()["spec_version"]
    assert kind == "int" and "Philox-7" in text and "not bit-compatible" in text and "(one of 1, 2; default: 1)" in text
    toml = tmp_path / "run.toml"
    toml.write_text(f'spec-version = 2\nout = "{tmp_path / "r"}"\n')
    assert _run_options(_parser().parse_args(["run", "--config", str(toml)]))["spec_version"] == 2
    assert _run_options(_parser().parse_args(["run", "--config", str(toml), "--spec-version", "1"]))[
        "spec_version"] == 1
    for argv in (["--spec-version", "3"], ["--strategy", "fedmezo", "--spec-version", "3"],
                 ["--strategy", "zowarmup", "--spec-version", "0"]):
        code = main(["run", *argv, "--out", str(tmp_path / "r")])
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith("zofed: error: config field 'spec_version' must be one of (1, 2), got "), err
    assert not (tmp_path / "r").exists()
