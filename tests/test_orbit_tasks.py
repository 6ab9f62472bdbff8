"""Task options are bounded and checked before anything is built: replay builds the task an orbit names, and
an orbit comes from another party (a 219-byte orbit naming digits width=20000 asked for 28.8 GB)."""

import pytest

import fedtoy  # noqa: F401  (registers the "toy" task)
from zofed import orbit as orbits
from zofed import tasks
from zofed.wire import Votes

BAD_OPTIONS = [
    ("digits", dict(width=20000), r"'width' must be an integer in \[1, 256\], got 20000"),
    ("digits", dict(width=0), r"'width' must be an integer in \[1, 256\]"),
    ("digits", dict(width=True), r"'width' must be an integer in \[1, 256\], got True"),
    ("digits", dict(width=8.0), r"'width' must be an integer in \[1, 256\], got 8.0"),
    ("digits", dict(init_seed=2**64), r"'init_seed' must be an integer in \[0, 9223372036854775807\]"),
    ("digits", dict(model="minilm"), r"task 'digits' takes the options \['init_seed', 'width'\], not \['model'\]"),
    ("vader", dict(lora_rank=385), r"'lora_rank' must be an integer in \[0, 384\], got 385"),
    ("vader", dict(lora_rank=-1), r"'lora_rank' must be an integer in \[0, 384\]"),
    ("vader", dict(model="bert-large"), r"'model' must be one of \('minilm',\), got 'bert-large'"),
    ("toy", dict(hidden=10**400), r"'hidden' must be an integer in \[-9223372036854775808, 9223372036854775807\]"),
    ("toy", dict(hidden="8"), r"'hidden' must be an integer"),
]


@pytest.mark.parametrize("name, options, match", BAD_OPTIONS, ids=lambda x: str(x)[:40])
def test_out_of_range_options_are_refused_before_building(name, options, match):
    with pytest.raises(ValueError, match=match):
        tasks.check_options(name, options)
    with pytest.raises(ValueError, match=match):  # build checks first: a test of this size never builds
        tasks.build(name, **options)


def test_declared_options_accept_their_range():
    tasks.check_options("digits", dict(width=256, init_seed=2**63 - 1))
    tasks.check_options("vader", dict(model="minilm", lora_rank=384))
    tasks.check_options("vader", dict(lora_rank=0))


def _spy(calls):
    def builder(width: int = 4):
        calls.append(width)
        return fedtoy.toy_task(hidden=width)
    return builder


def test_replay_checks_the_orbits_task_options_before_building(monkeypatch):
    calls = []
    monkeypatch.setitem(tasks._BUILDERS, "spy", (_spy(calls), dict(width=tasks.Option(4, 1, 64))))
    config = dict(strategy="feedsign", strategy_options={}, lr=0.002, eps=0.001, dist="gaussian", run_seed=0,
                  steps=3, task="spy", task_options=dict(width=20000))
    orbit = orbits.from_bytes(orbits.to_bytes(orbits.Orbit(config, "ab" * 32, "cd" * 32, Votes(0, (1, -1, 1)))))
    with pytest.raises(orbits.OrbitError, match=r"task 'spy' option 'width' must be an integer in \[1, 64\]"):
        orbits.replay(orbit)
    with pytest.raises(orbits.OrbitError, match="unknown task 'nosuch'"):
        orbits.replay(orbits.Orbit(dict(config, task="nosuch"), "ab" * 32, "cd" * 32, orbit.history))
    assert calls == []
    with pytest.raises(orbits.OrbitError, match="wrong base model"):  # in range: built, then the fingerprint
        orbits.replay(orbits.Orbit(dict(config, task_options=dict(width=5)), "ab" * 32, "cd" * 32, orbit.history))
    assert calls == [5]
