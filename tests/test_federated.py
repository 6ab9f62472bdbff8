"""zofed server, clients and strategies with separate replicas: exact catch-up, checksums, rounds, bytes."""

import copy
import subprocess
import sys

import pytest
import torch

from fedtoy import toy_task
from zofed import strategies
from zofed.client import Client, Replica
from zofed.seeds import step_seed
from zofed.server import CatchUpError, ParameterServer
from zofed.wire import PoolState, SeedScalars, StepUpdates, Votes, WireError, decode, encode

CASES = [("feedsign", {}), ("dp-feedsign", dict(epsilon=2.0)), ("zo-fedsgd", {}),
         ("zo-fedsgd", dict(aggregator="median")), ("zo-fedsgd", dict(aggregator="trimmed-mean")),
         ("fedkseed", dict(pool_size=8, rebase_every=4)), ("fedkseed", dict(pool_size=8, sampling="importance",
                                                                            rebase_every=4))]


def _setup(name, opts, clients=3):
    task = toy_task()
    make = lambda: strategies.make(name, lr=0.05, run_seed=11, **opts)  # noqa: E731
    server = ParameterServer(make(), clients, secret=99)
    members = [Client(c, Replica(copy.deepcopy(task.model), keep_base=True), make()) for c in range(clients)]

    def closure(c, step):
        idx = [(7 * step + 13 * c + i) % 240 for i in range(16)]
        m = members[c].replica.model
        return lambda: task.losses(m, task.batch(idx)).mean()

    return server, members, closure


def _step(server, members, closure):
    sampled = server.open_round()
    for c in sampled:
        assert server.receive(c, members[c].answer(closure(c, server.step)))
    assert server.ready(0.0)
    frame = server.close()
    for m in members:
        if m.cid in server.online:
            m.receive(frame)
    return frame


@pytest.mark.parametrize("name,opts", CASES, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in CASES])
def test_client_that_misses_steps_catches_up_bit_identical(name, opts):
    server, members, closure = _setup(name, opts)
    start = members[0].replica.digest()
    for t in range(14):
        if t == 2:
            server.set_online(2, False)
        _step(server, members, closure)
    assert members[2].step == 2 and members[2].replica.digest() != members[0].replica.digest()
    server.set_online(2, True)
    frames = server.catch_up(2)
    kinds = [type(decode(f)) for f in frames]
    if name == "fedkseed":  # gone past the last rebuild (step 12): pool accumulators, then the broadcasts since
        assert kinds[0] is PoolState and decode(frames[0]).step == 12
    members[2].catch_up(frames)
    assert members[2].step == members[0].step == 14
    assert members[2].replica.digest() == members[1].replica.digest() == members[0].replica.digest() != start
    for p0, p2 in zip(members[0].replica.params, members[2].replica.params):
        assert torch.equal(p0, p2)
    _step(server, members, closure)  # and it keeps going in lockstep
    assert len({m.replica.digest() for m in members}) == 1
    assert all(server.checksum(m.cid, m.checksum()) for m in members) and not server.mismatches


def test_catch_up_of_feedsign_is_bit_packed():
    server, members, closure = _setup("feedsign", {})
    server.set_online(1, False)
    for _ in range(20):
        _step(server, members, closure)
    server.set_online(1, True)
    (frame,) = server.catch_up(1)
    assert decode(frame) == Votes(0, tuple(decode(encode(h)).signs[0] for h in server.history))
    assert decode(frame).payload_bits() == 20
    assert len(frame) == 12 + 12 + 3  # frame, step/count, 20 bits in 3 bytes


def test_checksum_mismatch_is_detected_and_reported():
    server, members, closure = _setup("zo-fedsgd", {})
    for _ in range(3):
        _step(server, members, closure)
    with torch.no_grad():
        p = members[1].replica.params[0]
        p.view(-1)[0] = torch.nextafter(p.view(-1)[0], torch.tensor(1.0))  # one ulp off
    assert server.checksum(0, members[0].checksum())
    assert not server.checksum(1, members[1].checksum())
    assert server.checksum(2, members[2].checksum())
    assert server.mismatches == [dict(step=3, client=1, majority=[0, 2])]


def test_history_is_trimmed_by_active_clients_only():
    server, members, closure = _setup("feedsign", {})
    server.set_online(2, False)
    for _ in range(5):
        _step(server, members, closure)
    assert server.history_start == 0 and len(server.history) == 5  # client 2 may come back
    server.leave(2)
    assert server.history_start == 5 and server.history == []  # nobody active needs them now
    with pytest.raises(CatchUpError, match="needs the broadcasts from step 0.*from step 5"):
        server.catch_up(2)


def test_quorum_deadline_stragglers_and_retries():
    task = toy_task()
    make = lambda: strategies.make("feedsign", lr=0.05, run_seed=1)  # noqa: E731
    server = ParameterServer(make(), 4, quorum=2, deadline=1.0)
    up = lambda s, c: encode(make().up(s, c, 0.5))  # noqa: E731
    sampled = server.open_round()
    assert sampled == [0, 1, 2, 3]
    assert server.receive(2, up(0, 2), at=0.1) and not server.ready(0.1)
    assert server.receive(0, up(0, 0), at=0.3) and server.ready(0.3)  # the quorum closes it
    assert not server.receive(1, up(0, 1), at=0.5)  # a straggler: ignored
    assert server.stragglers == 1
    assert server.close() is not None and server.step == 1
    server.open_round()
    assert not server.receive(3, up(1, 3), at=1.5)  # past the deadline
    assert server.ready(1.5) and server.close() is None  # nobody in time: the step is retried
    assert server.step == 1 and server.attempt == 1
    del task


def test_sampling_is_deterministic_and_respects_participation():
    make = lambda: strategies.make("feedsign", lr=0.05, run_seed=1)  # noqa: E731
    picks = []
    for _ in range(2):
        server = ParameterServer(make(), 20, participation=0.3, secret=5)
        rounds = []
        for t in range(30):
            s = server.open_round()
            rounds.append(s)
            for c in s:
                server.receive(c, encode(Votes(t, (1,))))
            server.close()
        picks.append(rounds)
    assert picks[0] == picks[1]
    sizes = [len(r) for r in picks[0]]
    assert all(s >= 1 for s in sizes) and 3 <= sum(sizes) / len(sizes) <= 9  # 6 expected of 20


def test_server_refuses_bad_replies_as_they_arrive():
    make = lambda: strategies.make("zo-fedsgd", lr=0.05, run_seed=1)  # noqa: E731
    server = ParameterServer(make(), 3, participation=1.0)
    server.open_round()
    with pytest.raises(WireError):
        server.receive(0, b"ZF\x01garbage")
    good = SeedScalars(0, (step_seed(1, 0, 0),), (0.5,))
    server.receive(0, encode(good))
    with pytest.raises(ValueError, match="twice"):
        server.receive(0, encode(good))
    with pytest.raises(ValueError, match="client 1 sent seed"):
        server.receive(1, encode(SeedScalars(0, (123,), (0.5,))))
    with pytest.raises(ValueError, match="step 7, the round is step 0"):
        server.receive(2, encode(SeedScalars(7, (step_seed(1, 7, 2),), (0.5,))))
    with pytest.raises(ValueError, match="expected a SeedScalars message, got Votes"):
        server.receive(2, encode(Votes(0, (1,))))
    frame = server.close()  # the refused replies do not spoil the round
    assert decode(frame) == StepUpdates(0, (((step_seed(1, 0, 0), 0.5),),))
    with pytest.raises(ValueError, match="unknown client"):
        server.set_online(9, True)


def test_byzantine_messages():
    fs = strategies.make("feedsign", lr=0.1, run_seed=3)
    assert fs.up(0, 0, 0.7, byzantine=True) == Votes(0, (-1,)) and fs.up(0, 0, 0.7) == Votes(0, (1,))
    ups = {c: fs.up(0, c, 0.7, byzantine=c == 4) for c in range(5)}
    assert fs.aggregate(0, ups) == Votes(0, (1,))  # one reversed sign of five is outvoted
    zo = strategies.make("zo-fedsgd", lr=0.1, run_seed=3, byzantine_scale=10.0)
    values = [zo.up(t, 4, 0.7, byzantine=True).values[0] for t in range(200)]
    assert all(-10 <= v <= 10 for v in values) and max(values) > 8 and min(values) < -8


def test_dp_feedsign_randomizes_the_broadcast_with_the_server_secret():
    st = strategies.make("dp-feedsign", lr=0.1, run_seed=3, epsilon=0.5)
    ups = {c: Votes(t, (1,)) for c in range(3) for t in [0]}
    outs = [st.aggregate(0, ups, secret=s).signs[0] for s in range(400)]
    p = 1 / (1 + torch.exp(torch.tensor(-0.5 * 3 / 2))).item()  # sigmoid(eps * sum / 2)
    assert abs(outs.count(1) / 400 - p) < 0.08
    assert st.aggregate(0, ups, secret=5) == st.aggregate(0, ups, secret=5)


def test_server_and_strategies_import_no_torch():
    code = "import sys, zofed.server, zofed.strategies, zofed.wire; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
