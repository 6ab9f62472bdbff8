"""Orbits come from other parties: the loader checks every field of the run config by type and range, caps the
file's size before reading it, decodes the history packed, and lets nothing but OrbitError out."""

import json
import struct
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zofed import orbit as orbits
from zofed import wire
from zofed.wire import Scalars, StepUpdates, Votes
from zokernels import spec

CONFIG = dict(strategy="feedsign", strategy_options={}, lr=0.002, eps=0.001, dist="gaussian", run_seed=0, steps=10,
              task="toy", task_options=dict(hidden=8))
VOTES = Votes(0, (1, -1) * 5)


def _orbit_bytes(config_text: str, history=VOTES) -> bytes:
    """A well-framed orbit around any config text (valid CRC), as a tampering party would write it."""
    return _raw_config(zlib.compress(config_text.encode(), 9), history)


def _raw_config(compressed: bytes, history=VOTES) -> bytes:
    head = orbits._HEAD.pack(orbits.MAGIC, orbits.FORMAT_VERSION, spec.SPEC_VERSION, b"\xab" * 32, b"\xcd" * 32,
                             len(compressed))
    return _recrc(head + compressed + wire.encode(history) + b"\0" * 4)


def _recrc(data: bytes) -> bytes:
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


def _with(**fields) -> str:
    return json.dumps(dict(CONFIG, **fields))


def _with_raw(key: str, text: str) -> str:
    """The config with one field's value replaced by raw JSON text (numbers json.dumps would not write)."""
    return _with(**{key: "@@"}).replace('"@@"', text)


def test_a_well_formed_config_loads():
    orbit = orbits.from_bytes(_orbit_bytes(_with()))
    assert orbit.config == CONFIG and orbit.history == VOTES and orbit.base_sha256 == "ab" * 32


BAD = [
    ("deep nesting", "[" * 30_000 + "]" * 30_000, "nests deeper than a run config"),
    # parses or not depending on the stack's depth here; either way an OrbitError, and the array is never repr'd
    ("nesting near the limit", _with_raw("lr", "[" * 950 + "]" * 950), "got a JSON array of 1 entries|nests deeper"),
    ("inflates past 64 KiB", " " * 70_000 + "{}", "not one zlib stream of at most 65536 bytes"),
    ("nested option", _with(task_options=dict(width=[[[1]]])), "'task_options' must be an object of at most 32"),
    ("not an object", "[1, 2]", r"it holds a JSON list, a run config holds \['dist'"),
    ("unknown key", _with(extra=1), r"it holds \[.*'extra'"),
    ("missing key", json.dumps({k: v for k, v in CONFIG.items() if k != "eps"}), r"it holds \['dist', 'lr'"),
    ("repeated key", _with()[:-1] + ', "lr": 5}', "repeats a key"),
    ("lr above 1e308", _with_raw("lr", "1" + "0" * 400), "'lr' must be a number in"),
    ("lr 1e400", _with_raw("lr", "1e400"), "'lr' must be a number in"),
    ("lr NaN", _with_raw("lr", "NaN"), "NaN is not a number a run config holds"),
    ("lr a string", _with(lr="0.1"), "'lr' must be a number"),
    ("lr a bool", _with(lr=True), "'lr' must be a number"),
    ("lr negative", _with(lr=-1.0), r"'lr' must be a number in \[0"),
    ("lr past float32", _with(lr=1e39), r"'lr' must be a number in \[0, 3.4e38\]"),
    ("lr zero for feedsign", _with(lr=0), "strategy 'feedsign': lr must be a positive finite number"),
    ("eps zero", _with(eps=0), r"'eps' must be a number in \(0"),
    ("huge option", _with(strategy="dp-feedsign", strategy_options=dict(epsilon=10**400)), "'strategy_options' must"),
    ("option of another strategy", _with(strategy_options=dict(pool_size=4)),
     r"strategy 'feedsign' takes the options \[.*\], not \['pool_size'\]"),
    ("option of the wrong type", _with(strategy="dp-feedsign", strategy_options=dict(epsilon="x")),
     "strategy 'dp-feedsign'"),
    ("pool too big", _with(strategy="fedkseed", strategy_options=dict(pool_size=2**40)), "pool_size must be"),
    ("fedmezo options", _with(strategy="fedmezo", strategy_options=dict(a=1)), "'fedmezo' takes no options"),
    ("unknown strategy", _with(strategy="fedsomething"), "'strategy' must be one of"),
    ("unknown dist", _with(dist="cauchy"), "'dist' must be one of gaussian"),
    ("seed negative", _with(run_seed=-1), r"'run_seed' must be an integer in \[0, 2\*\*63\)"),
    ("seed 2**64", _with(run_seed=2**64), "'run_seed' must be an integer"),
    ("steps a float", _with(steps=10.0), "'steps' must be an integer"),
    ("steps past a frame", _with(steps=2**40), r"'steps' must be an integer in \[1, 16777216\]"),
    ("task a number", _with(task=3), "'task' must be a string"),
    ("long string option", _with(task_options=dict(name="x" * 10_000)), "'task_options' must be"),
    ("many options", _with(task_options={str(i): i for i in range(33)}), "'task_options' must be"),
    ("not utf-8", None, "does not parse"),
    ("two streams", None, "not one zlib stream"),
]


@pytest.mark.parametrize("why, text, match", BAD, ids=[b[0] for b in BAD])
def test_bad_configs_get_an_orbit_error_naming_the_field(why, text, match):
    if why == "not utf-8":
        data = _raw_config(zlib.compress(b"\xff\xfe{}"))
    elif why == "two streams":
        data = _raw_config(zlib.compress(_with().encode()) + zlib.compress(b"{}"))
    else:
        data = _orbit_bytes(text)
    with pytest.raises(orbits.OrbitError, match=match):
        orbits.from_bytes(data)


def test_the_history_must_be_the_strategys_message_and_length():
    with pytest.raises(orbits.OrbitError, match="corrupt orbit history: a FeedSign history is a Votes message"):
        orbits.from_bytes(_orbit_bytes(_with(), Scalars(0, (0.5,) * 10)))
    with pytest.raises(orbits.OrbitError, match="the history holds 10 steps from step 0, the config says 11 from step 0"):
        orbits.from_bytes(_orbit_bytes(_with(steps=11)))
    with pytest.raises(orbits.OrbitError, match="the history holds 10 steps from step 3, the config says 10 from step 0"):
        orbits.from_bytes(_orbit_bytes(_with(), Votes(3, (1,) * 10)))
    fedmezo = _with(strategy="fedmezo", lr=0.0, steps=2)
    assert orbits.from_bytes(_orbit_bytes(fedmezo, StepUpdates(0, (((1, 0.5),), ((2, 0.25), (3, 1.0)))))).steps == 2


def test_size_cap_refuses_before_reading(tmp_path):
    data = _orbit_bytes(_with())
    assert orbits.MAX_BYTES == 16 << 20
    with pytest.raises(orbits.OrbitError, match=f"larger than the limit of {len(data) - 1} bytes"):
        orbits.from_bytes(data, max_bytes=len(data) - 1)
    path = tmp_path / "orbit"
    path.write_bytes(data)
    assert orbits.load(path, max_bytes=len(data)).history == VOTES
    orbit, peak = _traced_peak(lambda: orbits.load(path))
    assert orbit.history == VOTES and peak < 1 << 20  # a small orbit costs a small buffer, not the 16 MiB cap
    with pytest.raises(orbits.OrbitError, match="larger than the limit of 100 bytes"):
        orbits.load(path, max_bytes=100)
    with pytest.raises(orbits.OrbitError, match="larger than the limit of 1000 bytes"):
        orbits.load("/dev/zero", max_bytes=1000)  # a file that never ends is read no further than the cap


def _traced_peak(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_2_24_step_feedsign_orbit_loads_in_memory_bounded_by_its_size():
    """The issue's 2 MiB orbit of 2**24 steps took 3.1 GiB (an object per step); the history stays packed:
    stated bound 4 x the file (measured 3.0x: the frame is copied twice while decoding)."""
    n = 1 << 24
    bits = bytes(range(256)) * (n // 8 // 256)
    data = _orbit_bytes(_with(steps=n), Votes.from_bits(0, n, bits))
    orbit, peak = _traced_peak(lambda: orbits.from_bytes(data))
    assert orbit.steps == n and orbit.history.signs[8 * 255 + 7] == 1
    assert peak < 4 * len(data), (peak, len(data))  # an object per step would be > 1 GiB


@pytest.mark.parametrize("strategy, bound", [("median", 64), ("mean", 24)])
def test_an_orbit_at_its_cap_decodes_in_memory_within_a_stated_multiple(strategy, bound):
    """The worst cases per byte, a step per 4 bytes (ZO-FedSGD median: Scalars) or per 16 bytes (mean:
    StepUpdates of one (seed, value) pair), decode into Python objects. At a 1 MiB cap the peak is a stated
    64x and 24x the file (measured 52x and 21x, most of it the per-step messages that steps_of lists for these
    types), so the default cap of 16 MiB bounds a load at about 1 GB."""
    cap = 1 << 20
    if strategy == "median":
        steps = (cap - 1024) // 4
        history = Scalars(0, (0.5,) * steps)
    else:
        steps = (cap - 1024) // 16
        history = StepUpdates(0, tuple(((i, 0.5),) for i in range(steps)))
    data = _orbit_bytes(_with(strategy="zo-fedsgd", strategy_options=dict(aggregator=strategy), steps=steps), history)
    assert cap - 1024 <= len(data) <= cap
    del history
    orbit, peak = _traced_peak(lambda: orbits.from_bytes(data, max_bytes=cap))
    assert orbit.steps == steps and peak < bound * len(data), (peak / len(data), len(data))


def _valid_configs():
    scalar = st.one_of(st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.text(max_size=300),
                       st.none())
    json_value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3) |
                              st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
    return st.fixed_dictionaries({}, optional={k: json_value for k in CONFIG})


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.data())
def test_fuzzed_orbits_give_orbit_errors_only_in_bounded_memory(data):
    """Bit flips, truncation, deep nesting, huge numbers, oversized fields, random bytes: OrbitError or a valid
    orbit (which saves and loads back equal), never another exception; traced memory stays within 1 MiB plus 64 x the input (no time limit is
    asserted: the house rule is no wall-clock in tests; every input here is at most 200 KB)."""
    kind = data.draw(st.sampled_from(["flip", "cut", "random", "config-field", "nesting", "huge-int", "big-field"]))
    good = bytearray(_orbit_bytes(_with()))
    if kind == "flip":  # mostly with the CRC recomputed, so the flips reach the parser
        for _ in range(data.draw(st.integers(1, 4))):
            pos = data.draw(st.integers(0, len(good) - 5))
            good[pos] ^= 1 << data.draw(st.integers(0, 7))
        blob = _recrc(bytes(good)) if data.draw(st.integers(0, 3)) else bytes(good)
    elif kind == "cut":
        blob = bytes(good[:data.draw(st.integers(0, len(good) - 1))])
    elif kind == "random":
        blob = data.draw(st.binary(max_size=400))
    elif kind == "config-field":
        fields = data.draw(_valid_configs())
        blob = _orbit_bytes(json.dumps(dict(CONFIG, **fields), allow_nan=True))
    elif kind == "nesting":
        depth = data.draw(st.integers(1, 30_000))
        open_, close = data.draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        blob = _orbit_bytes(_with_raw(data.draw(st.sampled_from(list(CONFIG))), open_ * depth + "1" + close * depth))
    elif kind == "huge-int":
        digits = data.draw(st.integers(1, 5000))
        blob = _orbit_bytes(_with_raw(data.draw(st.sampled_from(list(CONFIG))), "9" * digits))
    else:
        key = data.draw(st.sampled_from(list(CONFIG)))
        blob = _orbit_bytes(_with(**{key: "x" * data.draw(st.integers(257, 60_000))}))
    tracemalloc.start()
    try:
        orbit = orbits.from_bytes(blob)
    except orbits.OrbitError:
        orbit = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < (1 << 20) + 64 * len(blob), (kind, peak, len(blob))
    if orbit is not None:  # a flip in a hash or a vote, a valid draw: a valid orbit, which saves and loads back
        assert orbits.from_bytes(orbits.to_bytes(orbit)) == orbit
