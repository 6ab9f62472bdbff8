"""FedMeZO: the seed-replay encoding equals dense FedAvg up to a stated rounding bound, at a fraction of the
bytes, keeps separate replicas bit-identical, and personalizes learning rates by Prop. 3.7."""

import copy

import pytest
import torch

from fedtoy import toy_task
from zofed.client import Replica
from zofed.fedmezo import FedMeZO, FedMeZOConfig, heterogeneity

CFG = dict(clients=3, local_steps=6, lr=0.05, batch=8, dirichlet=0.5, seed=4)


def _params(run):
    return [p.detach().clone() for p in run.replicas[0].params]


def test_one_round_seed_replay_equals_dense_within_rounding():
    dense = FedMeZO(toy_task(), FedMeZOConfig(encoding="dense", **CFG))
    seeds = FedMeZO(toy_task(), FedMeZOConfig(encoding="seeds", **CFG))
    start = _params(seeds)
    dense.step()
    seeds.step()
    n, h = CFG["clients"], CFG["local_steps"]
    for a, b, s in zip(_params(dense), _params(seeds), start):
        assert not torch.equal(a, s)  # the round moved the weights
        top = max(a.abs().max(), s.abs().max()).item()
        bound = ((n + 1) * h + 2) * 2.0**-24 * top  # the module docstring's bound
        assert (a - b).abs().max().item() <= bound
    up_dense = dense.counter.client(0, "up")["bytes"]
    up_seeds = seeds.counter.client(0, "up")["bytes"]
    assert up_seeds == 12 + 12 + h * 12  # frame, step/count, H (seed, projection) pairs
    assert up_dense == 12 + 12 + 4 * sum(p.numel() for p in dense.replicas[0].params)
    assert seeds.counter.client(0, "down")["bytes"] < dense.counter.client(0, "down")["bytes"]


def test_seed_replay_keeps_separate_replicas_bit_identical():
    task = toy_task()
    replicas = [Replica(copy.deepcopy(task.model)) for _ in range(3)]
    run = FedMeZO(task, FedMeZOConfig(encoding="seeds", **CFG), replicas=replicas)
    start = replicas[0].digest()
    before = task.evaluate(replicas[0].model)["loss"]
    for _ in range(4):
        run.step()
    assert len({r.digest() for r in replicas}) == 1 and replicas[0].digest() != start
    assert task.evaluate(replicas[0].model)["loss"] < before


def test_personalized_learning_rates():
    run = FedMeZO(toy_task(), FedMeZOConfig(encoding="seeds", alpha=0.5, signal="update", **CFG))
    for _ in range(3):
        run.step()
    assert run.lrs[0] == [0.05] * 3  # no signal before the first round
    for lrs in run.lrs[1:]:
        assert len(set(lrs)) == 3 and all(0.025 < lr < 0.075 for lr in lrs)
    for signal in ("round-loss", "five-round-loss"):
        r = FedMeZO(toy_task(), FedMeZOConfig(encoding="seeds", alpha=0.5, signal=signal, **CFG))
        r.step()
        r.step()
        assert len(set(r.lrs[1])) == 3
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
    def local(self, client, lr):
        rep = self.replica(client)
        for p in rep.params:
            p.add_(client + 1.0)
        return [(1000 + client, client + 0.5)], float(client)

    monkeypatch.setattr(FedMeZO, "_local", local)
    cfg = dict(CFG, local_steps=1, client_weights=client_weights)
    sizes = [len(p) for p in FedMeZO(toy_task(), FedMeZOConfig(**cfg)).parts]
    assert len(set(sizes)) == 3  # Dirichlet 0.5: the two rules differ
    p = [1 / 3] * 3 if client_weights == "equal" else [n / sum(sizes) for n in sizes]

    seeds = FedMeZO(toy_task(), FedMeZOConfig(encoding="seeds", **cfg))
    row = seeds.step()
    (pairs,) = seeds.downs[0].steps
    assert pairs == tuple((1000 + i, -p[i] * 0.05 * (i + 0.5)) for i in range(3))
    assert row["loss"] == sum(p[i] * i for i in range(3))

    dense = FedMeZO(toy_task(), FedMeZOConfig(encoding="dense", **cfg))
    start = _params(dense)
    dense.step()
    shift = sum(p[i] * (i + 1) for i in range(3))
    for a, s in zip(_params(dense), start):
        torch.testing.assert_close(a, s + shift, rtol=0, atol=4 * 2.0**-24 * (s.abs().max().item() + 3))


def test_client_weights_is_checked():
    with pytest.raises(ValueError, match="config field 'client_weights' must be one of"):
        FedMeZOConfig(client_weights="size").validate()
