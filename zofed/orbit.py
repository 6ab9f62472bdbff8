"""Orbits: a fine-tuned model as its base model's fingerprint plus the log of broadcasts.

File layout (little-endian), no pickle anywhere:

    offset  size  field
    0       4     magic b"ZFOB"
    4       1     orbit format version (1)
    5       1     noise spec version (zokernels.spec.SPEC_VERSION)
    6       32    sha256 of the base weights (client.weights_sha256)
    38      32    sha256 of the final weights
    70      2     n, length of the compressed run config
    72      n     run config: compact UTF-8 JSON (strategy and its options, lr, eps, dist, run seed, steps,
                  task and its options), zlib-compressed (a 10,000-step FeedSign orbit is 1478 bytes)
    72 + n  ...   the broadcasts of steps 0..steps-1 as one zofed.wire frame (the strategy's catch-up
                  history: FeedSign's votes bit-packed)
    end-4   4     CRC-32 of everything before

Replay rebuilds the base model from the task, checks its fingerprint, applies the strategy's ops in
multi-seed chunks (bit-identical to the live run) and checks the final sha256.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

from zokernels import spec

from . import atomic, strategies, wire

MAGIC = b"ZFOB"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<4sBB32s32sH")
_MAX_CONFIG = 1 << 20  # bytes of inflated config: bounds what a corrupt file can make us allocate


class OrbitError(ValueError):
    """An orbit file that is corrupt, from another version, or does not match the model it is replayed on."""


@dataclass(frozen=True)
class Orbit:
    config: dict
    base_sha256: str
    final_sha256: str
    history: wire.Message

    @property
    def steps(self) -> int:
        return self.config["steps"]


def to_bytes(orbit: Orbit) -> bytes:
    config = zlib.compress(json.dumps(orbit.config, sort_keys=True, separators=(",", ":")).encode(), 9)
    if len(config) >= 1 << 16:
        raise OrbitError("the run config does not fit an orbit header (64 KiB)")
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, spec.SPEC_VERSION, bytes.fromhex(orbit.base_sha256),
                      bytes.fromhex(orbit.final_sha256), len(config))
    body = head + config + wire.encode(orbit.history)
    return body + struct.pack("<I", zlib.crc32(body))


def from_bytes(data: bytes) -> Orbit:
    if len(data) < _HEAD.size + 4:
        raise OrbitError(f"truncated orbit: {len(data)} bytes")
    magic, version, spec_version, base, final, n = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise OrbitError("not an orbit file (bad magic)")
    if version != FORMAT_VERSION:
        raise OrbitError(f"orbit format version {version} is not supported (this is version {FORMAT_VERSION})")
    if struct.unpack_from("<I", data, len(data) - 4)[0] != zlib.crc32(data[:-4]):
        raise OrbitError("corrupt orbit: CRC-32 mismatch (truncated or damaged file)")
    if spec_version != spec.SPEC_VERSION:
        raise OrbitError(f"the orbit was made with noise spec version {spec_version}; this zokernels implements "
                         f"version {spec.SPEC_VERSION}, whose noise differs: replay would build another model")
    if _HEAD.size + n > len(data) - 4:
        raise OrbitError("corrupt orbit: the config runs past the end of the file")
    try:
        inflate = zlib.decompressobj()
        text = inflate.decompress(data[_HEAD.size:_HEAD.size + n], _MAX_CONFIG)
        if inflate.unconsumed_tail or not inflate.eof:
            raise ValueError(f"the run config is not a complete zlib stream of at most {_MAX_CONFIG} bytes")
        config = json.loads(text.decode())
        history = wire.decode(data[_HEAD.size + n:-4])
    except (UnicodeDecodeError, ValueError, zlib.error) as exc:  # json and wire errors are ValueErrors
        raise OrbitError(f"corrupt orbit: {exc}") from None
    orbit = Orbit(config, base.hex(), final.hex(), history)
    try:
        _check(orbit)
    except (KeyError, TypeError, ValueError) as exc:
        raise OrbitError(f"corrupt orbit config: {exc!r}") from None
    return orbit


def _check(orbit: Orbit) -> None:
    c = orbit.config
    if not isinstance(c, dict) or not isinstance(c["steps"], int) or not isinstance(c["task_options"], dict):
        raise ValueError("config must be an object with integer 'steps' and object 'task_options'")
    downs = make_strategy(c).steps_of(orbit.history)
    if len(downs) != c["steps"] or (downs and downs[0].first_step != 0):
        raise ValueError(f"the history holds {len(downs)} steps, the config says {c['steps']} from step 0")


def make_strategy(config: dict) -> strategies.Strategy:
    if config["strategy"] == strategies.Broadcasts.name:
        return strategies.Broadcasts()
    return strategies.make(config["strategy"], lr=config["lr"], run_seed=config["run_seed"],
                           **config.get("strategy_options", {}))


def save(path, orbit: Orbit) -> None:
    """Write atomically: a crash leaves the old file or the new one, never a torn one."""
    atomic.write_bytes(path, to_bytes(orbit))


def load(path) -> Orbit:
    with open(path, "rb") as f:
        return from_bytes(f.read())


def info(orbit: Orbit) -> dict:
    return dict(orbit.config, spec_version=spec.SPEC_VERSION, base_sha256=orbit.base_sha256,
                final_sha256=orbit.final_sha256, history_bytes=len(wire.encode(orbit.history)),
                history_payload_bits=wire.payload_bits(orbit.history), size_bytes=len(to_bytes(orbit)))


def replay(orbit: Orbit, task=None, chunk: int = 4096):
    """Rebuild the fine-tuned weights on `task` (default: the task the orbit names, built fresh) and
    verify them; returns the task, whose model now holds the final weights."""
    from . import tasks
    from .client import Replica, weights_sha256

    c = orbit.config
    task = task or tasks.build(c["task"], **c["task_options"])
    got = weights_sha256(task.model)
    if got != orbit.base_sha256:
        raise OrbitError(f"wrong base model: its weights hash to {got[:16]}..., the orbit was recorded on "
                         f"{orbit.base_sha256[:16]}... (another checkpoint, task option or library version)")
    strategy = make_strategy(c)
    replica = Replica(task.model, eps=c["eps"], dist=c["dist"], keep_base=isinstance(strategy, strategies.FedKSeed))
    ops = [op for down in strategy.steps_of(orbit.history) for op in strategy.ops(down.first_step, down)]
    replica.apply(ops, chunk=chunk)
    replica.close()
    got = weights_sha256(task.model)
    if got != orbit.final_sha256:
        raise OrbitError(f"replay ended at weights {got[:16]}..., the orbit recorded {orbit.final_sha256[:16]}...")
    return task
