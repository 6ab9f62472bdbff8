"""Scenarios for tests/test_transport_torchdist.py, run once per module in a child process (it becomes rank 0
of a torch.distributed group): the same requests through InProc and TorchDist, then a request a client
refuses. Writes OUT/results.json."""

import json
import os
import sys

import fedtoy  # noqa: F401 (registers the "toy" task)
from zofed import tasks
from zofed.client import run_config
from zofed.configs import SimConfig
from zofed.transport import InProc
from zofed.transports import torchdist
from zofed.wire import Ask, Votes, encode

CLIENTS = 4


def requests() -> list[dict]:
    """Two FeedSign rounds of B=2 steps (Ask, then the broadcast with the next Ask), then the checksums."""
    return [{c: encode(Ask(0, 2)) for c in range(CLIENTS)},
            {c: encode(Votes(0, (1, -1))) + encode(Ask(2, 2)) for c in range(CLIENTS)},
            {c: encode(Votes(2, (1, 1))) + encode(Ask(4, 0)) for c in range(CLIENTS)}]


def replies(transport, rc) -> dict:
    with transport:
        transport.start(rc, list(range(CLIENTS)))
        got = [{c: r.hex() for c, r in transport.exchange(reqs).items()} for reqs in requests()]
    return dict(replies=got, counter=transport.counter.state_dict())


def main(out: str) -> None:
    rc = run_config(SimConfig(strategy="feedsign", clients=CLIENTS, steps=8, lr=0.05), tasks.build("toy"))
    result = dict(inproc=replies(InProc(shared=False), rc))
    t = torchdist.open(dict(processes=3))
    with t:
        t.start(rc, list(range(CLIENTS)))
        result["torchdist"] = dict(replies=[{c: r.hex() for c, r in t.exchange(reqs).items()} for reqs in requests()],
                                   counter=t.counter.state_dict())
        result["pids"] = [p.pid for p in t.children.procs.values()]
        try:
            t.exchange({1: encode(Ask(0, 2))})  # client 1 is on step 4
        except RuntimeError as exc:
            result["refused"] = str(exc)
    result["children_left"] = len(t.children.procs)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
