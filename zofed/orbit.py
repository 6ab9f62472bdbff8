"""Orbits: a fine-tuned model as its base model's fingerprint plus the log of broadcasts.

File layout (little-endian), no pickle anywhere:

    offset  size  field
    0       4     magic b"ZFOB"
    4       1     orbit format version (1)
    5       1     noise spec version of the run (1 or 2, zokernels.spec.SPEC_VERSIONS; replay uses it)
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

Orbits come from other parties, so loading bounds its work before doing it: a file over `max_bytes`
(default MAX_BYTES, 16 MiB) is refused unread, the config inflates to at most 64 KiB, every config field
is checked by type and range (CONFIG_KEYS; nothing else is accepted), and the history decodes under the
same cap (FeedSign's votes stay bit-packed). Only OrbitError leaves `load` and `from_bytes`. Replay checks the task's options against the
task's declared ranges (zofed.tasks.check_options) before building anything.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import struct
import zlib
from dataclasses import dataclass

from zokernels import spec

from . import atomic, strategies, wire
from .configs import DISTS

MAGIC = b"ZFOB"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<4sBB32s32sH")
# The default cap on an orbit file: 16 MiB holds a 2**24-step FeedSign history (2 MiB) or about 1.4M
# ZO-FedSGD (seed, value) pairs. An orbit you expect to be bigger: load(path, max_bytes=...) or
# `zofed orbit ... --max-bytes N`.
MAX_BYTES = wire.MAX_FRAME_BYTES
_MAX_CONFIG = 1 << 16  # bytes of inflated config (a real one is about 300)
CONFIG_KEYS = ("strategy", "strategy_options", "lr", "eps", "dist", "run_seed", "steps", "task", "task_options")
_FLOAT32_MAX = 3.4028234663852886e38  # lr and eps scale float32 noise
_MAX_OPTIONS = 32


class OrbitError(ValueError):
    """An orbit file that is corrupt, from another version, or does not match the model it is replayed on."""


@dataclass(frozen=True)
class Orbit:
    config: dict
    base_sha256: str
    final_sha256: str
    history: wire.Message
    spec_version: int = 1  # the noise stream the run used (its config's spec_version); the header's byte

    @property
    def steps(self) -> int:
        return self.config["steps"]


def to_bytes(orbit: Orbit) -> bytes:
    config = zlib.compress(json.dumps(orbit.config, sort_keys=True, separators=(",", ":")).encode(), 9)
    if len(config) >= 1 << 16:
        raise OrbitError("the run config does not fit an orbit header (64 KiB)")
    _check_spec_version(orbit.spec_version)
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, orbit.spec_version, bytes.fromhex(orbit.base_sha256),
                      bytes.fromhex(orbit.final_sha256), len(config))
    body = head + config + wire.encode(orbit.history)
    return body + struct.pack("<I", zlib.crc32(body))


def from_bytes(data: bytes, max_bytes: int = MAX_BYTES) -> Orbit:
    """The orbit in `data`, checked whole; OrbitError naming the problem, and nothing else, otherwise."""
    if len(data) > max_bytes:
        raise OrbitError(f"the orbit is larger than the limit of {max_bytes} bytes (for an orbit you expect to be "
                         "this big, raise max_bytes: `zofed orbit ... --max-bytes N`)")
    if len(data) < _HEAD.size + 4:
        raise OrbitError(f"truncated orbit: {len(data)} bytes")
    magic, version, spec_version, base, final, n = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise OrbitError("not an orbit file (bad magic)")
    if version != FORMAT_VERSION:
        raise OrbitError(f"orbit format version {version} is not supported (this is version {FORMAT_VERSION})")
    view = memoryview(data)  # slices without copies: the history may be megabytes
    if struct.unpack_from("<I", data, len(data) - 4)[0] != zlib.crc32(view[:-4]):
        raise OrbitError("corrupt orbit: CRC-32 mismatch (truncated or damaged file)")
    _check_spec_version(spec_version)
    if _HEAD.size + n > len(data) - 4:
        raise OrbitError("corrupt orbit: the config runs past the end of the file")
    config = _parse_config(view[_HEAD.size:_HEAD.size + n])
    strategy = make_strategy(config)
    try:
        history = wire.decode(view[_HEAD.size + n:-4], max_bytes)
        downs = strategy.steps_of(history)  # a lazy sequence where the history is packed (FeedSign's votes)
    except ValueError as exc:  # WireError, or a history of another message type than the strategy's
        raise OrbitError(f"corrupt orbit history: {exc}") from None
    first = downs[0].first_step if len(downs) else 0
    if len(downs) != config["steps"] or first != 0:
        raise OrbitError(f"corrupt orbit: the history holds {len(downs)} steps from step {first}, the config says "
                         f"{config['steps']} from step 0")
    return Orbit(config, base.hex(), final.hex(), history, spec_version)


def _check_spec_version(version) -> None:
    if version not in spec.SPEC_VERSIONS:
        raise OrbitError(f"the orbit was made with noise spec version {version}; this zokernels implements versions "
                         f"{', '.join(map(str, spec.SPEC_VERSIONS))}, whose noise differs: replay would build another "
                         "model")


def _parse_config(compressed: bytes) -> dict:
    inflate = zlib.decompressobj()
    try:
        text = inflate.decompress(compressed, _MAX_CONFIG)
    except zlib.error as exc:
        raise OrbitError(f"corrupt orbit: the run config does not inflate: {exc}") from None
    if inflate.unconsumed_tail or inflate.unused_data or not inflate.eof:
        raise OrbitError(f"corrupt orbit: the run config is not one zlib stream of at most {_MAX_CONFIG} bytes")
    try:
        config = json.loads(text.decode(), parse_constant=_no_constant, object_pairs_hook=_object)
    except RecursionError:  # json's own signal for nesting past the interpreter's depth; a config nests 2 deep
        raise OrbitError("corrupt orbit: the run config nests deeper than a run config does") from None
    except ValueError as exc:  # JSON's errors and UnicodeDecodeError are ValueErrors
        raise OrbitError(f"corrupt orbit: the run config does not parse: {exc}") from None
    _check_config(config)
    return config


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number a run config holds")


def _object(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("an object repeats a key")
    return obj


def _check_config(c) -> None:
    """OrbitError naming the first field of a run config that is missing, unknown, of the wrong type or out
    of range. Options are flat: names to booleans, 64-bit integers, finite numbers or short strings; the
    strategy and the task check their own options' meaning."""
    if not isinstance(c, dict) or sorted(c) != sorted(CONFIG_KEYS):
        got = sorted(c) if isinstance(c, dict) else f"a JSON {type(c).__name__}"
        raise OrbitError(f"corrupt orbit config: it holds {got}, a run config holds {sorted(CONFIG_KEYS)}")
    names = (*sorted(strategies.STRATEGIES), *sorted(n for n, r in strategies.ROUNDS.items() if r.replay))  # as now
    checks = dict(
        strategy=("one of " + ", ".join(names), lambda v: v in names),
        dist=("one of " + ", ".join(DISTS), lambda v: v in DISTS),
        run_seed=("an integer in [0, 2**63)", lambda v: _integer(v) and 0 <= v < 2**63),
        steps=(f"an integer in [1, {wire.MAX_COUNT}]", lambda v: _integer(v) and 1 <= v <= wire.MAX_COUNT),
        lr=("a number in [0, 3.4e38]", lambda v: _number(v) and 0 <= v <= _FLOAT32_MAX),
        eps=("a number in (0, 3.4e38]", lambda v: _number(v) and 0 < v <= _FLOAT32_MAX),
        task=("a string of 1 to 256 characters", lambda v: isinstance(v, str) and 0 < len(v) <= 256),
        strategy_options=(_OPTIONS_ARE, _options), task_options=(_OPTIONS_ARE, _options))
    for name in CONFIG_KEYS:
        must, ok = checks[name]
        if not ok(c[name]):
            raise OrbitError(f"corrupt orbit config: {name!r} must be {must}, got {_shown(c[name])}")


_OPTIONS_ARE = (f"an object of at most {_MAX_OPTIONS} options (names of at most 64 characters; values true/false, "
                "integers in [-2**63, 2**64), finite numbers or strings of at most 256 characters)")


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    """An int or float that converts to a finite float (a 400-digit integer does not)."""
    return (isinstance(v, float) and math.isfinite(v)) or (_integer(v) and abs(v) < 2**1023)


def _options(v) -> bool:
    return isinstance(v, dict) and len(v) <= _MAX_OPTIONS and all(
        isinstance(k, str) and len(k) <= 64 and _option_value(x) for k, x in v.items())


def _option_value(x) -> bool:
    if isinstance(x, (bool, str)):
        return isinstance(x, bool) or len(x) <= 256
    return (_integer(x) and -2**63 <= x < 2**64) or (isinstance(x, float) and math.isfinite(x))


def _shown(v) -> str:
    if isinstance(v, (dict, list)):  # never repr'd: it may nest hundreds deep
        return f"a JSON {'object' if isinstance(v, dict) else 'array'} of {len(v)} entries"
    text = repr(v)
    return text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"


def make_strategy(config: dict) -> strategies.Strategy:
    """The strategy a checked run config names; OrbitError if it does not take the recorded options."""
    name, options = config["strategy"], config["strategy_options"]
    if name in strategies.ROUNDS:  # a round algorithm's orbit holds its final coefficients: replayed as they are
        if options:
            raise OrbitError(f"corrupt orbit config: strategy {name!r} takes no options, got {sorted(options)}")
        return strategies.ROUNDS[name].replay()
    takes = set(inspect.signature(strategies.STRATEGIES[name]).parameters) - {"lr", "run_seed"}
    if set(options) - takes:
        raise OrbitError(f"corrupt orbit config: strategy {name!r} takes the options {sorted(takes)}, "
                         f"not {sorted(set(options) - takes)}")
    try:
        return strategies.make(name, lr=config["lr"], run_seed=config["run_seed"], **options)
    except (TypeError, ValueError) as exc:  # an option of the wrong type ("x" >= 0) or out of the strategy's range
        raise OrbitError(f"corrupt orbit config: strategy {name!r}: {exc}") from None


def save(path, orbit: Orbit) -> None:
    """Write atomically: a crash leaves the old file or the new one, never a torn one."""
    atomic.write_bytes(path, to_bytes(orbit))


def load(path, max_bytes: int = MAX_BYTES) -> Orbit:
    """The orbit in the file at `path`, read no further than max_bytes + 1 (a bigger file, or a device that
    never ends, is refused without reading it whole)."""
    with open(path, "rb") as f:
        return from_bytes(_read_at_most(f, max_bytes + 1), max_bytes)


def _read_at_most(f, limit: int) -> bytes:
    # reads sized by the file's own size (0 for a pipe or device), so a small orbit costs a small buffer
    parts, left, step = [], limit, max(os.fstat(f.fileno()).st_size + 1, 1 << 16)
    while left > 0:
        part = f.read(min(left, step))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def info(orbit: Orbit) -> dict:
    return dict(orbit.config, spec_version=orbit.spec_version, base_sha256=orbit.base_sha256,
                final_sha256=orbit.final_sha256, history_bytes=len(wire.encode(orbit.history)),
                history_payload_bits=wire.payload_bits(orbit.history), size_bytes=len(to_bytes(orbit)))


def replay(orbit: Orbit, task=None, chunk: int = 4096):
    """Rebuild the fine-tuned weights on `task` (default: the task the orbit names, built fresh) and
    verify them; returns the task, whose model now holds the final weights. What can be checked without
    the model is checked before it is built: the strategy and the task's options against their ranges."""
    from . import tasks
    from .client import Replica, weights_sha256

    c = orbit.config
    strategy = make_strategy(c)
    if task is None:
        try:
            tasks.check_options(c["task"], c["task_options"])
        except ValueError as exc:
            raise OrbitError(f"the orbit's task cannot be built here: {exc}") from None
        task = tasks.build(c["task"], **c["task_options"])
    got = weights_sha256(task.model)
    if got != orbit.base_sha256:
        raise OrbitError(f"wrong base model: its weights hash to {got[:16]}..., the orbit was recorded on "
                         f"{orbit.base_sha256[:16]}... (another checkpoint, task option or library version)")
    replica = Replica(task.model, eps=c["eps"], dist=c["dist"], spec_version=orbit.spec_version,
                      keep_base=strategy.keeps_base)
    try:  # ops are generated as the replica consumes them: no object per step is held
        replica.apply((op for down in strategy.steps_of(orbit.history) for op in strategy.ops(down.first_step, down)),
                      chunk=chunk)
    finally:
        replica.close()
    got = weights_sha256(task.model)
    if got != orbit.final_sha256:
        raise OrbitError(f"replay ended at weights {got[:16]}..., the orbit recorded {orbit.final_sha256[:16]}...")
    return task


def check_weights_path(path) -> None:
    """ValueError if `path` cannot name the weights file (a folder): checked before a replay, not after it."""
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder: name the file to write, e.g. "
                         f"{os.path.join(path, 'finetuned.safetensors')}")


def write_weights(path, orbit: Orbit, task) -> tuple[int, int]:
    """Write a replayed task's weights to `path` as safetensors and return (tensors, bytes). Keys are
    task.export's (the names the user's own model gives them; default the model's state_dict), metadata
    records the orbit (format "pt", spec_version, base_sha256, final_sha256, strategy, steps, task,
    task_options as JSON); final_sha256 is zofed.client.weights_sha256 of the task's model, which replay
    verified. Written atomically, as any new file (0666 minus the umask); a missing parent folder is made."""
    from safetensors.torch import save

    check_weights_path(path)
    weights = task.export(task.model) if task.export else task.model.state_dict()
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.items()}
    c = orbit.config
    data = save(state, metadata=dict(format="pt", spec_version=str(orbit.spec_version), base_sha256=orbit.base_sha256,
                                     final_sha256=orbit.final_sha256, strategy=c["strategy"], steps=str(c["steps"]),
                                     task=c["task"], task_options=json.dumps(c["task_options"], sort_keys=True)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic.write_bytes(path, data)
    return len(state), len(data)
