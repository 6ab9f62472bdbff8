"""zofed.wire: exact sizes, round trips, byte accounting, and fuzzed decoders that only raise WireError."""

import copy
import pickle
import struct
import subprocess
import sys
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zofed.wire import (FRAME_BYTES, MAX_FRAME_BYTES, ByteCounter, Checksum, Dense, PoolState, Scalars, SeedScalars,
                        StepUpdates, Votes, WireError, decode, encode, header, payload_bits)

steps = st.integers(0, 2**63 - 1)
f32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
messages = st.one_of(
    st.builds(Votes, steps, st.lists(st.sampled_from([1, -1]), max_size=70).map(tuple)),
    st.builds(Scalars, steps, st.lists(f32, max_size=20).map(tuple)),
    st.integers(0, 20).flatmap(lambda n: st.builds(
        SeedScalars, steps, st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n).map(tuple),
        st.lists(f32, min_size=n, max_size=n).map(tuple))),
    st.builds(Checksum, steps, st.binary(min_size=16, max_size=16)),
    st.builds(StepUpdates, steps, st.lists(st.lists(st.tuples(st.integers(0, 2**64 - 1), f32), max_size=5).map(tuple),
                                           max_size=6).map(tuple)),
    st.builds(PoolState, steps, st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=20).map(tuple)),
    st.builds(Dense, steps, st.lists(f32, max_size=20).map(lambda v: struct.pack(f"<{len(v)}f", *v))),
)


def test_feedsign_vote_is_one_bit_of_payload():
    frame = encode(Votes(41, (-1,)))
    assert payload_bits(Votes(41, (-1,))) == 1
    assert len(frame) == FRAME_BYTES + 12 + 1  # frame, step/count header, one byte holding the bit
    assert decode(frame) == Votes(41, (-1,))
    assert payload_bits(Votes(0, (1,) * 10_000)) == 10_000
    assert len(encode(Votes(0, (1,) * 10_000))) == FRAME_BYTES + 12 + 1250  # bit-packed


@settings(max_examples=300, deadline=None, derandomize=True)
@given(msg=messages)
def test_round_trip(msg):
    assert decode(encode(msg)) == msg  # the float strategies draw float32-representable values


@settings(max_examples=500, deadline=None, derandomize=True)
@given(data=st.binary(max_size=64))
def test_random_bytes_give_wire_errors_only(data):
    with pytest.raises(WireError):
        decode(data)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(msg=messages, data=st.data())
def test_truncated_extended_or_flipped_frames_are_refused(msg, data):
    frame = bytearray(encode(msg))
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(WireError):
        decode(bytes(frame[:cut]))
    with pytest.raises(WireError, match="oversized|CRC"):
        decode(bytes(frame) + b"\x00")
    pos, bit = data.draw(st.integers(0, len(frame) - 1)), data.draw(st.integers(0, 7))
    frame[pos] ^= 1 << bit
    with pytest.raises(WireError):
        decode(bytes(frame))


def _reframe(kind, body, version=1):
    head = struct.pack("<2sBBI", b"ZF", version, kind, len(body)) + body
    return head + struct.pack("<I", zlib.crc32(head))


@pytest.mark.parametrize("frame,match", [
    (_reframe(1, struct.pack("<QI", 0, 3) + b"\xff"), "padding"),
    (_reframe(1, struct.pack("<QI", 0, 9) + b"\xff"), "body is 13 bytes, its count says 14"),
    (_reframe(2, struct.pack("<QI", 0, 1) + struct.pack("<f", float("nan"))), "non-finite"),
    (_reframe(3, struct.pack("<QI", 0, 2**30)), "exceed the limit"),
    (_reframe(1, struct.pack("<QI", 2**63, 0)), "step"),
    (_reframe(99, b""), "unknown message type 99"),
    (_reframe(1, struct.pack("<QI", 0, 0), version=2), "wire version 2"),
    (b"XY" + _reframe(1, struct.pack("<QI", 0, 0))[2:], "magic"),
    (_reframe(4, b"\x00" * 10), "Checksum body is 10 bytes"),
    ("not bytes", "bytes"),
])
def test_clear_errors(frame, match):
    with pytest.raises(WireError, match=match):
        decode(frame)


def test_encoder_refuses_bad_messages():
    for bad in (lambda: Votes(0, (0,)), lambda: Votes(-1, ()), lambda: Scalars(0, (float("inf"),)),
                lambda: SeedScalars(0, (1,), ()), lambda: SeedScalars(0, (2**64,), (1.0,)),
                lambda: Checksum(0, b"short")):
        with pytest.raises(WireError):
            encode(bad())


def test_byte_counter_counts_exactly_what_was_encoded():
    c = ByteCounter()
    frames = [c.send(3, "up", Votes(t, (1,))) for t in range(5)] + [c.send(3, "down", Votes(0, (1, -1, 1)))]
    up = c.client(3, "up")
    assert up == dict(messages=5, bytes=sum(len(f) for f in frames[:5]), payload_bits=5,
                      framing_bits=8 * sum(len(f) for f in frames[:5]) - 5)
    assert c.client(3, "down")["payload_bits"] == 3
    assert c.client(4, "up")["bytes"] == 0
    with pytest.raises(ValueError, match="direction"):
        c.send(3, "sideways", Votes(0, (1,)))


def test_wire_imports_no_torch():
    subprocess.run([sys.executable, "-c", "import sys, zofed.wire; assert 'torch' not in sys.modules"], check=True,
                   timeout=120)


def test_step_updates_and_pool_state_sizes_and_errors():
    msg = StepUpdates(5, (((1, 0.5), (2, -1.0)), (), ((3, 2.0),)))
    assert payload_bits(msg) == 3 * 96
    assert len(encode(msg)) == FRAME_BYTES + 12 + 3 * 4 + 3 * 12
    assert payload_bits(PoolState(100, (0.25,) * 8)) == 8 * 64
    body = struct.pack("<QI", 0, 2) + struct.pack("<I", 1) + struct.pack("<Qf", 9, 1.0)  # second step missing
    with pytest.raises(WireError, match="ends after 1 of 2 steps"):
        decode(_reframe(5, body))
    body = struct.pack("<QI", 0, 1) + struct.pack("<I", 3) + struct.pack("<Qf", 9, 1.0)
    with pytest.raises(WireError, match="ends inside step 0"):
        decode(_reframe(5, body))
    body = struct.pack("<QI", 0, 1) + struct.pack("<I", 2**31)
    with pytest.raises(WireError, match="exceed the limit"):
        decode(_reframe(5, body))
    with pytest.raises(WireError, match="non-finite"):
        decode(_reframe(6, struct.pack("<QId", 0, 1, float("inf"))))
    with pytest.raises(WireError, match="seed"):
        encode(StepUpdates(0, (((-1, 0.5),),)))


def test_dense_weights():
    data = struct.pack("<3f", 1.0, -2.5, 0.0)
    assert decode(encode(Dense(3, data))) == Dense(3, data) and payload_bits(Dense(3, data)) == 96
    with pytest.raises(WireError, match="non-finite"):
        encode(Dense(0, struct.pack("<f", float("nan"))))
    with pytest.raises(WireError, match="whole float32"):
        encode(Dense(0, b"\x00" * 5))
    with pytest.raises(WireError, match="its count says"):
        decode(_reframe(7, struct.pack("<QI", 0, 2) + data))


def test_frames_over_the_cap_are_refused_from_the_header():
    """The cap is checked on the header's body length, before the frame is read any further (a truncated frame
    that claims a huge body says so, rather than "truncated"); a deployment raises it with max_bytes."""
    head = struct.pack("<2sBBI", b"ZF", 1, 3, MAX_FRAME_BYTES)  # a SeedScalars body of 16 MiB, not sent
    with pytest.raises(WireError, match=f"exceeds the limit of {MAX_FRAME_BYTES} bytes"):
        decode(head)
    msg = SeedScalars(0, tuple(range(100)), (0.5,) * 100)
    frame = encode(msg)
    assert len(frame) == 1224
    with pytest.raises(WireError, match="1224-byte frame exceeds the limit of 1000 bytes"):
        decode(frame, max_bytes=1000)
    assert decode(frame, max_bytes=len(frame)) == msg
    with pytest.raises(WireError, match="1224-byte frame exceeds the limit of 1000 bytes"):
        ByteCounter().receive(0, "up", frame, max_bytes=1000)


def test_header_names_type_and_size_without_reading_the_body():
    frame = bytearray(encode(Votes(3, (1, -1, 1))))
    frame[-1] ^= 0xFF  # a corrupt CRC: the header alone is still readable
    assert header(bytes(frame)) == (Votes, 13)
    for bad, match in ((b"ZF\x01", "truncated"), (_reframe(99, b""), "unknown message type 99")):
        with pytest.raises(WireError, match=match):
            header(bad)


def test_votes_are_kept_bit_packed():
    signs = (1, -1, -1, 1, 1, 1, -1, 1, -1)
    v = Votes(7, signs)
    assert v.count == 9 and v.bits == bytes([0b10111001, 0b0])  # LSB first, 1 = +1
    assert tuple(v.signs) == signs and len(v.signs) == 9 and v.signs[-1] == -1 and v.signs[3] == 1
    assert v.signs == signs and v == Votes(7, list(signs)) != Votes(8, signs)
    assert hash(v) == hash(Votes(7, signs)) and "Votes(7" in repr(v)
    assert copy.deepcopy(v) == pickle.loads(pickle.dumps(v)) == v
    with pytest.raises(IndexError):
        v.signs[9]
    for bad in ((0,), (1, 2), ("+",)):
        with pytest.raises(WireError, match="a vote must be \\+1 or -1"):
            Votes(0, bad)


def test_a_huge_votes_frame_decodes_in_memory_bounded_by_its_size():
    """2**24 votes (the orbit of a 2**24-step FeedSign run, 2 MiB): decoding keeps the packed bytes (no object per
    vote), and FeedSign's steps_of is a lazy sequence; peak traced memory stays within a few frame sizes."""
    import tracemalloc

    from zofed import strategies

    n = 1 << 24
    packed = bytes(range(256)) * (n // 8 // 256)
    frame = _reframe(1, struct.pack("<QI", 0, n) + packed)
    strategy = strategies.make("feedsign", lr=0.1, run_seed=0)
    tracemalloc.start()
    try:
        msg = decode(frame)
        steps = strategy.steps_of(msg)
        assert len(steps) == n and steps[0] == Votes(0, (-1,)) and steps[n - 1] == Votes(n - 1, (1,))
        assert steps[8] == Votes(8, (1,)) and steps[9] == Votes(9, (-1,)) and msg.signs[8 * 255 + 7] == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(frame), peak  # the frame is 2 MiB; one Python object per vote would be > 100 MiB


def test_payload_bits_need_no_reencoding():
    msg = Votes(0, (1,) * 20)
    assert msg.payload_bits() == payload_bits(msg) == 20
    assert SeedScalars(0, (1, 2), (0.5, 0.5)).payload_bits() == 192
    assert StepUpdates(0, (((1, 0.5),), ((2, 1.0), (3, 1.0)))).payload_bits() == 288
