"""DP-FeedSign's privacy against the clients: the exponential mechanism's coin comes from the server's private
secret (os.urandom unless the operator gives one), never from the run seed every client knows; the secret is
kept in the server's own checkpoint (a resumed run continues with it) and is in no orbit or broadcast.
Client sampling stays public and reproducible from the run seed."""

import json

import pytest

import fedtoy  # noqa: F401  (registers the "toy" task)
import zofed.server
from zofed import orbit as orbits
from zofed import sim, strategies, tasks
from zofed.server import ParameterServer
from zofed.wire import Votes

SECRET = 0x5EC2E7_0DD_C0FFEE  # distinctive: searched for in the outputs
CFG = dict(strategy="dp-feedsign", clients=3, steps=30, lr=0.05, batch=8, eval_every=15, seed=4, dp_epsilon=1.0)


def _os_secret(value: int):
    return lambda: value


def _run(monkeypatch, urandom=None, out=None, **kw):
    if urandom is not None:
        monkeypatch.setattr(zofed.server, "private_seed", _os_secret(urandom))
    return sim.run(tasks.build("toy"), sim.SimConfig(**dict(CFG, **kw)), out=out, progress=False)["model_sha256"]


def test_the_default_secret_is_drawn_from_the_os(monkeypatch):
    assert ParameterServer(strategies.make("feedsign", lr=0.1, run_seed=0), 2).secret != \
        ParameterServer(strategies.make("feedsign", lr=0.1, run_seed=0), 2).secret
    monkeypatch.setattr(zofed.server, "private_seed", _os_secret(SECRET))
    assert ParameterServer(strategies.make("feedsign", lr=0.1, run_seed=0), 2).secret == SECRET
    with pytest.raises(ValueError, match="secret must be an integer in"):
        ParameterServer(strategies.make("feedsign", lr=0.1, run_seed=0), 2, secret=-1)


def test_the_mechanism_needs_the_secret():
    st = strategies.make("dp-feedsign", lr=0.1, run_seed=3, epsilon=0.5)
    with pytest.raises(ValueError, match="needs the server's private secret"):
        st.aggregate(0, {0: Votes(0, (1,))})


def test_the_coin_follows_the_secret_not_the_run_seed(monkeypatch):
    """Same run seed (all a client knows), two private secrets: other broadcasts. An operator's secret makes the
    run reproducible."""
    a, b = _run(monkeypatch, urandom=1), _run(monkeypatch, urandom=2)
    assert a != b
    assert _run(monkeypatch, urandom=3, server_secret=1) == a == _run(monkeypatch, server_secret=1)


def test_sampling_stays_reproducible_from_the_public_seed():
    make = lambda: strategies.make("dp-feedsign", lr=0.1, run_seed=0, epsilon=1.0)  # noqa: E731
    picks = [ParameterServer(make(), 20, participation=0.3, sampling_seed=5, secret=s).open_round() for s in (1, 2)]
    assert picks[0] == picks[1] and 1 <= len(picks[0]) < 20


def test_the_secret_is_in_no_orbit_and_a_resumed_run_keeps_it(monkeypatch, tmp_path):
    """Interrupted at step 25 and resumed with another os.urandom: the run ends as the uninterrupted one did
    (the secret came back from the server's checkpoint). The orbit holds neither the secret nor the config
    field."""
    whole = _run(monkeypatch, urandom=SECRET)
    task = tasks.build("toy")
    losses, calls = task.losses, [0]

    def interrupted(model, batch):
        calls[0] += 1
        if calls[0] == 26 * 2:  # the shared-seed forwards of step 25 (two per step)
            raise KeyboardInterrupt
        return losses(model, batch)

    task.losses = interrupted
    monkeypatch.setattr(zofed.server, "private_seed", _os_secret(SECRET))
    with pytest.raises(KeyboardInterrupt):
        sim.run(task, sim.SimConfig(**CFG), out=str(tmp_path), progress=False)
    assert _run(monkeypatch, urandom=SECRET + 1, out=str(tmp_path)) == whole
    orbit = orbits.load(tmp_path / "orbit")
    for blob in ((tmp_path / "orbit").read_bytes(), json.dumps(orbit.config).encode()):  # the config inflated
        assert SECRET.to_bytes(8, "little") not in blob and str(SECRET).encode() not in blob
    assert "server_secret" not in json.dumps(orbit.config)
