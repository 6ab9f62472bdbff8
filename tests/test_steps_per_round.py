"""--steps-per-round B: B = 1 is today's runs bit for bit (goldens recorded before the transport refactor), and
B = 4 is a plain transcription of the algorithm in which a round's B projections are all taken at the round's
starting weights."""

import copy

import pytest

import fedtoy  # noqa: F401  (registers the "toy" task)
from zofed import sim, tasks
from zofed.client import Replica, batches, split_clients, weights_sha256
from zofed.configs import SimConfig

BASE = dict(clients=4, steps=24, lr=0.05, batch=8, eval_every=12, seed=3)
# (options, model_sha256, bytes up, bytes down per client) of runs made before zofed had transports
GOLDEN = {
    "feedsign": (dict(strategy="feedsign"),
                 "dbf19a7143c7064f3c614993a589aee9374ba9443dc747959171633c37e8ad52", 600.0, 600.0),
    "zo-fedsgd": (dict(strategy="zo-fedsgd"),
                  "cf07ba8333cbd88ad1061edc849137162b8d8983a4bb83c02bc9e0a4b7458667", 864.0, 1824.0),
    "median": (dict(strategy="zo-fedsgd", aggregator="median"),
               "c935f0c32a437fbbb3b41998bbca0683b33c8129323642b183057a276bcaff38", 672.0, 672.0),
    "fedkseed-dropout": (dict(strategy="fedkseed", pool_size=16, dropout=0.2),
                         "a60b9c63fda7071f154919e805e6a755a779b73479449c09ddf8b3eab3a2d72f", 684.0, 1538.0),
    "fedkseed-local2": (dict(strategy="fedkseed", pool_size=16, pool_local_steps=2),
                        "41b4079aa0244983d2e558eef01649408f514693c400fa79a41e5c34962770d6", 1152.0, 2976.0),
    "dp-feedsign": (dict(strategy="dp-feedsign", server_secret=5),
                    "1f6aa52c9de3eceefb56482bfec597a0f102a841707222b9e7a9301480be139e", 600.0, 600.0),
    "feedsign-faults": (dict(strategy="feedsign", dropout=0.3, participation=0.7, deadline=0.6),
                        "6bacae63def21d6e9284e0b633e07d9abe3982dbca65222e05776c17342c3e94", 393.75, 537.5),
}


@pytest.mark.parametrize("name", GOLDEN)
def test_one_step_per_round_is_todays_run_bit_for_bit(name):
    opts, sha, up, down = GOLDEN[name]
    s = sim.run(tasks.build("toy"), SimConfig(**BASE, **opts), progress=False)
    assert (s["model_sha256"], s["bytes_up_per_client"], s["bytes_down_per_client"]) == (sha, up, down)


def _transcription(cfg: SimConfig) -> str:
    """FeedSign / ZO-FedSGD with B steps per round, written plainly: every client takes the B projections of a
    round at the round's starting weights; then the B steps' aggregates are applied in order."""
    task = tasks.build("toy")
    model = copy.deepcopy(task.model)
    parts = split_clients(task, cfg)
    strategy, replica = cfg.make_strategy(), Replica(model, eps=cfg.eps)
    B = cfg.steps_per_round
    for start in range(0, cfg.steps, B):
        ups = {t: {} for t in range(start, start + B)}
        for c in range(cfg.clients):
            for t in ups:
                (batch,) = batches(parts[c], cfg, t, c, 1)
                plus, minus = replica.evaluate_pair(strategy.seed_for(t, c),
                                                    lambda: task.losses(model, task.batch(batch)))
                g = (float(plus.mean()) - float(minus.mean())) / (2 * cfg.eps)
                ups[t][c] = strategy.up(t, c, g)
        for t, got in ups.items():
            replica.apply(strategy.ops(t, strategy.aggregate(t, got)))
    replica.close()
    return weights_sha256(model)


@pytest.mark.parametrize("strategy", ["feedsign", "zo-fedsgd"])
def test_four_steps_per_round_is_the_plain_transcription(strategy):
    cfg = SimConfig(**BASE, strategy=strategy, steps_per_round=4)
    s = sim.run(tasks.build("toy"), cfg, progress=False)
    assert s["model_sha256"] == _transcription(cfg)
    assert s["model_sha256"] != GOLDEN[strategy][1]  # the B directions share their weights: another run
    if strategy == "feedsign":  # 6 rounds of one 4-bit Votes frame each way
        assert s["bytes_up_per_client"] == s["bytes_down_per_client"] == 6 * 25
        assert s["payload_bits_up_per_client"] == s["payload_bits_down_per_client"] == 24


def test_steps_per_round_with_dropouts_ends_on_every_replica_alike():
    from zofed.transport import InProc

    runs = [sim.run(tasks.build("toy"), SimConfig(**dict(BASE, strategy="fedkseed", pool_size=8, dropout=0.3,
                                                         steps_per_round=3)),
                    progress=False, transport=InProc(task=None, shared=shared)) for shared in (True, False)]
    assert runs[0]["model_sha256"] == runs[1]["model_sha256"] and runs[0]["clients"] == runs[1]["clients"]


@pytest.mark.parametrize("kw,why", [(dict(steps=10, steps_per_round=4), "must divide steps=10"),
                                    (dict(strategy="fedkseed", pool_sampling="importance", steps_per_round=2),
                                     "must be 1 with pool_sampling 'importance'"),
                                    (dict(steps_per_round=0), "must be a positive integer")])
def test_bad_steps_per_round_names_the_field(kw, why):
    with pytest.raises(ValueError, match=f"config field 'steps_per_round' {why}"):
        SimConfig(**kw).validate()
