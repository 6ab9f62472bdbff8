"""Scenarios for tests/test_transport_torchdist.py, run once per module in a child process (it becomes rank 0
of each run's torch.distributed group): the acceptance runs on torchdist and in-process, a run with dropouts
(on noise spec version 2) whose replicas report their checksums at the end, and a start-up a client rank refuses. Writes
OUT/results.json."""

import json
import os
import sys

import fedtoy  # noqa: F401 (registers the "toy" task; the client ranks import it too)
from zofed import orbit, sim, tasks
from zofed.client import make_clients, run_config
from zofed.configs import SimConfig
from zofed.transports import torchdist
from zofed.wire import decode, encode

STRATEGIES = ("feedsign", "zo-fedsgd", "fedkseed")
ACCEPTANCE = dict(clients=4, steps=24, steps_per_round=4, lr=0.05, eval_every=24)
# on noise spec version 2: the client ranks build their replicas on the run's stream (the acceptance runs: version 1)
DROPOUT = dict(strategy="feedsign", clients=4, steps=24, steps_per_round=4, lr=0.05, eval_every=24, dropout=0.4,
               spec_version=2)


def run(cfg: dict, out: str, transport=None) -> dict:
    summary = sim.run(tasks.build("toy"), SimConfig(**cfg), out, progress=False, transport=transport)
    return dict(model_sha256=summary["model_sha256"], clients=summary["clients"])


def digests_by_step(cfg: dict, out: str) -> dict:
    """The replica digest after each step of the run in `out`, replayed from its orbit on a separate replica."""
    follower = make_clients(run_config(SimConfig(**cfg), tasks.build("toy")), [0])[0]
    got = {0: follower.replica.digest().hex()}
    for down in follower.strategy.steps_of(orbit.load(os.path.join(out, "orbit")).history):
        follower.handle(encode(down))
        got[follower.step] = follower.replica.digest().hex()
    return got


def main(out: str) -> None:
    result = {}
    for s in STRATEGIES:
        cfg = dict(ACCEPTANCE, strategy=s)
        result[s] = dict(inproc=run(cfg, os.path.join(out, s, "inproc")),
                         torchdist=run(cfg, os.path.join(out, s, "torchdist"), torchdist.open(dict(processes=2))))
    t = torchdist.open(dict(processes=3))
    result["dropout"] = run(DROPOUT, os.path.join(out, "dropout"), t)
    result["dropout"]["replicas"] = {c: [decode(f).step, decode(f).digest.hex()] for c, f in t.checksums.items()}
    result["dropout"]["inproc"] = run(DROPOUT, os.path.join(out, "dropout-inproc"))
    result["dropout"]["by_step"] = digests_by_step(DROPOUT, os.path.join(out, "dropout"))
    t = torchdist.open(dict(processes=2))
    try:
        t.start(dict(config=dict(SimConfig().__dict__), task="no-such-task", task_options={}), [0, 1])
    except RuntimeError as exc:
        result["refused"] = str(exc)
    result["children_left"] = len(t.children.procs)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
