"""The simulator on the toy task: byte accounting in the summary, dropouts and catch-up traffic, Byzantine
clients, config validation."""

import pytest

import fedtoy  # noqa: F401  (registers the "toy" task)
from zofed import sim, tasks


def _run(**kw):
    cfg = dict(clients=5, steps=200, lr=0.02, batch=16, eval_every=200)
    cfg.update(kw)
    return sim.run(tasks.build("toy"), sim.SimConfig(**cfg), progress=False)


def test_summary_counts_what_was_encoded():
    s = _run(strategy="zo-fedsgd", steps=20)
    assert s["payload_bits_up_per_client_per_step"] == 96  # (seed u64, projection f32)
    assert s["payload_bits_down_per_client_per_step"] == 5 * 96  # every client's pair
    assert s["bytes_up_per_client"] == 20 * (12 + 12 + 12)  # frame + step/count + one pair
    assert s["bytes_down_per_client"] == 20 * (12 + 12 + 4 + 5 * 12)
    f = _run(strategy="feedsign", steps=20)
    assert f["payload_bits_up_per_client_per_step"] == f["payload_bits_down_per_client_per_step"] == 1
    assert f["bytes_up_per_client"] == f["bytes_down_per_client"] == 20 * 25


def test_dropouts_are_caught_up_and_counted():
    s = _run(strategy="feedsign", steps=60, dropout=0.3, eval_every=60)
    ups = [c["up"]["payload_bits"] for c in s["clients"]]
    downs = [c["down"]["payload_bits"] for c in s["clients"]]
    assert all(20 < u < 60 for u in ups)  # each client answered only while online
    # every client ends holding all 60 broadcast bits, or all but the steps it is still offline for
    assert all(50 <= d <= 60 for d in downs) and sum(downs) > sum(ups)


def test_partial_participation_and_deadline_drop_replies():
    s = _run(strategy="zo-fedsgd", steps=30, participation=0.6, deadline=0.5, eval_every=30)
    answered = sum(c["up"]["messages"] for c in s["clients"])
    assert 30 <= answered < 0.8 * 5 * 30  # sampled ~60%, at least one per round
    assert s["stragglers"] > 0  # replies after 0.5 s (latency uniform in [0, 1)) are ignored


def test_feedsign_resists_a_byzantine_client_better_than_zo_fedsgd():
    """Mean final accuracy over 3 seeds, one attacker of 5 (reversed sign / random projection, default scale)."""
    def drop(strategy):
        honest = sum(_run(strategy=strategy, seed=s)["final_accuracy"] for s in range(3)) / 3
        attacked = sum(_run(strategy=strategy, seed=s, byzantine=1)["final_accuracy"] for s in range(3)) / 3
        return honest - attacked

    fs, zo = drop("feedsign"), drop("zo-fedsgd")
    assert fs < zo and fs < 0.10, (fs, zo)


@pytest.mark.parametrize("kw,field", [(dict(steps=0), "steps"), (dict(strategy="fedavg"), "strategy"),
                                      (dict(lr=-1.0), "lr"), (dict(byzantine=6), "byzantine"),
                                      (dict(dirichlet=0.0), "dirichlet"), (dict(convention="x"), "convention"),
                                      (dict(dropout=1.0), "dropout"), (dict(seed=-1), "seed"),
                                      (dict(eps=float("inf")), "eps")])
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=f"config field '{field}'"):
        sim.SimConfig(**kw).validate()


def test_fed_table_tabulates_run_folders(tmp_path, capsys):
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
    import fed_table

    for name, kw in (("a", dict(strategy="feedsign")), ("b", dict(strategy="zo-fedsgd", byzantine=1, dirichlet=0.5))):
        sim.run(tasks.build("toy"), sim.SimConfig(clients=3, steps=6, lr=0.05, eval_every=3, **kw),
                out=str(tmp_path / name), progress=False)
    fed_table.main([str(tmp_path / "a"), str(tmp_path / "b")])
    out = capsys.readouterr().out.splitlines()
    assert out[2].startswith("| feedsign | iid | 0 |") and "| 1, 1 | 150, 150 |" in out[2]
    assert out[3].startswith("| zo-fedsgd | Dirichlet 0.5 (per-class), 1 Byzantine of 3 | 0 |")
