"""A client's state as bytes (Client.save_state / load_state) and the Flower ClientApp's node-local state built on
it: a client restored from a snapshot plus the frames after it is bit-identical to one that replayed the whole
log and to one that never stopped, and a damaged snapshot never gives a silently different replica. In-process:
the run's requests to each client are recorded from a real run (sim.run on separate replicas)."""

import copy

import numpy as np
import pytest

from fedtoy import toy_task
from zofed import sim, tasks
from zofed.client import Client, Replica, make_client, run_config
from zofed.configs import SimConfig
from zofed.server import ParameterServer
from zofed.strategies.dp_feedsign import DPFeedSign
from zofed.strategies.fedkseed import FedKSeed
from zofed.strategies.feedsign import FeedSign
from zofed.strategies.zo_fedsgd import ZOFedSGD
from zofed.transport import InProc, split_frames
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


# the Flower ClientApp's node-local state (zofed.transports.flower_client), driven in this process: each request
# is served by a client rebuilt from the files, as a fresh flwr-clientapp process does

class Recorder(InProc):
    """The in-process transport on separate replicas, keeping every request each client was sent."""

    def __init__(self, task):
        super().__init__(task=task, shared=False)
        self.requests: dict[int, list[bytes]] = {}

    def exchange(self, requests, **kw):
        for c, r in requests.items():
            self.requests.setdefault(c, []).append(r)
        return super().exchange(requests, **kw)


@pytest.fixture(scope="module")
def run():
    """(run config, client 1's requests and what the in-process client replied) of a small feedsign run."""
    pytest.importorskip("flwr")
    task = tasks.build("toy")
    cfg = SimConfig(strategy="feedsign", clients=2, steps=12, steps_per_round=2, lr=0.05, dropout=0.3, seed=5)
    recorder = Recorder(task)
    sim.run(task, cfg, progress=False, transport=recorder)
    rc = run_config(cfg, task)
    ref = make_client(rc, 1)
    requests = recorder.requests[1]
    return rc, requests, [ref.handle(r) for r in requests], ref.checksum()


def _serve(rc, stem, requests):
    from zofed.transports.flower_client import serve

    replies = []
    for r in requests:
        reply, _, client = serve(rc, 1, str(stem), r)
        replies.append(reply)
    return replies, client


def test_the_clientapp_state_replays_only_the_frames_after_it(run, tmp_path, monkeypatch):
    rc, requests, replies, checksum = run
    got, client = _serve(rc, tmp_path / "c1", requests)
    assert got == replies and client.checksum() == checksum
    passes = []
    monkeypatch.setattr(Replica, "apply", lambda self, ops, chunk=4096: passes.append(list(ops)))
    from zofed.transports.flower_client import restore

    _, restored, log = restore(rc, 1, str(tmp_path / "c1"))  # loaded from the state file: nothing to replay
    assert len(log) > 4 and restored.step == 12 and passes == []
    monkeypatch.undo()
    assert restored.checksum() == checksum


def test_a_damaged_clientapp_state_falls_back_to_the_whole_log(run, tmp_path, capsys):
    rc, requests, replies, checksum = run
    stem = tmp_path / "c1"
    half = len(requests) // 2
    _serve(rc, stem, requests[:half])
    state = stem.with_suffix(".state")
    older = state.read_bytes()
    _serve(rc, stem, requests[half:half + 2])
    data = bytearray(state.read_bytes())
    data[-1] ^= 1  # a changed bit: the seal does not hold
    state.write_bytes(bytes(data))
    got, _ = _serve(rc, stem, requests[half + 2:half + 3])
    assert got == replies[half + 2:half + 3] and "does not match its sha256" in capsys.readouterr().err
    state.write_bytes(older)  # a sound state of an earlier message (a kill between the log and the state): the log
    # frames after those it covers are replayed
    got, client = _serve(rc, stem, requests[half + 3:])
    assert got == replies[half + 3:] and client.checksum() == checksum


def test_a_clientapp_state_that_gives_other_weights_falls_back_then_errs_by_name(run, tmp_path, capsys):
    from zofed import atomic
    from zofed.transports.flower_client import StateError, restore

    rc, requests, _, checksum = run
    stem = tmp_path / "c1"
    _serve(rc, stem, requests)
    other = make_client(rc, 1)
    atomic.write_sealed(stem.with_suffix(".state"), b"0\n" + other.save_state())  # covers no frame: all replayed
    assert restore(rc, 1, str(stem))[1].checksum() == checksum  # the state's tail: still the same client
    log = stem.with_suffix(".frames")
    frames = split_frames(log.read_bytes())
    atomic.write_sealed(stem.with_suffix(".state"), b"%d\n" % (len(frames) - 1) + other.save_state())
    assert restore(rc, 1, str(stem))[1].checksum() == checksum  # claims the whole log: refused, the log replayed
    assert "other weights than the log's checksum" in capsys.readouterr().err
    log.write_bytes(b"".join(frames[:-2]) + frames[-1])  # a log without its last frame: not the checksum's weights
    with pytest.raises(StateError, match=r"c1\.frames gave client 1 other weights.*c1\.state: it covers 6 frames "
                                         r"of a log of 5"):
        restore(rc, 1, str(stem))
