"""ZOWarmUp: tiers, the first-order warm-up, the ZO rounds' estimate and wire traffic, FedAdam, the baseline."""

import copy
import struct

import pytest
import torch

from fedtoy import toy_task
from zofed import rounds, tasks
from zofed.client import Replica
from zofed.seeds import step_seed
from zofed.strategies.zowarmup import ZOWarmUp, ZOWarmUpConfig, high_tier, sample

TOY = dict(clients=10, high_fraction=0.3, warmup_rounds=3, zo_rounds=3, fo_lr=0.2, zo_lr=0.05, dirichlet=0.5,
           eval_every=2, seed=5)


def _driver(task, cfg):
    return rounds.RoundDriver(ZOWarmUp(task, cfg))


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_tiers_and_sampling():
    cfg = ZOWarmUpConfig(clients=50, high_fraction=0.3, participation=0.2, seed=1)
    high = high_tier(cfg)
    assert len(high) == 15 and high == high_tier(cfg) and high != high_tier(ZOWarmUpConfig(high_fraction=0.3, seed=2))
    assert len(high_tier(ZOWarmUpConfig(clients=50, high_fraction=0.001))) == 1  # at least one
    picked = [sample(cfg, t, high) for t in range(200)]
    assert all(p and set(p) <= set(high) for p in picked)
    assert 0.1 < sum(map(len, picked)) / (200 * 15) < 0.3  # participation 0.2 (fixed seeds, loose bound)


def test_warm_up_round_is_fedavg_of_local_sgd():
    """One high-resource client, one epoch in one batch, server FedAvg with step 1: the round is one SGD step."""
    task = toy_task()
    cfg = ZOWarmUpConfig(**dict(TOY, high_fraction=0.1, local_epochs=1, fo_batch=10_000))
    run = _driver(task, cfg)
    (c,) = run.algo.high
    model = copy.deepcopy(task.model)
    loss = task.losses(model, task.batch(run.algo.parts[c])).mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected = torch.cat([(p - cfg.fo_lr * g).detach().reshape(-1) for p, g in zip(model.parameters(), grads)])
    run.advance()
    # w + 1.0 * (avg - w) may differ from avg by one rounding of |w|
    torch.testing.assert_close(_flat(task.model), expected, rtol=0, atol=2 * 2.0**-24 * expected.abs().max().item())
    size = 4 * expected.numel()
    assert run.counter.client(c, "up")["payload_bits"] == run.counter.client(c, "down")["payload_bits"] == 8 * size
    assert all(run.counter.client(k, "down")["messages"] == 0 for k in range(cfg.clients) if k != c)


def _grad(task, rows):
    model = copy.deepcopy(task.model)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        task.losses(model, task.batch(rows)).mean(), list(model.parameters()))])


def test_zo_round_estimates_the_gradient_of_the_sampled_data():
    """With many probes the broadcast step points along the expected one, -zo_lr tau^2 S sum_j grad L_j (L_j:
    client j's loss on its data; E[z z^T] = tau^2 I for z = tau * Rademacher; Algorithm 1 sums the |Q| * S
    estimates). 10 clients x 300 probes for 83 weights: fixed seeds."""
    task = toy_task()
    cfg = ZOWarmUpConfig(**dict(TOY, warmup_rounds=0, zo_rounds=1, perturbations=300, eps=1e-4, tau=0.5))
    run = _driver(task, cfg)
    grad = cfg.perturbations * sum(_grad(task, part) for part in run.algo.parts)
    before = _flat(task.model)
    run.advance()
    step = _flat(task.model) - before
    cos = torch.dot(step, -grad) / (step.norm() * grad.norm())
    assert cos > 0.9, cos
    assert 0.8 < step.norm() / (cfg.zo_lr * cfg.tau**2 * grad.norm()) < 1.4
    for c in range(cfg.clients):  # S float32 differences up; the gathered list of 10 x S pairs down (+ the pivot)
        assert run.counter.client(c, "up")["payload_bits"] == 32 * cfg.perturbations
        down = run.counter.client(c, "down")
        assert down["messages"] == 2 and down["payload_bits"] == 32 * before.numel() + 96 * 10 * cfg.perturbations


@pytest.mark.parametrize("zo_update", ["sum", "data-mean"])
def test_zo_update_transcribes_algorithm_1(zo_update, monkeypatch):
    """Lines 22-32 written out with a separate replica: each sampled client's S differences dL (float32 on the
    wire), g_s = dL / (2 eps) * z_s with z_s = tau * Rademacher(seed s), g = sum over all |Q| * S of them
    (line 31), w <- w - server_lr * zo_lr * g (line 32 with the FedAvg server step). "data-mean" weighs each
    g_s by n_j / n / S instead (n_j: its client's examples, n: the sampled clients')."""
    task = toy_task()
    cfg = ZOWarmUpConfig(**dict(TOY, warmup_rounds=0, zo_rounds=1, participation=0.5, zo_update=zo_update))
    model = copy.deepcopy(task.model)
    run = _driver(task, cfg)
    got = []
    update = ZOWarmUp.zo_update
    monkeypatch.setattr(ZOWarmUp, "zo_update", lambda self, state, t, pairs: (got.append(pairs),
                                                                              update(self, state, t, pairs)))
    run.advance()
    ref = Replica(model, eps=cfg.eps * cfg.tau, dist="rademacher")  # perturbation eps * z = eps * tau * r
    picked = sample(cfg, 0, list(range(cfg.clients)))
    assert 1 < len(picked) < cfg.clients
    n = sum(len(run.algo.parts[c]) for c in picked)
    expected = []
    for c in picked:
        batch = task.batch(run.algo.parts[c])
        weight = 1.0 if zo_update == "sum" else len(run.algo.parts[c]) / n / cfg.perturbations
        for s in range(cfg.perturbations):
            seed = step_seed(cfg.seed, 0, c, s)
            plus, minus = ref.evaluate_pair(seed, lambda: task.losses(model, batch).mean())
            d = struct.unpack("<f", struct.pack("<f", float(plus) - float(minus)))[0]
            g = struct.unpack("<f", struct.pack("<f", weight * cfg.tau * d / (2 * cfg.eps)))[0]  # float32 broadcast
            expected.append((seed, g))
    assert got == [tuple(expected)]
    ref.apply([("update", tuple(s for s, _ in expected), tuple(-cfg.server_lr * cfg.zo_lr * g for _, g in expected))])
    assert torch.equal(_flat(task.model), _flat(model))


@pytest.mark.parametrize("server_opt", ["fedavg", "fedadam"])
def test_zowarmup_lowers_the_loss_and_baseline_leaves_low_tier_out(server_opt):
    task = toy_task()
    cfg = ZOWarmUpConfig(**dict(TOY, warmup_rounds=5, zo_rounds=15, server_opt=server_opt,
                                server_lr=1.0 if server_opt == "fedavg" else 0.02))
    start = task.evaluate(task.model)["loss"]
    s = rounds.run(ZOWarmUp(task, cfg), progress=False)
    assert s["final_test_loss"] < start
    base = _driver(toy_task(), ZOWarmUpConfig(**dict(TOY, high_res_only=True)))
    while base.position < base.total:
        assert base.advance()["phase"] == "fo"
    assert base.view.replica is None
    low = [c for c in range(TOY["clients"]) if c not in base.algo.high]
    assert all(base.counter.client(c, d)["messages"] == 0 for c in low for d in ("up", "down"))


def test_bad_config_names_the_field():
    for kw, match in ((dict(high_fraction=0.0), "'high_fraction' must be in"), (dict(server_opt="sgd"), "server_opt"),
                      (dict(warmup_rounds=0, zo_rounds=0), "'zo_rounds' leaves no rounds"),
                      (dict(tau=1.5), "'tau' must be in"), (dict(high_res_only="yes"), "'high_res_only' must be true"),
                      (dict(zo_update="mean"), "'zo_update' must be one of")):
        with pytest.raises(ValueError, match=match):
            ZOWarmUpConfig(**kw).validate()


@pytest.mark.slow
def test_zowarmup_beats_high_res_only_on_digits_at_10_90():
    """The acceptance on one seed (the README table has three seeds and all splits): the default budget."""
    acc = {}
    for only in (True, False):
        cfg = ZOWarmUpConfig(high_fraction=0.1, high_res_only=only, seed=0)
        acc[only] = rounds.run(ZOWarmUp(tasks.build("digits"), cfg), progress=False)["final_accuracy"]
    assert acc[False] > acc[True] + 0.02, acc


def test_digits_task_is_the_same_everywhere_and_seeded():
    from zofed.client import weights_sha256
    from zofed.tasks import digits

    a, b, c = tasks.build("digits"), tasks.build("digits"), tasks.build("digits", init_seed=1)
    assert weights_sha256(a.model) == weights_sha256(b.model) != weights_sha256(c.model)
    assert sum(p.numel() for p in a.model.parameters()) == 1898 and len(a.labels) == 1438
    x, y, xt, yt = digits.load()
    assert len(yt) == 359 and set(y.tolist()) == set(yt.tolist()) == set(range(10))
    assert 0.05 < a.evaluate(a.model)["accuracy"] < 0.3  # random init: about chance
    with pytest.raises(ValueError, match="'width'"):
        tasks.build("digits", width=0)
    with pytest.raises(ValueError, match=r"task 'digits' takes the options \['init_seed', 'width'\], not \['model'\]"):
        tasks.build("digits", model="minilm")


def test_non_finite_loss_names_the_round_and_keeps_the_weights():
    task = toy_task()
    run = _driver(task, ZOWarmUpConfig(**dict(TOY, fo_lr=3e38)))
    before = _flat(task.model)
    with pytest.raises(FloatingPointError, match="round 0"):
        run.advance()
    assert torch.equal(_flat(task.model), before) and run.position == 0


def test_separate_client_replicas_end_bit_identical_to_the_shared_one():
    """Each client on its own model (a warm-up client gets the weights when sampled, every client at the pivot,
    the ZO broadcasts apply FedAdam on each replica): all end on the shared in-process run's weights and bytes."""
    cfg = ZOWarmUpConfig(**dict(TOY, warmup_rounds=2, zo_rounds=2, participation=0.5, server_opt="fedadam",
                                server_lr=0.02))
    shared = _driver(toy_task(), cfg)
    algo = ZOWarmUp(toy_task(), cfg)
    separate = rounds.RoundDriver(algo, rounds.InProcRounds(algo))
    for run in (shared, separate):
        while run.position < run.total:
            run.advance()
    states = [c.state for c in separate.transport.clients.values()]
    assert len({id(s) for s in states}) == cfg.clients
    want = _flat(shared.task.model)
    assert all(torch.equal(_flat(s.model), want) for s in states) and torch.equal(_flat(separate.task.model), want)
    assert separate.counter.totals == shared.counter.totals
