"""The transport seam: how frames travel between the server side of a run and its clients, and where the
bytes that cross are counted. Imports no torch (the Flower ServerApp drives a run through this seam).

A run's server side (zofed.loop: the strategy's server part, the ParameterServer) talks to clients only
through `Transport.exchange`: it sends each client a request and gets back the replies that arrived.
A request or a reply is a concatenation of ordinary wire frames (each frame's header gives its type and size,
so `split_frames` splits a sequence unambiguously), possibly empty. A client (zofed.client.Client.handle,
the one client runtime every transport drives) takes the frames of a request in order:

    broadcast / history (Votes, Scalars, StepUpdates)   applied to its replica, step after step
    PoolState                                           FedKSeed's catch-up: pool state, then a rebuild
    Ask(step, count)                                    answer: `count` steps from `step` (the round's B
                                                        steps, all evaluated at the current weights), or,
                                                        with count 0, report the replica's Checksum

and its reply is what its Asks produced, in order (b"" for a request without one): for a round, the
strategy's reply message (all B steps in one) followed by a Report of the client's training losses. Ask and
Report are control, like a Flower message's envelope and metrics: not the protocol's content, not counted. Every other frame is counted where it crosses, from its encoding, per
client: "down" for a request's frames, "up" for a reply's (`counter`, a zofed.wire.ByteCounter). A reply
that arrives is counted even when the server then finds it late or invalid: its bytes crossed.

A transport may hold back a request without an Ask (its reply is b"") and deliver it in front of that
client's next request: the client applies it before anything that request asks. Replies to it are b"".

Clients exist on the other side: `start(run_config, clients)` makes them there, each side building its
Client from the JSON-serializable run config alone (zofed.client.make_client(run_config, cid)). A client
that is down is simply absent from exchange's answer, never an exception; it catches up when it is back.
Simulated arrival times and deadlines (hashed from the run's seed) are a property of the run, decided by the
server side, so every transport gives the same model_sha256; `quorum` / `deadline_s` here are real-time
bounds a networked transport applies to real replies.

Real transports live in zofed/transports/<name>.py with `open(cfg: dict) -> Transport`; `zofed run
--transport NAME` finds them through `open_transport` (the one place that looks them up).
"""

from __future__ import annotations

import abc
import importlib

from .wire import CONTROL, FRAME_BYTES, MAX_FRAME_BYTES, Ask, ByteCounter, WireError, decode, header

TRANSPORTS = ("inproc", "torchdist", "flower")


def split_frames(data: bytes, max_bytes: int = MAX_FRAME_BYTES) -> list[bytes]:
    """The frames of a concatenation of frames (WireError if it does not split into whole frames)."""
    frames, pos, view = [], 0, memoryview(data)
    while pos < len(data):
        _, n = header(view[pos:], max_bytes)
        end = pos + FRAME_BYTES + n
        if end > len(data):
            raise WireError(f"truncated frame at byte {pos}: {len(data) - pos} bytes left for a "
                            f"{FRAME_BYTES + n}-byte frame")
        frames.append(bytes(view[pos:end]))
        pos = end
    return frames


def count_frames(counter: ByteCounter, client: int, direction: str, data: bytes,
                 max_bytes: int = MAX_FRAME_BYTES) -> None:
    """Count the frames of a request ("down") or reply ("up") that crossed, control frames (Ask, Report) excepted."""
    for frame in split_frames(data, max_bytes):
        msg = decode(frame, max_bytes)
        if not isinstance(msg, CONTROL):
            counter.count(client, direction, frame, msg)


class Transport(abc.ABC):
    """Moves frames between the server side of a run and its clients, and counts the bytes that cross."""

    counter: ByteCounter

    @abc.abstractmethod
    def start(self, run_config: dict, clients: list[int]) -> None:
        """Make the clients exist on the other side (zofed.client.make_client(run_config, cid) each)."""

    @abc.abstractmethod
    def exchange(self, requests: dict[int, bytes], *, quorum: int | None = None,
                 deadline_s: float | None = None) -> dict[int, bytes]:
        """Deliver requests[c] to client c and return the replies that came back: all of them, or with
        quorum / deadline_s those that arrived in time. A client that is down is absent from the answer."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop every process and thread this transport started."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProc(Transport):
    """Real Client objects in this process, driven one after another.

    task: the run's task, if this process has it (else each client builds it from the run config). shared=True
    builds the clients on one replica (`replica`, or one on the task's model; zofed.client.make_clients): every replica of a FeedSign /
    ZO-FedSGD / FedKSeed run holds the same weights at the same step, so one model serves all clients, each
    applying a step's broadcast once (zofed.client.Replica.advance), and where the task's losses are batch
    invariant a shared-seed round runs all its clients' batches through one forward (answer_together); both
    tested bit-identical against separate replicas (tests/test_transport_inproc.py). max_bytes: the largest frame
    it counts (more than wire.MAX_FRAME_BYTES where dense weights travel: zofed.rounds.InProcRounds)."""

    max_bytes = MAX_FRAME_BYTES

    def __init__(self, task=None, *, shared: bool = True, replica=None):
        self.counter = ByteCounter()
        self.task, self.shared, self.replica = task, shared, replica
        self.clients: dict = {}

    def start(self, run_config: dict, clients: list[int]) -> None:
        from .client import make_clients  # the client side needs torch; the seam does not

        self.clients = make_clients(run_config, clients, shared=self.shared, task=self.task, replica=self.replica)

    def exchange(self, requests, *, quorum=None, deadline_s=None):
        for c, request in requests.items():
            count_frames(self.counter, c, "down", request, self.max_bytes)
        replies = self._together(requests) or {c: self.clients[c].handle(r) for c, r in requests.items()}
        for c, reply in replies.items():
            count_frames(self.counter, c, "up", reply, self.max_bytes)
        return replies

    def _together(self, requests) -> dict | None:
        """A round's Asks to clients on one replica answered in one forward per step where that gives the same
        bits (zofed.client.answer_together); None otherwise."""
        asks = set(requests.values())
        if len(requests) < 2 or len(asks) != 1:
            return None
        (request,) = asks
        frames = split_frames(request)
        ask = decode(frames[0]) if len(frames) == 1 else None
        if not isinstance(ask, Ask):
            return None
        from .client import answer_together

        return answer_together([self.clients[c] for c in requests], ask)

    def close(self) -> None:
        closed = set()
        for client in self.clients.values():
            if id(client.replica) not in closed:
                closed.add(id(client.replica))
                client.replica.close()
        self.clients = {}


def open_transport(name: str, cfg: dict) -> Transport:
    """The transport `name` for a run with config `cfg` (a SimConfig's fields)."""
    if name == "inproc":
        return InProc()
    if name not in TRANSPORTS:
        raise ValueError(f"unknown transport {name!r}; choose from {TRANSPORTS}")
    return importlib.import_module(f"zofed.transports.{name}").open(cfg)
