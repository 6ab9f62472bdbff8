"""The transport seam on the in-process transport: real Clients answer rounds through Client.handle, bytes are
counted from the frames that cross, and one shared replica is bit-identical to separate ones."""

import pytest

from fedtoy import toy_task
from zofed.client import run_config
from zofed.configs import SimConfig
from zofed.server import ParameterServer
from zofed.transport import InProc, split_frames
from zofed.wire import Ask, Checksum, Report, Votes, WireError, decode, encode


def _rounds(shared, steps=6, **kw):
    task = toy_task()
    cfg = SimConfig(**dict(dict(strategy="feedsign", clients=3, steps=steps, lr=0.05, batch=8, seed=3), **kw))
    transport = InProc(task=task, shared=shared)
    transport.start(run_config(cfg, task), [0, 1, 2])
    server = ParameterServer(cfg.make_strategy(), 3, secret=1)
    with transport:
        while server.step < steps:
            sampled = server.open_round()
            replies = transport.exchange({c: encode(Ask(server.step, 1)) for c in sampled})
            for c, reply in replies.items():
                frames = split_frames(reply)
                assert type(decode(frames[-1])) is Report
                assert server.receive(c, frames[0])
            frame = server.close()
            assert transport.exchange({c: frame for c in sorted(server.online)}) == {0: b"", 1: b"", 2: b""}
        counts = {c: (transport.counter.client(c, "up"), transport.counter.client(c, "down")) for c in range(3)}
        sums = transport.exchange({c: encode(Ask(server.step, 0)) for c in range(3)})  # a Checksum is counted
        assert transport.counter.client(0, "up")["bytes"] == counts[0][0]["bytes"] + Checksum.frame_bytes()
    return {c: decode(f) for c, f in sums.items()}, counts


def test_feedsign_rounds_count_one_bit_each_way_and_replicas_agree():
    sums, counts = _rounds(shared=False)
    assert len({s.digest for s in sums.values()}) == 1 and {s.step for s in sums.values()} == {6}
    for up, down in counts.values():  # Asks and Reports are control: the 25-byte Votes frames alone are counted
        assert up == down == dict(messages=6, bytes=6 * 25, payload_bits=6, framing_bits=6 * 199)


@pytest.mark.parametrize("kw", [dict(strategy="feedsign"), dict(strategy="zo-fedsgd"),
                                dict(strategy="fedkseed", pool_size=8)])
def test_shared_replica_is_bit_identical_to_separate_replicas(kw):
    assert _rounds(shared=True, **kw)[0] == _rounds(shared=False, **kw)[0]


def test_split_frames_refuses_a_truncated_sequence():
    two = encode(Votes(0, (1,))) + encode(Votes(1, (-1,)))
    assert [decode(f) for f in split_frames(two)] == [Votes(0, (1,)), Votes(1, (-1,))]
    with pytest.raises(WireError, match="truncated frame at byte 25"):
        split_frames(two[:-1])


def test_a_client_refuses_a_frame_that_is_not_for_it():
    task = toy_task()
    with InProc(task=task, shared=False) as transport:
        transport.start(run_config(SimConfig(clients=1, steps=2), task), [0])
        with pytest.raises(ValueError, match="is on step 0, asked to answer step 3"):
            transport.exchange({0: encode(Ask(3, 1))})
        with pytest.raises(ValueError, match="a Checksum frame is a client's to send"):
            transport.exchange({0: encode(Checksum(0, bytes(16)))})


def test_the_server_side_of_a_run_imports_no_torch():
    """What a Flower ServerApp runs: the run loop, the step driver, the server, strategies, wire, the seam."""
    import subprocess
    import sys

    code = ("import sys; import zofed.loop, zofed.sim, zofed.server, zofed.strategies, zofed.transport, zofed.orbit; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
