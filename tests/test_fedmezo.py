"""FedMeZO: the seed-replay encoding equals dense FedAvg up to a stated rounding bound, at a fraction of the
bytes, keeps separate replicas bit-identical, and personalizes learning rates by Prop. 3.7; its server side runs
without torch, and its steps (client update, aggregate, apply) are separately callable."""

import os
import subprocess
import sys

import pytest
import torch

from fedtoy import toy_task
from zofed import rounds
from zofed.seeds import step_seed
from zofed.strategies.fedmezo import FedMeZO, FedMeZOConfig, heterogeneity
from zofed.wire import Dense, Scalars, SeedScalars

CFG = dict(clients=3, local_steps=6, lr=0.05, batch=8, dirichlet=0.5, seed=4)


def _driver(cfg, **kw):
    return rounds.RoundDriver(FedMeZO(toy_task(), FedMeZOConfig(**cfg)), **kw)


def _params(driver):
    return [p.detach().clone() for p in driver.view.params]


def test_one_round_seed_replay_equals_dense_within_rounding():
    dense = _driver(dict(encoding="dense", **CFG))
    seeds = _driver(dict(encoding="seeds", **CFG))
    start = _params(seeds)
    dense.advance()
    seeds.advance()
    n, h = CFG["clients"], CFG["local_steps"]
    for a, b, s in zip(_params(dense), _params(seeds), start):
        assert not torch.equal(a, s)  # the round moved the weights
        top = max(a.abs().max(), s.abs().max()).item()
        bound = ((n + 1) * h + 2) * 2.0**-24 * top  # the module docstring's bound
        assert (a - b).abs().max().item() <= bound
    up_dense = dense.counter.client(0, "up")["bytes"]
    up_seeds = seeds.counter.client(0, "up")["bytes"]
    assert up_seeds == 12 + 12 + h * 12  # frame, step/count, H (seed, projection) pairs
    assert up_dense == 12 + 12 + 4 * sum(p.numel() for p in dense.view.params)
    assert seeds.counter.client(0, "down")["bytes"] < dense.counter.client(0, "down")["bytes"]


def test_seed_replay_keeps_separate_replicas_bit_identical_and_equal_to_a_shared_one():
    task = toy_task()
    algo = FedMeZO(task, FedMeZOConfig(encoding="seeds", **CFG))
    run = rounds.RoundDriver(algo, rounds.InProcRounds(algo))  # each client on its own copy of the model
    replicas = [client.state for client in run.transport.clients.values()] + [run.view]
    assert len({id(r) for r in replicas}) == 4
    start = replicas[0].digest()
    before = task.evaluate(replicas[0].model)["loss"]
    for _ in range(4):
        run.advance()
    assert len({r.digest() for r in replicas}) == 1 and replicas[0].digest() != start
    assert task.evaluate(replicas[0].model)["loss"] < before
    shared = _driver(dict(encoding="seeds", **CFG))  # the in-process default: every client on the global model
    for _ in range(4):
        shared.advance()
    assert shared.view.digest() == replicas[0].digest() and shared.counter.totals == run.counter.totals


def test_personalized_learning_rates():
    run = _driver(dict(encoding="seeds", alpha=0.5, signal="update", **CFG))
    for _ in range(3):
        run.advance()
    assert run.algo.lrs[0] == [0.05] * 3  # no signal before the first round
    for lrs in run.algo.lrs[1:]:
        assert len(set(lrs)) == 3 and all(0.025 < lr < 0.075 for lr in lrs)
    for signal in ("round-loss", "five-round-loss"):
        r = _driver(dict(encoding="seeds", alpha=0.5, signal=signal, **CFG))
        r.advance()
        r.advance()
        assert len(set(r.algo.lrs[1])) == 3
    phi = heterogeneity([3.0, -1.0, 0.0])
    assert phi[0] > 0 > phi[1] and phi[2] == 0 and all(-1 < p < 1 for p in phi)
    assert heterogeneity([0.0, 0.0]) == [0.0, 0.0]


@pytest.mark.parametrize("kw,match", [(dict(encoding="bits"), "encoding"), (dict(alpha=1.0), "alpha"),
                                      (dict(signal="loss"), "signal"), (dict(local_steps=0), "local_steps"),
                                      (dict(lr=0.0), "lr")])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=f"config field '{match}'"):
        FedMeZOConfig(**kw).validate()


@pytest.mark.parametrize("client_weights", ["equal", "data-size"])
def test_the_server_averages_with_eq_1_weights_by_default(client_weights, monkeypatch):
    """fedmezo.txt eq. 1 (aggregation "according to Eq. (1)", section 2.2) and eq. 28 average the N clients with
    weight 1/N: the default; "data-size" is FedAvg's n_i / n. Each client's local steps are replaced by a known
    move (+ (i + 1) on every weight; projection g_i = i + 0.5), so both encodings are checked against eq. 1."""
    def update(self, rep, client, t, params):
        weights = torch.cat([p.detach().reshape(-1) for p in rep.params]) + (client + 1.0)
        up = (Dense(t, weights.numpy().astype("<f4").tobytes()) if self.cfg.encoding == "dense" else
              SeedScalars(t, (step_seed(4, t, client),), (client + 0.5,)))
        return up, (float(client), 0.0)

    monkeypatch.setattr(FedMeZO, "client_update", update)
    cfg = dict(CFG, local_steps=1, client_weights=client_weights)
    sizes = [len(p) for p in FedMeZO(toy_task(), FedMeZOConfig(**cfg)).parts]
    assert len(set(sizes)) == 3  # Dirichlet 0.5: the two rules differ
    p = [1 / 3] * 3 if client_weights == "equal" else [n / sum(sizes) for n in sizes]

    seeds = _driver(dict(encoding="seeds", **cfg))
    row = seeds.advance()
    (pairs,) = seeds.algo.downs[0].steps
    assert pairs == tuple((step_seed(4, 0, i), -p[i] * 0.05 * (i + 0.5)) for i in range(3))
    assert row["loss"] == sum(p[i] * i for i in range(3))

    dense = _driver(dict(encoding="dense", **cfg))
    start = _params(dense)
    dense.advance()
    shift = sum(p[i] * (i + 1) for i in range(3))
    for a, s in zip(_params(dense), start):
        torch.testing.assert_close(a, s + shift, rtol=0, atol=4 * 2.0**-24 * (s.abs().max().item() + 3))


def test_client_weights_is_checked():
    with pytest.raises(ValueError, match="config field 'client_weights' must be one of"):
        FedMeZOConfig(client_weights="size").validate()


def test_the_server_side_runs_without_torch():
    """requests -> uploads -> aggregate -> conclude on the server alone (data sizes instead of the task): seed and
    scalar arithmetic for the seed replay, numpy for the dense average, and no torch imported."""
    code = """
import sys
from zofed.seeds import step_seed
from zofed.strategies import FedMeZO, FedMeZOConfig
from zofed.wire import Dense, SeedScalars
import numpy as np
server = FedMeZO(None, FedMeZOConfig(clients=2, local_steps=2, lr=0.5, client_weights="data-size"), data_sizes=[1, 3])
assert list(server.requests(0)) == [0, 1]
seeds = [(step_seed(0, 0, c), step_seed(0, 1, c)) for c in (0, 1)]
ups = {c: (SeedScalars(0, seeds[c], (1.0, 2.0)), (0.5, 1.0)) for c in (0, 1)}
r = server.aggregate(0, ups)
want = ((seeds[0][0], -0.125), (seeds[0][1], -0.25), (seeds[1][0], -0.375), (seeds[1][1], -0.75))
assert r.to == [0, 1] and r.down.steps == (want,), r.down
assert server.conclude(0, 1.0) == dict(step=1, loss=0.5, lrs=[0.5, 0.5])
dense = FedMeZO(None, FedMeZOConfig(clients=2, encoding="dense"), data_sizes=[1, 1])
dense.requests(0)
w = lambda x: Dense(0, np.full(3, x, "<f4").tobytes())
avg = dense.aggregate(0, {0: (w(1.0), (0.0, 0.0)), 1: (w(2.0), (0.0, 0.0))}).down
assert np.frombuffer(avg.data, "<f4").tolist() == [1.5] * 3
assert "torch" not in sys.modules, "the FedMeZO server imported torch"
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)


def test_a_bad_upload_is_refused_naming_the_client():
    server = FedMeZO(toy_task(), FedMeZOConfig(**CFG))
    server.requests(0)
    ups = {c: (SeedScalars(0, tuple(step_seed(4, h, c) for h in range(6)), (0.5,) * 6), (0.0, 0.0)) for c in range(3)}
    ups[1] = (Scalars(0, (0.5,)), (0.0, 0.0))
    with pytest.raises(ValueError, match="client 1: expected a SeedScalars upload for step 0"):
        server.aggregate(0, ups)
    with pytest.raises(RuntimeError, match=r"clients \[2\] did not answer"):
        server.aggregate(0, {c: ups[0] for c in (0, 1)})
    with pytest.raises(ValueError, match="client 1: its seeds are not the schedule's 6 of round 0"):
        server.aggregate(0, {**ups, 1: ups[0]})
