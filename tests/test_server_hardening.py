"""The parameter server against bad or unlucky clients: checksums decided by majority over a bounded window,
stragglers after close(), strict client ids, replies checked from their header, catch-up frames under the
decode cap, state that restores or is refused. Torch-free: the server never sees a model."""

import json

import pytest

from zofed import strategies, wire
from zofed.seeds import step_seed
from zofed.server import CHECKSUM_WINDOW, ParameterServer
from zofed.wire import Checksum, SeedScalars, Votes, WireError, decode, encode

GOOD, BAD = b"\x01" * 16, b"\x02" * 16


def _feedsign(clients=3, **kw):
    return ParameterServer(strategies.make("feedsign", lr=0.1, run_seed=1), clients, secret=7, **kw)


def _advance(server, steps):
    """Rounds in which every sampled client votes +1; the broadcasts."""
    downs = []
    for _ in range(steps):
        for c in server.open_round():
            server.receive(c, encode(Votes(server.step, (1,))))
        downs.append(decode(server.close()))
    return downs


def test_a_bad_first_checksum_does_not_make_the_honest_replicas_look_wrong():
    server = _feedsign(clients=4)
    _advance(server, 3)
    assert server.checksum(3, encode(Checksum(3, BAD)))  # alone, it is its own majority for now
    assert not server.checksum(0, encode(Checksum(3, GOOD)))  # 1 vs 1: no majority yet
    assert server.mismatches == [dict(step=3, client=0, majority=None), dict(step=3, client=3, majority=None)]
    assert server.checksum(1, encode(Checksum(3, GOOD)))
    assert server.checksum(2, encode(Checksum(3, GOOD)))
    assert server.mismatches == [dict(step=3, client=3, majority=[0, 1, 2])]  # only the bad one


def test_checksum_steps_are_bounded_and_cannot_prune_real_records():
    server = _feedsign()
    _advance(server, 2)
    server.checksum(0, encode(Checksum(2, GOOD)))
    server.checksum(1, encode(Checksum(2, BAD)))
    server.checksum(2, encode(Checksum(2, GOOD)))
    for step in (2**62, 3):
        with pytest.raises(ValueError, match=f"step {step}, but the run is at step 2"):
            server.checksum(0, encode(Checksum(step, GOOD)))
    assert server.mismatches == [dict(step=2, client=1, majority=[0, 2])]  # still there
    with pytest.raises(ValueError, match="already reported another checksum for step 2"):
        server.checksum(1, encode(Checksum(2, GOOD)))
    assert server.checksum(0, encode(Checksum(2, GOOD)))  # the same report again is harmless
    _advance(server, CHECKSUM_WINDOW + 1)  # old steps leave the window, and reports for them are refused
    assert server.checksums == {} and server.mismatches == []
    with pytest.raises(ValueError, match=f"only the last {CHECKSUM_WINDOW} steps"):
        server.checksum(0, encode(Checksum(2, GOOD)))


def test_a_reply_after_close_is_a_straggler():
    server = _feedsign(quorum=1)
    server.open_round()
    assert server.receive(0, encode(Votes(0, (1,))), at=0.1)
    server.close()
    assert not server.receive(1, encode(Votes(0, (-1,))), at=0.5)  # round 0 has closed: ignored
    assert server.stragglers == 1
    with pytest.raises(RuntimeError, match="no round is open"):  # one late reply per client and round
        server.receive(1, encode(Votes(0, (-1,))))
    server.open_round()
    assert not server.receive(2, encode(Votes(0, (1,))))  # late for step 0 while step 1 is open
    assert server.receive(1, encode(Votes(1, (1,))))
    assert server.stragglers == 2
    server.close()
    with pytest.raises(ValueError, match="client 0 answered step 0, which is not open"):
        server.receive(0, encode(Votes(0, (1,))))


@pytest.mark.parametrize("bad", [True, False, 1.0, "1", -1, 3])
def test_client_ids_are_integers_not_bools(bad):
    server = _feedsign()
    server.open_round()
    for call in (lambda: server.receive(bad, encode(Votes(0, (1,)))), lambda: server.set_online(bad, False),
                 lambda: server.checksum(bad, encode(Checksum(0, GOOD))), lambda: server.catch_up(bad),
                 lambda: server.leave(bad)):
        with pytest.raises(ValueError, match="unknown client"):
            call()
    assert server.round["ups"] == {}


def test_replies_are_checked_from_the_header_before_the_body():
    server = ParameterServer(strategies.make("zo-fedsgd", lr=0.1, run_seed=1), 2, secret=7)
    server.open_round()
    huge = encode(SeedScalars(0, tuple(range(1000)), (0.5,) * 1000))  # 12 KB where 36 bytes are expected
    with pytest.raises(ValueError, match="a 12024-byte SeedScalars frame, where a valid one is 36 bytes"):
        server.receive(0, huge)
    corrupt = bytearray(encode(Votes(0, (1,))))
    corrupt[-1] ^= 1  # the type is refused before the CRC is even read
    with pytest.raises(ValueError, match="expected a SeedScalars message, got Votes"):
        server.receive(0, bytes(corrupt))
    with pytest.raises(WireError, match="exceeds the limit"):
        server.receive(0, b"ZF\x01\x03" + (1 << 30).to_bytes(4, "little"))
    assert server.round["ups"] == {}  # nothing was taken
    assert server.receive(0, encode(SeedScalars(0, (step_seed(1, 0, 0),), (0.5,))))


def test_catch_up_frames_fit_the_decode_cap(monkeypatch):
    """A returning client gets its missed broadcasts in frames it can decode with the default cap."""
    import zofed.server as server_module

    monkeypatch.setattr(server_module, "MAX_FRAME_BYTES", 200)
    server = ParameterServer(strategies.make("zo-fedsgd", lr=0.1, run_seed=1), 3, secret=7)
    server.set_online(2, False)
    for t in range(10):
        for c in server.open_round():
            server.receive(c, encode(SeedScalars(t, (step_seed(1, t, c),), (0.25 * c + t,))))
        server.close()
    server.set_online(2, True)
    frames = server.catch_up(2)
    assert len(frames) > 1 and all(len(f) <= 200 for f in frames)
    steps = [d for f in frames for d in server.strategy.steps_of(decode(f, max_bytes=200))]
    assert [d.first_step for d in steps] == list(range(10)) and steps == server.history


def test_state_restores_exactly_and_a_damaged_one_is_refused():
    server = _feedsign(quorum=2, deadline=5.0)
    downs = _advance(server, 3)
    server.checksum(0, encode(Checksum(3, GOOD)))
    server.open_round()
    server.close()  # a round nobody answered: its clients are late, the step is retried
    assert server.late == {0: 3, 1: 3, 2: 3} and server.attempt == 1
    state = json.loads(json.dumps(server.state_dict()))
    other = ParameterServer(strategies.make("feedsign", lr=0.1, run_seed=1), 3)  # a fresh urandom secret
    other.load_state_dict(state, downs)
    assert other.state_dict() == server.state_dict() and other.secret == 7 and other.late == server.late
    for damage in (lambda s: s.pop("secret"), lambda s: s.update(step="3"), lambda s: s.update(synced=[[9, 0]]),
                   lambda s: s.update(checksums=[[3, [[0, "zz"]]]]), lambda s: s.update(online=[True])):
        bad = json.loads(json.dumps(state))
        damage(bad)
        fresh = ParameterServer(strategies.make("feedsign", lr=0.1, run_seed=1), 3, secret=1)
        with pytest.raises(ValueError, match="not a saved server state|does not fit"):
            fresh.load_state_dict(bad, downs)
        assert fresh.step == 0 and fresh.secret == 1  # nothing changed


def test_the_protocol_core_stays_torch_free():
    import subprocess
    import sys

    code = "import sys, zofed.server, zofed.strategies, zofed.wire, zofed.aggregate; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert wire.MAX_FRAME_BYTES == 1 << 24
