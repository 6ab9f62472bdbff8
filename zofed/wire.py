"""Messages and their exact binary encoding (wire version 1). Imports no torch.

Every message travels in one frame, little-endian:

    offset  size  field
    0       2     magic b"ZF"
    2       1     wire version (1)
    3       1     message type
    4       4     body length n (bytes)
    8       n     body (per type, below)
    8 + n   4     CRC-32 of bytes 0 .. 8+n

Accounting separates the *payload* (the protocol's content: a vote is 1 bit, a projection 32) from
everything else (frame, step numbers, counts, padding), which is *framing*. Bodies:

    Votes        first_step u64, count u32, count sign bits packed LSB-first (1 = +1), zero padding
    Scalars      first_step u64, count u32, count float32 (one projection per step)
    SeedScalars  first_step u64, count u32, count x (seed u64, value float32): one pair per step, or per
                 local step of one round (FedKSeed, FedMeZO)
    Checksum     step u64, 16-byte digest of a replica's weights
    StepUpdates  first_step u64, count u32, then per step: n u32 and n x (seed u64, value float32);
                 one step's ZO-FedSGD broadcast, or a catch-up history of many steps
    PoolState    step u64, count u32, count float64: a seed pool's accumulated coefficients (FedKSeed
                 catch-up); float64 because every replica sums the same broadcast values in that precision
    Dense        step u64, count u32, count float32: a model's weights (FedAvg's exchange, for comparison)
    Ask          step u64, count u32: a transport's request that a client answer `count` steps from `step`
                 (count 0: report its Checksum); control, no payload (zofed.transport)
    Report       step u64, count u32, count float64: a client's training loss at each step it answered;
                 control, no payload (the metrics a transport carries beside the protocol's frames)

Decoding checks magic, version, type, lengths, CRC, padding and finiteness, and raises WireError
naming the problem; it never returns a silently wrong value. Frames come from other parties, so decoding is
bounded before it starts: a frame longer than `max_bytes` (default MAX_FRAME_BYTES, 16 MiB; pass more where
a deployment exchanges bigger frames, e.g. dense weights) is refused from its 8-byte header, and at most
MAX_COUNT entries are decoded per message. Votes stay bit-packed after decoding (a 2**24-step FeedSign
history is its 2 MiB of bits, not an object per vote); `header()` reads a frame's type and size alone, so a
receiver that expects one kind and size of message can refuse anything else before decoding it.
"""

from __future__ import annotations

import math
import struct
from array import array
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

MAGIC = b"ZF"
WIRE_VERSION = 1
_HEADER = struct.Struct("<2sBBI")
_CRC = struct.Struct("<I")
FRAME_BYTES = _HEADER.size + _CRC.size  # 12
MAX_COUNT = 1 << 24  # entries per message; bounds what a corrupt count can make us allocate
MAX_FRAME_BYTES = 1 << 24  # decode()'s default cap on a whole frame: 16 MiB (about 1.4M seed/value pairs)
_RUN = struct.Struct("<QI")  # first_step, count


class WireError(ValueError):
    """A frame or body that does not decode: truncated, oversized, corrupt or from another version."""


def _check_step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 2**63:
        raise WireError(f"step must be an integer in [0, 2**63), got {step!r}")
    return step


def _check_count(count: int) -> int:
    if count > MAX_COUNT:
        raise WireError(f"{count} entries exceed the limit of {MAX_COUNT} per message")
    return count


def _run_head(first_step, count: int) -> bytes:
    """The checked (first_step, count) header that Votes, Scalars and SeedScalars bodies start with."""
    return _RUN.pack(_check_step(first_step), _check_count(count))


def _pack_values(step, values, code: str) -> bytes:
    """A (step, count) head and finite values packed as struct `code` ("f" float32, "d" float64)."""
    n = len(values)
    head = _run_head(step, n)
    _finite(values)
    return head + struct.pack(f"<{n}{code}", *values)


def _unpack_values(body: bytes, code: str, what: str) -> tuple[int, tuple[float, ...]]:
    step, n = _run(body)
    _exact(body, _RUN.size + struct.calcsize(code) * n, what)
    values = struct.unpack_from(f"<{n}{code}", body, _RUN.size)
    _finite(values)
    return step, values


_FLAG = {1: 1, -1: 0}  # a vote's bit
_ASCII = bytes.maketrans(b"\x00\x01", b"01")


class Signs(Sequence):
    """The +1/-1 votes of a Votes message, read from its packed bits on demand (no object per vote)."""

    __slots__ = ("_bits", "_n")

    def __init__(self, bits: bytes, n: int):
        self._bits, self._n = bits, n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(self._n)))
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"vote {i} of {self._n}")
        return 1 if self._bits[i >> 3] >> (i & 7) & 1 else -1

    def __iter__(self):
        for i in range(self._n):
            yield 1 if self._bits[i >> 3] >> (i & 7) & 1 else -1

    def __eq__(self, other) -> bool:
        if isinstance(other, Signs):
            return self._n == other._n and self._bits == other._bits
        return isinstance(other, (tuple, list)) and len(other) == self._n and tuple(self) == tuple(other)

    __hash__ = None

    def __repr__(self) -> str:
        return f"Signs({tuple(self)!r})" if self._n <= 16 else f"Signs(<{self._n} votes>)"


class Votes:
    """Signs (+1/-1) for consecutive steps from first_step: 1 bit of payload each. Held as the packed bits of
    the wire (LSB first, 1 = +1): `signs` reads them on demand, so a long history costs its bits only."""

    TYPE = 1
    __slots__ = ("first_step", "count", "bits")

    def __init__(self, first_step: int, signs: Iterable[int]):
        try:
            flags = bytes(map(_FLAG.__getitem__, signs))
        except (KeyError, TypeError):
            bad = next((s for s in signs if s not in (1, -1)), signs)
            raise WireError(f"a vote must be +1 or -1, got {bad!r}") from None
        n = len(flags)
        bits = int(flags[::-1].translate(_ASCII), 2).to_bytes((n + 7) // 8, "little") if n else b""
        self._set(first_step, n, bits)

    def _set(self, first_step, count, bits) -> None:
        object.__setattr__(self, "first_step", first_step)
        object.__setattr__(self, "count", count)
        object.__setattr__(self, "bits", bits)

    def __setattr__(self, name, value):
        raise AttributeError("Votes is immutable")

    def __reduce__(self):  # copy and pickle through the packed bits
        return Votes.from_bits, (self.first_step, self.count, self.bits)

    @classmethod
    def from_bits(cls, first_step: int, count: int, bits: bytes) -> "Votes":
        """Votes from their packed bits (no per-vote work): WireError unless exactly count bits, zero-padded."""
        if len(bits) != (count + 7) // 8:
            raise WireError(f"Votes: {len(bits)} bytes of bits for {count} votes")
        if count % 8 and bits[-1] >> (count % 8):
            raise WireError("Votes: padding bits after the last vote are not zero")
        v = cls.__new__(cls)
        v._set(first_step, count, bytes(bits))
        return v

    @property
    def signs(self) -> Signs:
        return Signs(self.bits, self.count)

    def __eq__(self, other) -> bool:
        return isinstance(other, Votes) and (self.first_step, self.count, self.bits) == (
            other.first_step, other.count, other.bits)

    def __hash__(self) -> int:
        return hash((Votes, self.first_step, self.count, self.bits))

    def __repr__(self) -> str:
        return f"Votes({self.first_step!r}, {self.signs!r})"

    def payload_bits(self) -> int:
        return self.count

    def body(self) -> bytes:
        return _run_head(self.first_step, self.count) + self.bits

    @classmethod
    def frame_bytes(cls, count: int) -> int:
        return FRAME_BYTES + _RUN.size + (count + 7) // 8

    @classmethod
    def parse(cls, body: bytes) -> "Votes":
        first, n = _run(body)
        _exact(body, _RUN.size + (n + 7) // 8, "Votes")
        return cls.from_bits(first, n, body[_RUN.size:])


@dataclass(frozen=True)
class Scalars:
    """One float32 projection per consecutive step from first_step: 32 bits of payload each."""

    first_step: int
    values: tuple[float, ...]
    TYPE = 2

    def payload_bits(self) -> int:
        return 32 * len(self.values)

    def body(self) -> bytes:
        return _pack_values(self.first_step, self.values, "f")

    @classmethod
    def frame_bytes(cls, count: int) -> int:
        return FRAME_BYTES + _RUN.size + 4 * count

    @classmethod
    def parse(cls, body: bytes) -> "Scalars":
        return cls(*_unpack_values(body, "f", "Scalars"))


@dataclass(frozen=True)
class SeedScalars:
    """(seed, float32 value) pairs from first_step: 96 bits of payload each."""

    first_step: int
    seeds: tuple[int, ...]
    values: tuple[float, ...]
    TYPE = 3

    def payload_bits(self) -> int:
        return 96 * len(self.seeds)

    def body(self) -> bytes:
        n = len(self.seeds)
        head = _run_head(self.first_step, n)
        if len(self.values) != n:
            raise WireError(f"SeedScalars: {n} seeds but {len(self.values)} values")
        for s in self.seeds:
            _check_seed(s)
        _finite(self.values)
        return head + b"".join(_PAIR.pack(s, v) for s, v in zip(self.seeds, self.values))

    @classmethod
    def frame_bytes(cls, count: int) -> int:
        return FRAME_BYTES + _RUN.size + _PAIR.size * count

    @classmethod
    def parse(cls, body: bytes) -> "SeedScalars":
        first, n = _run(body)
        _exact(body, _RUN.size + _PAIR.size * n, "SeedScalars")
        pairs = _pairs(body, _RUN.size, n)
        return cls(first, tuple(s for s, _ in pairs), tuple(v for _, v in pairs))


@dataclass(frozen=True)
class Checksum:
    """A replica's 16-byte weight digest at a step: 128 bits of payload."""

    step: int
    digest: bytes
    TYPE = 4

    def payload_bits(self) -> int:
        return 128

    def body(self) -> bytes:
        _check_step(self.step)
        if not isinstance(self.digest, bytes) or len(self.digest) != 16:
            raise WireError("a checksum digest is 16 bytes")
        return struct.pack("<Q", self.step) + self.digest

    @classmethod
    def frame_bytes(cls, count: int = 1) -> int:
        return FRAME_BYTES + 24

    @classmethod
    def parse(cls, body: bytes) -> "Checksum":
        _exact(body, 24, "Checksum")
        return cls(_check_step(struct.unpack_from("<Q", body)[0]), bytes(body[8:]))


@dataclass(frozen=True)
class Ask:
    """A request that a client answer `count` steps from `step` (a round), or with count 0 report its checksum.
    Control, not protocol content: no payload bits, and transports do not count it (zofed.transport)."""

    step: int
    count: int
    TYPE = 8

    def payload_bits(self) -> int:
        return 0

    def body(self) -> bytes:
        return _run_head(self.step, self.count)

    @classmethod
    def frame_bytes(cls, count: int = 1) -> int:
        return FRAME_BYTES + _RUN.size

    @classmethod
    def parse(cls, body: bytes) -> "Ask":
        _exact(body, _RUN.size, "Ask")
        return cls(*_run(body))


@dataclass(frozen=True)
class Report:
    """A client's training losses at the steps it answered from `step` (for the run's metrics). Control, like
    Ask: no payload bits, not counted."""

    step: int
    values: tuple
    TYPE = 9

    def payload_bits(self) -> int:
        return 0

    def body(self) -> bytes:
        return _pack_values(self.step, self.values, "d")

    @classmethod
    def frame_bytes(cls, count: int) -> int:
        return FRAME_BYTES + _RUN.size + 8 * count

    @classmethod
    def parse(cls, body: bytes) -> "Report":
        return cls(*_unpack_values(body, "d", "Report"))


CONTROL = (Ask, Report)  # frames a transport carries but does not count: they are not the protocol's


def _check_seed(s) -> int:
    if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**64:
        raise WireError(f"a seed must be an integer in [0, 2**64), got {s!r}")
    return s


_PAIR = struct.Struct("<Qf")  # (seed, value)


def _pairs(body: bytes, pos: int, n: int) -> list[tuple[int, float]]:
    """n finite (seed, float32) pairs from body[pos:], unpacked in C (no per-pair Python loop)."""
    pairs = list(_PAIR.iter_unpack(body[pos:pos + _PAIR.size * n]))
    _finite([v for _, v in pairs])
    return pairs


@dataclass(frozen=True)
class StepUpdates:
    """For consecutive steps from first_step, each step's (seed, float32 value) pairs: 96 bits of payload
    per pair (the per-step pair counts are framing)."""

    first_step: int
    steps: tuple[tuple[tuple[int, float], ...], ...]
    TYPE = 5

    def payload_bits(self) -> int:
        return 96 * sum(len(step) for step in self.steps)

    def body(self) -> bytes:
        parts, pairs = [_run_head(self.first_step, len(self.steps))], 0
        for step in self.steps:
            _check_count(len(step))
            parts.append(struct.pack("<I", len(step)))
            for seed, value in step:
                _finite((value,))
                parts.append(_PAIR.pack(_check_seed(seed), value))
            pairs += len(step)
        _check_count(pairs)
        return b"".join(parts)

    @classmethod
    def parse(cls, body: bytes) -> "StepUpdates":
        first, n = _run(body)
        pos, steps, pairs = _RUN.size, [], 0
        for _ in range(n):
            if pos + 4 > len(body):
                raise WireError(f"StepUpdates body ends after {len(steps)} of {n} steps")
            (k,) = struct.unpack_from("<I", body, pos)
            pairs = _check_count(pairs + k)
            if pos + 4 + _PAIR.size * k > len(body):
                raise WireError(f"StepUpdates body ends inside step {len(steps)} ({k} pairs)")
            steps.append(tuple(_pairs(body, pos + 4, k)))
            pos += 4 + _PAIR.size * k
        _exact(body, pos, "StepUpdates")
        return cls(first, tuple(steps))


@dataclass(frozen=True)
class PoolState:
    """A seed pool's accumulated coefficients as of `step` (float64): 64 bits of payload each."""

    step: int
    values: tuple[float, ...]
    TYPE = 6

    def payload_bits(self) -> int:
        return 64 * len(self.values)

    def body(self) -> bytes:
        return _pack_values(self.step, self.values, "d")

    @classmethod
    def frame_bytes(cls, count: int) -> int:
        return FRAME_BYTES + _RUN.size + 8 * count

    @classmethod
    def parse(cls, body: bytes) -> "PoolState":
        return cls(*_unpack_values(body, "d", "PoolState"))


@dataclass(frozen=True)
class Dense:
    """Raw little-endian float32 weights (FedAvg's upload and broadcast): 32 bits of payload each. Kept as
    bytes, since models are large; the limit on entries does not apply (a model is what it is)."""

    step: int
    data: bytes
    TYPE = 7

    def payload_bits(self) -> int:
        return 8 * len(self.data)

    def body(self) -> bytes:
        if not isinstance(self.data, bytes) or len(self.data) % 4:
            raise WireError("Dense data must be bytes holding whole float32 values")
        _finite(array("f", self.data))
        return _RUN.pack(_check_step(self.step), len(self.data) // 4) + self.data

    @classmethod
    def frame_bytes(cls, count: int) -> int:
        return FRAME_BYTES + _RUN.size + 4 * count

    @classmethod
    def parse(cls, body: bytes) -> "Dense":
        if len(body) < _RUN.size:
            raise WireError(f"body of {len(body)} bytes is shorter than its {_RUN.size}-byte step/count header")
        step, n = _RUN.unpack_from(body)
        _exact(body, _RUN.size + 4 * n, "Dense")
        data = bytes(body[_RUN.size:])
        _finite(array("f", data))
        return cls(_check_step(step), data)


MESSAGES = {cls.TYPE: cls for cls in (Votes, Scalars, SeedScalars, Checksum, StepUpdates, PoolState, Dense, Ask, Report)}
Message = Union[Votes, Scalars, SeedScalars, Checksum, StepUpdates, PoolState, Dense, Ask, Report]


def _run(body: bytes) -> tuple[int, int]:
    if len(body) < _RUN.size:
        raise WireError(f"body of {len(body)} bytes is shorter than its {_RUN.size}-byte step/count header")
    first, n = _RUN.unpack_from(body)
    return _check_step(first), _check_count(n)


def _exact(body: bytes, need: int, what: str) -> None:
    if len(body) != need:
        raise WireError(f"{what} body is {len(body)} bytes, its count says {need}")


def _finite(values) -> None:
    if not all(map(math.isfinite, values)):  # in C; the loop below only finds the value to name
        bad = next(v for v in values if not math.isfinite(v))
        raise WireError(f"a projection is {bad}: non-finite values are refused (NaN loss upstream?)")


def encode(msg: Message) -> bytes:
    """The frame of a message."""
    try:
        body = msg.body()
    except (OverflowError, struct.error) as exc:  # e.g. a finite float64 beyond float32's range
        raise WireError(f"{type(msg).__name__}: a value does not fit its field ({exc})") from None
    head = _HEADER.pack(MAGIC, WIRE_VERSION, msg.TYPE, len(body)) + body
    return head + _CRC.pack(zlib.crc32(head))


def payload_bits(msg: Message) -> int:
    return msg.payload_bits()


def header(frame: bytes, max_bytes: int = MAX_FRAME_BYTES) -> tuple[type, int]:
    """(message class, body length) from a frame's 8-byte header alone: magic, version, type and the size cap
    checked (WireError otherwise), the body and CRC not read. decode() starts with it."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise WireError(f"a frame is bytes, got {type(frame).__name__}")
    if len(frame) < _HEADER.size:
        raise WireError(f"truncated frame: {len(frame)} bytes, a frame has at least {FRAME_BYTES}")
    magic, version, kind, n = _HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise WireError(f"not a zofed frame (magic {bytes(magic)!r})")
    if version != WIRE_VERSION:
        raise WireError(f"wire version {version} is not supported (this is version {WIRE_VERSION})")
    if kind not in MESSAGES:
        raise WireError(f"unknown message type {kind}")
    if FRAME_BYTES + n > max_bytes:
        raise WireError(f"a {FRAME_BYTES + n}-byte frame exceeds the limit of {max_bytes} bytes (a receiver that "
                        "expects bigger frames raises max_bytes)")
    return MESSAGES[kind], n


def decode(frame: bytes, max_bytes: int = MAX_FRAME_BYTES) -> Message:
    """The message in a frame of at most max_bytes; WireError for anything that is not exactly one valid frame."""
    cls, n = header(frame, max_bytes)
    frame = bytes(frame)
    if len(frame) != FRAME_BYTES + n:
        what = "truncated" if len(frame) < FRAME_BYTES + n else "oversized"
        raise WireError(f"{what} frame: {len(frame)} bytes for a body of {n}")
    (crc,) = _CRC.unpack_from(frame, _HEADER.size + n)
    if crc != zlib.crc32(memoryview(frame)[: _HEADER.size + n]):
        raise WireError("corrupt frame: CRC-32 mismatch")
    return cls.parse(frame[_HEADER.size: _HEADER.size + n])


class ByteCounter:
    """Exact traffic per (client, direction): bytes on the wire, payload bits, framing bits."""

    def __init__(self):
        self.totals = defaultdict(lambda: dict(messages=0, bytes=0, payload_bits=0, framing_bits=0))

    def send(self, client: int, direction: str, msg: Message) -> bytes:
        """Encode msg and count it; direction is "up" (client to server) or "down"."""
        frame = encode(msg)
        self.count(client, direction, frame, msg)
        return frame

    def receive(self, client: int, direction: str, frame: bytes, max_bytes: int = MAX_FRAME_BYTES) -> Message:
        """Decode a frame that arrived and count it (a frame that does not decode raises WireError)."""
        msg = decode(frame, max_bytes)
        self.count(client, direction, frame, msg)
        return msg

    def count(self, client, direction: str, frame: bytes, msg: Message) -> None:
        """Count a frame (msg's encoding) that crossed the wire."""
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        t = self.totals[(client, direction)]
        bits = msg.payload_bits()
        t["messages"] += 1
        t["bytes"] += len(frame)
        t["payload_bits"] += bits
        t["framing_bits"] += 8 * len(frame) - bits

    def state_dict(self) -> list:
        return [[c, d, dict(t)] for (c, d), t in sorted(self.totals.items())]

    def load_state_dict(self, state: list) -> None:
        self.totals.clear()
        for c, d, t in state:
            self.totals[(c, d)].update(t)

    def client(self, client: int, direction: str) -> dict:
        return dict(self.totals[(client, direction)])
