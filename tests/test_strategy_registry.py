"""Strategies come from one registry: a strategy registered from one file (here, this test) is a `zofed run`
choice, runs, and its orbit saves."""

import contextlib
import io

import pytest

import fedtoy  # noqa: F401  (registers the "toy" task)
from zofed import cli, sim, strategies, tasks
from zofed.strategies import FeedSign, register


@pytest.fixture
def halfsign():
    @register
    class HalfSign(FeedSign):
        """FeedSign whose replicas step half as far: a strategy defined in one place."""

        name = "toy-halfsign"

        def ops(self, step, down):
            ((kind, seeds, coeffs),) = super().ops(step, down)
            return [(kind, seeds, tuple(c / 2 for c in coeffs))]

    yield HalfSign
    del strategies.STRATEGIES["toy-halfsign"]


def test_a_registered_strategy_is_a_cli_choice_and_runs(halfsign, tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "toy-halfsign" in out.getvalue()
    cfg = dict(clients=3, steps=6, lr=0.05, batch=8, eval_every=3)
    half = sim.run(tasks.build("toy"), sim.SimConfig(strategy="toy-halfsign", **cfg), out=str(tmp_path), progress=False)
    whole = sim.run(tasks.build("toy"), sim.SimConfig(strategy="feedsign", **cfg), progress=False)
    assert half["model_sha256"] != whole["model_sha256"] and half["bytes_up_per_client"] == 6 * 25
    assert (tmp_path / "orbit").exists() and half["config"]["strategy"] == "toy-halfsign"


def test_a_strategy_needs_a_name_of_its_own():
    class Nameless(FeedSign):
        name = ""

    class Impostor(FeedSign):
        name = "feedsign"

    for cls in (Nameless, Impostor):
        with pytest.raises(ValueError, match="a strategy needs a name of its own"):
            register(cls)
