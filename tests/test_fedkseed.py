"""FedKSeed (Qin et al. 2024): the published importance sampling rule against a plain transcription of it, local
steps per round, data-size client weights; replicas stay bit-identical and catch up through the pool state.

The transcription below is FedKSeed's server rule (its calculate_probabilities): each candidate's history of
scalar gradients starts with grad_initial = 0; importance = mean |clip(g, -c, c)| over the history; the
importances are min-max normalized (its code adds 1e-10 to the range) and p = softmax."""

import copy
import math
import struct

import numpy as np
import pytest
import torch

from fedtoy import toy_task
from zofed import strategies
from zofed.client import Client, Replica
from zofed.server import ParameterServer
from zofed.wire import SeedScalars, StepUpdates, decode, encode


def fedkseed_probabilities(histories, clip):
    """FedKSeed's rule, transcribed: softmax(min_max_norm(mean(|clip(history)|)))."""
    amp = np.array([np.mean(np.abs(np.clip(h, -clip, clip))) for h in histories])
    norm = (amp - amp.min()) / (amp.max() + 1e-10 - amp.min())
    e = np.exp(norm - norm.max())
    return e / e.sum()


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _feed(st, broadcasts):
    """Apply broadcasts of (candidate index, value) pairs, one list per step; the histories as FedKSeed keeps them."""
    histories = [[0.0] for _ in st.pool]
    for t, pairs in enumerate(broadcasts):
        st.ops(t, StepUpdates(t, (tuple((st.pool[j], v) for j, v in pairs),)))
        for j, v in pairs:
            histories[j].append(v)
    return histories


BROADCASTS = [[(0, 5.0), (1, 0.25)], [(0, -5.0), (2, 0.5)], [(2, -0.5), (3, 1.5), (1, 0.125)], [(4, -0.75), (1, 3.0)]]


def test_importance_probabilities_follow_the_published_rule():
    st = strategies.make("fedkseed", lr=0.1, run_seed=3, pool_size=6, sampling="importance", rebase_every=1000,
                         clip=2.0)
    assert st.probabilities() == [1 / 6] * 6  # no history yet: uniform
    histories = _feed(st, BROADCASTS)
    got = st.probabilities()
    np.testing.assert_allclose(got, fedkseed_probabilities(histories, 2.0), rtol=1e-9)
    assert max(got) / min(got) <= math.e * (1 + 1e-12)
    # candidate 0's gradients cancel (+5, -5: accumulator 0) yet it is the most important (|clip| 2 each)
    assert st.acc[0] == 0.0 and got[0] == max(got)
    assert got[5] == min(got)  # never used: only the initial 0


def test_sampling_draws_candidates_with_those_probabilities():
    """12000 draws (fixed hashes): each candidate's share within 4 standard errors of its probability."""
    st = strategies.make("fedkseed", lr=0.1, run_seed=3, pool_size=6, sampling="importance", rebase_every=1000,
                         clip=2.0)
    _feed(st, BROADCASTS)
    p = st.probabilities()
    picks = [st.pool.index(st.seed_for(t, c, h)) for t in range(1000) for c in range(4) for h in range(3)]
    for j in range(6):
        share, se = picks.count(j) / len(picks), math.sqrt(p[j] * (1 - p[j]) / len(picks))
        assert abs(share - p[j]) < 4 * se, (j, share, p[j])


def _setup(clients=3, **opts):
    task = toy_task()
    make = lambda: strategies.make("fedkseed", lr=0.05, run_seed=11, pool_size=8, **opts)  # noqa: E731
    server = ParameterServer(make(), clients, secret=99)
    members = [Client(c, Replica(copy.deepcopy(task.model), keep_base=True), make()) for c in range(clients)]

    def closures(c, step):
        def closure(h):
            idx = [(7 * step + 13 * c + 5 * h + i) % 240 for i in range(16)]
            return lambda: task.losses(members[c].replica.model, task.batch(idx)).mean()
        return [closure(h) for h in range(members[c].strategy.local_steps)]

    return task, server, members, closures


def _round(server, members, closures):
    for c in server.open_round():
        cl = closures(c, server.step)
        assert server.receive(c, members[c].answer(cl if len(cl) > 1 else cl[0]))
    frame = server.close()
    for m in members:
        if m.cid in server.online:
            m.receive(frame)
    return decode(frame)


def test_local_steps_are_sequential_zo_sgd_steps_from_the_round_weights():
    """A client's H projections equal H plain ZO-SGD steps taken one after another (a transcription with its own
    replica); its weights come back exactly; the round's update is the mean over clients of their summed steps."""
    task, server, members, closures = _setup(local_steps=3, sampling="importance", rebase_every=1000)
    _round(server, members, closures)
    step = server.step
    m = members[1]
    start = [p.detach().clone() for p in m.replica.params]
    reply = decode(m.answer(closures(1, step)))
    assert all(torch.equal(p, s) for p, s in zip(m.replica.params, start))  # restored exactly
    ref = Replica(copy.deepcopy(task.model))  # the client's model has live shadow hooks: copy its weights alone
    ref.model.load_state_dict(m.replica.model.state_dict())
    expected = []
    for h, closure in enumerate(closures(1, step)):
        seed = m.strategy.seed_for(step, 1, h)
        with torch.no_grad():
            plus, minus = ref.evaluate_pair(seed, lambda: task.losses(ref.model, task.batch(
                [(7 * step + 13 + 5 * h + i) % 240 for i in range(16)])).mean())
        g = (float(plus) - float(minus)) / (2 * 1e-3)
        expected.append(_f32(g))
        ref.apply([("update", (seed,), (-0.05 * g,))])
    assert reply.seeds == tuple(m.strategy.seed_for(step, 1, h) for h in range(3))
    assert reply.values == tuple(expected) and len(set(reply.seeds)) > 1
    down = _round(server, members, closures)
    (pairs,) = down.steps
    assert len(pairs) == 9  # 3 clients x 3 local steps
    (op,) = copy.deepcopy(members[0].strategy).ops(step, down)
    assert op[2] == tuple(-0.05 * v / 3 for _, v in pairs)


def test_local_steps_keep_replicas_bit_identical_and_catch_up_through_the_pool():
    task, server, members, closures = _setup(local_steps=2, sampling="importance", rebase_every=4)
    server.set_online(2, False)
    for _ in range(9):
        _round(server, members, closures)
    server.set_online(2, True)
    members[2].catch_up(server.catch_up(2))
    assert len({m.replica.digest() for m in members}) == 1
    assert members[2].strategy.probabilities() == members[0].strategy.probabilities() != [1 / 8] * 8
    _round(server, members, closures)
    assert len({m.replica.digest() for m in members}) == 1


def test_data_size_weights():
    st = strategies.make("fedkseed", lr=0.1, run_seed=3, pool_size=4, data_sizes=(10, 30, 60))
    ups = {c: st.up(0, c, p) for c, p in ((0, 1.5), (2, -0.5))}  # client 1 did not answer
    (pairs,) = st.aggregate(0, ups).steps
    scale = [2 * 10 / 70, 2 * 60 / 70]  # n_clients * size / total size of those that answered
    assert [v for _, v in pairs] == [1.5 * scale[0], -0.5 * scale[1]]
    (op,) = copy.deepcopy(st).ops(0, decode(encode(StepUpdates(0, (pairs,)))))
    assert op[2] == pytest.approx([-0.1 * 10 / 70 * 1.5, -0.1 * 60 / 70 * -0.5], rel=1e-7)  # float32 on the wire
    equal = strategies.make("fedkseed", lr=0.1, run_seed=3, pool_size=4)
    assert [v for _, v in equal.aggregate(0, ups).steps[0]] == [1.5, -0.5]
    with pytest.raises(ValueError, match="client 3 has no data size"):
        st.aggregate(0, {3: st.up(0, 3, 1.0)})


@pytest.mark.parametrize("kw,match", [(dict(local_steps=0), "local_steps"), (dict(clip=0.0), "clip"),
                                      (dict(data_sizes=(3, 0)), "data_sizes"), (dict(sampling="softmax"), "sampling")])
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        strategies.make("fedkseed", lr=0.1, run_seed=3, **kw)


def test_a_reply_with_the_wrong_number_of_local_steps_is_refused_from_its_size():
    st = strategies.make("fedkseed", lr=0.1, run_seed=3, pool_size=4, local_steps=2)
    server = ParameterServer(st, 2, secret=1)
    server.open_round()
    one = SeedScalars(0, (st.seed_for(0, 0),), (0.5,))
    with pytest.raises(ValueError, match="a 36-byte SeedScalars frame, where a valid one is 48 bytes"):
        server.receive(0, encode(one))
    with pytest.raises(ValueError, match="answers 2 projection"):
        st.up(0, 0, 0.5)


def test_sim_config_fields():
    from zofed.configs import SimConfig

    cfg = SimConfig(strategy="fedkseed", pool_local_steps=3, pool_sampling="importance", client_weights="data-size")
    cfg.validate()
    assert cfg.strategy_options() == dict(pool_size=64, sampling="importance", local_steps=3)
    with pytest.raises(ValueError, match="needs the clients' data sizes"):
        cfg.make_strategy()
    assert cfg.make_strategy(data_sizes=[5, 7, 9, 11, 13]).data_sizes == (5, 7, 9, 11, 13)
    for kw, match in ((dict(pool_local_steps=2), "'pool_local_steps' applies to strategy 'fedkseed' only"),
                      (dict(client_weights="data-size"), "'client_weights' applies to strategy 'fedkseed' only"),
                      (dict(server_secret=2**64), "'server_secret' must be an integer in")):
        with pytest.raises(ValueError, match=match):
            SimConfig(strategy="feedsign", **kw).validate()
