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
    SeedScalars  first_step u64, count u32, count x (seed u64, value float32)
    Checksum     step u64, 16-byte digest of a replica's weights
    StepUpdates  first_step u64, count u32, then per step: n u32 and n x (seed u64, value float32);
                 one step's ZO-FedSGD broadcast, or a catch-up history of many steps
    PoolState    step u64, count u32, count float64: a seed pool's accumulated coefficients (FedKSeed
                 catch-up); float64 because every replica sums the same broadcast values in that precision
    Dense        step u64, count u32, count float32: a model's weights (FedAvg's exchange, for comparison)

Decoding checks magic, version, type, lengths, CRC, padding and finiteness, and raises WireError
naming the problem; it never returns a silently wrong value.
"""

from __future__ import annotations

import math
import struct
from array import array
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Union

MAGIC = b"ZF"
WIRE_VERSION = 1
_HEADER = struct.Struct("<2sBBI")
_CRC = struct.Struct("<I")
FRAME_BYTES = _HEADER.size + _CRC.size  # 12
MAX_COUNT = 1 << 24  # entries per message; bounds what a corrupt count can make us allocate
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


def _pack_values(step, values, code: str) -> tuple[bytes, int]:
    """A (step, count) head and finite values packed as struct `code` ("f" float32, "d" float64)."""
    n = len(values)
    head = _run_head(step, n)
    _finite(values)
    return head + struct.pack(f"<{n}{code}", *values), 8 * struct.calcsize(code) * n


def _unpack_values(body: bytes, code: str, what: str) -> tuple[int, tuple[float, ...]]:
    step, n = _run(body)
    _exact(body, _RUN.size + struct.calcsize(code) * n, what)
    values = struct.unpack_from(f"<{n}{code}", body, _RUN.size)
    _finite(values)
    return step, values


@dataclass(frozen=True)
class Votes:
    """Signs (+1/-1) for consecutive steps from first_step: 1 bit of payload each."""

    first_step: int
    signs: tuple[int, ...]
    TYPE = 1

    def body(self) -> tuple[bytes, int]:
        n = len(self.signs)
        head = _run_head(self.first_step, n)
        packed = bytearray((n + 7) // 8)
        for i, s in enumerate(self.signs):
            if s not in (1, -1):
                raise WireError(f"a vote must be +1 or -1, got {s!r}")
            if s == 1:
                packed[i // 8] |= 1 << (i % 8)
        return head + bytes(packed), n

    @classmethod
    def parse(cls, body: bytes) -> "Votes":
        first, n = _run(body)
        need = _RUN.size + (n + 7) // 8
        _exact(body, need, "Votes")
        packed = body[_RUN.size:]
        if n % 8 and packed[-1] >> (n % 8):
            raise WireError("Votes: padding bits after the last vote are not zero")
        return cls(first, tuple(1 if packed[i // 8] >> (i % 8) & 1 else -1 for i in range(n)))


@dataclass(frozen=True)
class Scalars:
    """One float32 projection per consecutive step from first_step: 32 bits of payload each."""

    first_step: int
    values: tuple[float, ...]
    TYPE = 2

    def body(self) -> tuple[bytes, int]:
        return _pack_values(self.first_step, self.values, "f")

    @classmethod
    def parse(cls, body: bytes) -> "Scalars":
        return cls(*_unpack_values(body, "f", "Scalars"))


@dataclass(frozen=True)
class SeedScalars:
    """(seed, float32 value) pairs for consecutive steps: 96 bits of payload each."""

    first_step: int
    seeds: tuple[int, ...]
    values: tuple[float, ...]
    TYPE = 3

    def body(self) -> tuple[bytes, int]:
        n = len(self.seeds)
        head = _run_head(self.first_step, n)
        if len(self.values) != n:
            raise WireError(f"SeedScalars: {n} seeds but {len(self.values)} values")
        for s in self.seeds:
            _check_seed(s)
        _finite(self.values)
        pairs = b"".join(struct.pack("<Qf", s, v) for s, v in zip(self.seeds, self.values))
        return head + pairs, 96 * n

    @classmethod
    def parse(cls, body: bytes) -> "SeedScalars":
        first, n = _run(body)
        _exact(body, _RUN.size + 12 * n, "SeedScalars")
        pairs = [struct.unpack_from("<Qf", body, _RUN.size + 12 * i) for i in range(n)]
        values = tuple(v for _, v in pairs)
        _finite(values)
        return cls(first, tuple(s for s, _ in pairs), values)


@dataclass(frozen=True)
class Checksum:
    """A replica's 16-byte weight digest at a step: 128 bits of payload."""

    step: int
    digest: bytes
    TYPE = 4

    def body(self) -> tuple[bytes, int]:
        _check_step(self.step)
        if not isinstance(self.digest, bytes) or len(self.digest) != 16:
            raise WireError("a checksum digest is 16 bytes")
        return struct.pack("<Q", self.step) + self.digest, 128

    @classmethod
    def parse(cls, body: bytes) -> "Checksum":
        _exact(body, 24, "Checksum")
        return cls(_check_step(struct.unpack_from("<Q", body)[0]), bytes(body[8:]))


def _check_seed(s) -> int:
    if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**64:
        raise WireError(f"a seed must be an integer in [0, 2**64), got {s!r}")
    return s


@dataclass(frozen=True)
class StepUpdates:
    """For consecutive steps from first_step, each step's (seed, float32 value) pairs: 96 bits of payload
    per pair (the per-step pair counts are framing)."""

    first_step: int
    steps: tuple[tuple[tuple[int, float], ...], ...]
    TYPE = 5

    def body(self) -> tuple[bytes, int]:
        parts, pairs = [_run_head(self.first_step, len(self.steps))], 0
        for step in self.steps:
            _check_count(len(step))
            parts.append(struct.pack("<I", len(step)))
            for seed, value in step:
                _finite((value,))
                parts.append(struct.pack("<Qf", _check_seed(seed), value))
            pairs += len(step)
        _check_count(pairs)
        return b"".join(parts), 96 * pairs

    @classmethod
    def parse(cls, body: bytes) -> "StepUpdates":
        first, n = _run(body)
        pos, steps, pairs = _RUN.size, [], 0
        for _ in range(n):
            if pos + 4 > len(body):
                raise WireError(f"StepUpdates body ends after {len(steps)} of {n} steps")
            (k,) = struct.unpack_from("<I", body, pos)
            pairs = _check_count(pairs + k)
            if pos + 4 + 12 * k > len(body):
                raise WireError(f"StepUpdates body ends inside step {len(steps)} ({k} pairs)")
            step = tuple(struct.unpack_from("<Qf", body, pos + 4 + 12 * i) for i in range(k))
            _finite([v for _, v in step])
            steps.append(step)
            pos += 4 + 12 * k
        _exact(body, pos, "StepUpdates")
        return cls(first, tuple(steps))


@dataclass(frozen=True)
class PoolState:
    """A seed pool's accumulated coefficients as of `step` (float64): 64 bits of payload each."""

    step: int
    values: tuple[float, ...]
    TYPE = 6

    def body(self) -> tuple[bytes, int]:
        return _pack_values(self.step, self.values, "d")

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

    def body(self) -> tuple[bytes, int]:
        if not isinstance(self.data, bytes) or len(self.data) % 4:
            raise WireError("Dense data must be bytes holding whole float32 values")
        n = len(self.data) // 4
        _finite(array("f", self.data))
        return _RUN.pack(_check_step(self.step), n) + self.data, 32 * n

    @classmethod
    def parse(cls, body: bytes) -> "Dense":
        if len(body) < _RUN.size:
            raise WireError(f"body of {len(body)} bytes is shorter than its {_RUN.size}-byte step/count header")
        step, n = _RUN.unpack_from(body)
        _exact(body, _RUN.size + 4 * n, "Dense")
        data = bytes(body[_RUN.size:])
        _finite(array("f", data))
        return cls(_check_step(step), data)


MESSAGES = {cls.TYPE: cls for cls in (Votes, Scalars, SeedScalars, Checksum, StepUpdates, PoolState, Dense)}
Message = Union[Votes, Scalars, SeedScalars, Checksum, StepUpdates, PoolState, Dense]


def _run(body: bytes) -> tuple[int, int]:
    if len(body) < _RUN.size:
        raise WireError(f"body of {len(body)} bytes is shorter than its {_RUN.size}-byte step/count header")
    first, n = _RUN.unpack_from(body)
    return _check_step(first), _check_count(n)


def _exact(body: bytes, need: int, what: str) -> None:
    if len(body) != need:
        raise WireError(f"{what} body is {len(body)} bytes, its count says {need}")


def _finite(values) -> None:
    for v in values:
        if not math.isfinite(v):
            raise WireError(f"a projection is {v}: non-finite values are refused (NaN loss upstream?)")


def encode(msg: Message) -> bytes:
    """The frame of a message."""
    body, _ = msg.body()
    head = _HEADER.pack(MAGIC, WIRE_VERSION, msg.TYPE, len(body)) + body
    return head + _CRC.pack(zlib.crc32(head))


def payload_bits(msg: Message) -> int:
    return msg.body()[1]


def decode(frame: bytes) -> Message:
    """The message in a frame; WireError for anything that is not exactly one valid frame."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise WireError(f"a frame is bytes, got {type(frame).__name__}")
    frame = bytes(frame)
    if len(frame) < FRAME_BYTES:
        raise WireError(f"truncated frame: {len(frame)} bytes, a frame has at least {FRAME_BYTES}")
    magic, version, kind, n = _HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise WireError(f"not a zofed frame (magic {magic!r})")
    if version != WIRE_VERSION:
        raise WireError(f"wire version {version} is not supported (this is version {WIRE_VERSION})")
    if kind not in MESSAGES:
        raise WireError(f"unknown message type {kind}")
    if len(frame) != FRAME_BYTES + n:
        what = "truncated" if len(frame) < FRAME_BYTES + n else "oversized"
        raise WireError(f"{what} frame: {len(frame)} bytes for a body of {n}")
    (crc,) = _CRC.unpack_from(frame, _HEADER.size + n)
    if crc != zlib.crc32(frame[: _HEADER.size + n]):
        raise WireError("corrupt frame: CRC-32 mismatch")
    return MESSAGES[kind].parse(frame[_HEADER.size: _HEADER.size + n])


class ByteCounter:
    """Exact traffic per (client, direction): bytes on the wire, payload bits, framing bits."""

    def __init__(self):
        self.totals = defaultdict(lambda: dict(messages=0, bytes=0, payload_bits=0, framing_bits=0))

    def send(self, client: int, direction: str, msg: Message) -> bytes:
        """Encode msg and count it; direction is "up" (client to server) or "down"."""
        frame = encode(msg)
        self._count(client, direction, frame, msg)
        return frame

    def receive(self, client: int, direction: str, frame: bytes) -> Message:
        """Decode a frame that arrived and count it (a frame that does not decode raises WireError)."""
        msg = decode(frame)
        self._count(client, direction, frame, msg)
        return msg

    def _count(self, client, direction, frame, msg) -> None:
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        t = self.totals[(client, direction)]
        bits = payload_bits(msg)
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
