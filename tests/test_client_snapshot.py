"""A client's state as bytes (Client.save_state / load_state) and the Flower ClientApp's node-local state built on
it: a client restored from a snapshot plus the frames after it is bit-identical to one that replayed the whole
log and to one that never stopped, and a damaged snapshot never gives a silently different replica. In-process:
the run's requests to each client are recorded from a real run (sim.run on separate replicas)."""

import copy

import numpy as np
import pytest

from fedtoy import toy_task
from zofed.client import Client, Replica
from zofed.server import ParameterServer
from zofed.strategies.dp_feedsign import DPFeedSign
from zofed.strategies.fedkseed import FedKSeed
from zofed.strategies.feedsign import FeedSign
from zofed.strategies.zo_fedsgd import ZOFedSGD
from zofed.transport import split_frames
from zofed.wire import Ask, PoolState, decode, encode

TASK = toy_task()
STRATEGIES = {  # name: (strategy, steps per round); fedkseed: importance sampling (its seeds depend on the pool's
    # history) and a rebuild every 3 steps
    "feedsign": (lambda: FeedSign(lr=0.05, run_seed=5), 2),
    "fedkseed": (lambda: FedKSeed(lr=0.05, run_seed=5, pool_size=8, sampling="importance", rebase_every=3), 1),
    "zo-fedsgd": (lambda: ZOFedSGD(lr=0.05, run_seed=5), 1),
    "dp-feedsign": (lambda: DPFeedSign(lr=0.05, run_seed=5, epsilon=1.0), 1),
}
AWAY = range(2, 8)  # client 2 misses steps 2..7 (FedKSeed: the server's history starts at 6, it gets a pool state)


def new_client(name: str, cid: int) -> Client:
    strategy = STRATEGIES[name][0]()
    replica = Replica(copy.deepcopy(TASK.model), keep_base=strategy.keeps_base)

    def data(step):
        batch = TASK.batch(np.random.default_rng([step, cid]).integers(0, 240, 16).tolist())
        return [lambda: TASK.losses(replica.model, batch)]

    return Client(cid, replica, strategy, data=data)


_recorded = {}


def recorded(name: str, steps: int = 12) -> dict[int, list[bytes]]:
    """Every request each of 3 clients was sent in a run of `name` (client 2 away for AWAY), once per module."""
    if name not in _recorded:
        make, per_round = STRATEGIES[name]
        server = ParameterServer(make(), 3, secret=1, steps_per_round=per_round)
        clients = {c: new_client(name, c) for c in range(3)}
        requests = {c: [] for c in clients}

        def send(c, request):
            requests[c].append(request)
            return clients[c].handle(request)

        while server.step < steps:
            away = server.step in AWAY
            if away:
                server.set_online(2, False)
            elif 2 not in server.online:
                server.set_online(2, True)
                send(2, b"".join(server.catch_up(2)))
            step = server.step
            for c in server.open_round():
                assert server.receive(c, split_frames(send(c, encode(Ask(step, per_round))))[0])
            frame = server.close()
            for c in sorted(server.online):
                send(c, frame)
        _recorded[name] = requests
    return _recorded[name]


def _log(requests):
    """What a client applies of its requests (its node-local log): the frames that are not Asks."""
    return b"".join(f for r in requests for f in split_frames(r) if not isinstance(decode(f), Ask))


@pytest.mark.parametrize("name", ["feedsign", "fedkseed"])
def test_a_client_restored_from_its_state_equals_one_that_never_stopped(name):
    streams = recorded(name)
    if name == "fedkseed":  # a client that came back through a pool state: its strategy's state came from there
        assert any(isinstance(decode(f), PoolState) for r in streams[2] for f in split_frames(r))
    for cid, requests in streams.items():
        ref = new_client(name, cid)
        replies = [ref.handle(r) for r in requests]  # never stopped
        replayed = new_client(name, cid)
        replayed.handle(_log(requests))  # the whole log replayed
        assert replayed.checksum() == ref.checksum()
        for k in range(len(requests) + 1):
            before = new_client(name, cid)
            for r in requests[:k]:
                before.handle(r)
            restored = new_client(name, cid)
            restored.load_state(before.save_state())
            assert restored.step == before.step
            assert [restored.handle(r) for r in requests[k:]] == replies[k:]  # every later answer, bit for bit
            assert restored.checksum() == ref.checksum()
            assert _strategy_state(restored) == _strategy_state(ref)


def _strategy_state(client) -> dict:
    """The strategy's attributes but the server's catch-up checkpoint and a cache (FedKSeed's _cdf)."""
    return {k: v for k, v in vars(client.strategy).items() if k not in ("checkpoint", "_cdf")}


@pytest.mark.parametrize("name", ["feedsign", "zo-fedsgd", "dp-feedsign"])
def test_strategies_without_a_snapshot_keep_no_state_a_client_state_would_miss(name):
    """Client.save_state keeps a strategy's state through its snapshot() hook; one without keeps none."""
    ref = new_client(name, 0)
    fresh = vars(new_client(name, 0).strategy)
    for r in recorded(name)[0]:
        ref.handle(r)
    assert ref.strategy.snapshot() is None and vars(ref.strategy) == fresh


def _state(name, cid=0, k=4) -> bytes:
    client = new_client(name, cid)
    for r in recorded(name)[cid][:k]:
        client.handle(r)
    return client.save_state()


def test_a_damaged_or_foreign_state_is_refused_by_name():
    state = _state("fedkseed")
    flipped = bytearray(state)
    flipped[-1] ^= 1  # the last weight's last byte
    with pytest.raises(ValueError, match="other weights than it recorded"):
        new_client("fedkseed", 0).load_state(bytes(flipped))
    with pytest.raises(ValueError, match="truncated"):
        new_client("fedkseed", 0).load_state(state[:-1])
    with pytest.raises(ValueError, match="not a zofed client state"):
        new_client("fedkseed", 0).load_state(b"junk" + state)
    with pytest.raises(ValueError, match="client 0's state, not client 1's"):
        new_client("fedkseed", 1).load_state(state)
    with pytest.raises(ValueError, match="of the strategy"):
        new_client("feedsign", 0).load_state(state)
    on_the_way = new_client("fedkseed", 0)
    on_the_way.handle(recorded("fedkseed")[0][1])  # the broadcast of step 0
    with pytest.raises(ValueError, match="into a new client"):
        on_the_way.load_state(state)


def test_a_state_checks_the_base_weights_a_rebuild_starts_from():
    state = _state("fedkseed")
    client = new_client("fedkseed", 0)
    client.replica.base[0].add_(1.0)  # the task built other starting weights than the run's
    with pytest.raises(ValueError, match="base weights"):
        client.load_state(state)
