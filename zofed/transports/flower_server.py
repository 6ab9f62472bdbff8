"""The Flower ServerApp: a step strategy's run (zofed.sim.StepDriver, zofed.loop) over Flower's Grid. Imports
no torch (tested in a subprocess): the server machine of a deployment runs the server side only, and what
needs the model (held-out evaluation, model_sha256) is asked of a client (ClientEvaluator).

Each client is a SuperNode whose node config names it (zofed-cid, see zofed.transports.flower_client). The
transport learns which node holds which client by sending every node it has not met an empty request (its
reply carries the client id): at start, and in every exchange for nodes that appeared since (a restarted
SuperNode registers as a new node; its client answers from then on). A message is one request or reply as
bytes in a ConfigRecord.

Every Flower message costs seconds (the SuperNode polls every 3 s, and each message runs in a fresh
flwr-clientapp process that imports torch), so a request without an Ask (a broadcast, a catch-up) is held
back and travels in front of that client's next request: one message per client per round. Frames that
did not reach a client whose node is down stay owed to it and travel again with its next request; a client
skips the steps it holds already (a request whose reply was lost may have arrived), so delivery is
idempotent and a client that comes back catches up bit-identically.
"""

from __future__ import annotations

import json
import os
import time
import types

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from ..transport import Transport, count_frames, split_frames
from ..wire import Ask, ByteCounter, decode, encode, header

RECORD = "zofed"  # the ClientApp's record (zofed.transports.flower_client.RECORD; that module imports torch)
NODE_UNAVAILABLE = 5  # flwr's ErrorCode.NODE_UNAVAILABLE: the SuperLink's reply for a node that stopped beating
CHECKSUM = encode(Ask(0, 0))  # a request for the client's Checksum, after whatever frames precede it


def _asks(request: bytes) -> bool:
    return any(header(f)[0] is Ask for f in split_frames(request))


def _without_asks(request: bytes) -> bytes:
    return b"".join(f for f in split_frames(request) if header(f)[0] is not Ask)


class GridTransport(Transport):
    """exchange() over a Flower Grid. deadline_s: the real-time bound of a round when exchange gives none
    (None: wait for every reply; the SuperLink reports a SuperNode that died after two missed heartbeats,
    about a minute). start_s: how long start() waits for every client's SuperNode. On close, every client
    gets what it is owed and reports its Checksum (`checksums`: the replicas at the end of the run)."""

    def __init__(self, grid, *, deadline_s: float | None = None, start_s: float = 300.0, poll_s: float = 0.05):
        self.grid, self.deadline_s, self.start_s, self.poll_s = grid, deadline_s, start_s, poll_s
        self.counter = ByteCounter()
        self.node_of: dict[int, int] = {}  # client id -> the node that holds it now
        self.greeted: set[int] = set()  # nodes that said which client they hold
        self.greeting: dict[str, int] = {}  # hello message id -> node, replies not in yet
        self.owed: dict[int, bytes] = {}  # frames held back for, or not yet delivered to, each client
        self.clients: list[int] = []
        self.checksums: dict[int, bytes] = {}
        self.round = 0

    def start(self, run_config: dict, clients: list[int]) -> None:
        """The clients build themselves from the run config Flower delivers to every ClientApp: wait until each
        one's SuperNode is connected and has said which client it holds."""
        self.clients = list(clients)
        deadline = time.monotonic() + self.start_s
        while not set(self.clients) <= set(self.node_of):
            if time.monotonic() > deadline:
                raise RuntimeError(f"clients {sorted(set(self.clients) - set(self.node_of))} did not connect within "
                                   f"{self.start_s:.0f} s: start a SuperNode for each (node config zofed-cid)")
            self._greet()
            for msg in self.grid.pull_messages(list(self.greeting)) if self.greeting else []:
                self._greeted(msg)
            time.sleep(0.2)

    def exchange(self, requests, *, quorum=None, deadline_s=None):
        for c, request in requests.items():  # counted once, as the server sends it (held back or not)
            count_frames(self.counter, c, "down", request)
        held = {c: r for c, r in requests.items() if not _asks(r)}
        for c, request in held.items():
            self.owed[c] = self.owed.get(c, b"") + request
        replies = self._collect({c: r for c, r in requests.items() if c not in held}, quorum,
                                self.deadline_s if deadline_s is None else deadline_s)
        return {**{c: b"" for c in held}, **replies}

    def evaluate(self, history: dict[int, bytes]) -> tuple[int, dict] | None:
        """(client, its metrics) from the first client in `history` that answers: it applies its history
        entry (every broadcast it may lack; it skips those it holds) and what it is owed, then evaluates its
        replica (zofed.transports.flower_client). The history is the evaluation's traffic, not the run's:
        not counted (nor its reply)."""
        for c, frames in history.items():
            if c in self.node_of:
                request = frames + self.owed.get(c, b"") + CHECKSUM
                mid = list(self.grid.push_messages([self._message(self.node_of[c], request, evaluate=1)]))[0]
                record = self._wait(mid)
                if record is not None:
                    self.owed.pop(c, None)
                    return c, json.loads(str(record["metrics"]))
        return None

    def close(self, attempts: int = 5) -> None:
        """Deliver what each client is owed and take its Checksum (`checksums`), asking again (up to `attempts`
        times) those whose node did not answer: a restarted SuperNode may still be on its way. The SuperLink
        and SuperNodes belong to whoever started them (zofed.transports.flower for `zofed run --transport
        flower`)."""
        for _ in range(attempts if self.node_of else 0):
            missing = [c for c in self.clients if c not in self.checksums]
            if not missing:
                break
            self.checksums.update(self._collect({c: CHECKSUM for c in missing}, None, self.deadline_s, count=False))
            time.sleep(1.0)

    # the messages

    def _greet(self) -> None:
        """Forget the nodes that are gone, send a hello to each node not met yet (its reply names its client)."""
        live = set(self.grid.get_node_ids())
        self.node_of = {c: n for c, n in self.node_of.items() if n in live}
        self.greeted &= live
        new = sorted(live - self.greeted - set(self.greeting.values()))
        if new:
            for mid, node in zip(self.grid.push_messages([self._message(n, b"") for n in new]), new):
                self.greeting[mid] = node

    def _greeted(self, msg: Message) -> int | None:
        """Take in a reply to a hello: the client its node holds (None: the node died meanwhile)."""
        node = self.greeting.pop(msg.metadata.reply_to_message_id)
        record = self._record(msg, "a new node")
        if record is None:
            return None
        c = int(record["cid"])
        self.node_of[c] = node
        self.greeted.add(node)
        return c

    def _send(self, requests: dict[int, bytes]) -> dict[str, tuple[int, bytes]]:
        """Push each request after what its client is owed: message id -> (client, what was sent). A client
        whose node is not known is owed the request's frames."""
        out, who = [], []
        for c, request in requests.items():
            if c in self.node_of:
                out.append(self._message(self.node_of[c], self.owed.pop(c, b"") + request))
                who.append(c)
            else:
                self.owed[c] = self.owed.get(c, b"") + _without_asks(request)
        ids = list(self.grid.push_messages(out)) if out else []
        return {mid: (c, bytes(msg.content[RECORD]["request"])) for mid, msg, c in zip(ids, out, who)}

    def _collect(self, requests: dict[int, bytes], quorum, deadline_s, count: bool = True) -> dict[int, bytes]:
        """Send the requests and pull until every reply is in, or `quorum` of them, or deadline_s passed;
        count the replies (the run's) as they arrive. Nodes that appear meanwhile are greeted, and a client
        found on a new node (its SuperNode restarted) is sent its request again there. Requests without a
        reply leave their frames owed to their client."""
        self.round += 1
        self._greet()
        sent = self._send(requests)
        end = None if deadline_s is None else time.monotonic() + deadline_s
        replies: dict[int, bytes] = {}
        greeted_at = time.monotonic()
        dead: set[str] = set()  # requests whose node died: no reply will come
        while set(sent) - dead and not (quorum is not None and len(replies) >= quorum) and \
                not (end is not None and time.monotonic() > end):
            for msg in self.grid.pull_messages([*(set(sent) - dead), *self.greeting]):
                mid = msg.metadata.reply_to_message_id
                if mid in self.greeting:
                    c = self._greeted(msg)
                    for m in [m for m, (d, _) in sent.items() if d == c]:  # in flight to its old node: send again
                        dead.discard(m)
                        sent.update(self._send({c: sent.pop(m)[1]}))
                    continue
                record = self._record(msg, f"client {sent[mid][0]}")
                if record is None:
                    dead.add(mid)  # its node died: the request stays owed (below)
                    continue
                c, _ = sent.pop(mid)
                if int(record["cid"]) != c:
                    raise RuntimeError(f"flower: node {msg.metadata.src_node_id} answered as client {record['cid']}, "
                                       f"was asked as client {c}")
                replies[c] = bytes(record["reply"])
                if count:
                    count_frames(self.counter, c, "up", replies[c])
            if time.monotonic() - greeted_at > 1.0:
                self._greet()
                greeted_at = time.monotonic()
            time.sleep(self.poll_s)
        for c, request in sent.values():  # no reply: the frames may not have arrived
            self.owed[c] = _without_asks(request) + self.owed.get(c, b"")
        return replies

    def _wait(self, mid: str):
        """The record replying to message mid; None if none came within the transport's deadline."""
        end = None if self.deadline_s is None else time.monotonic() + self.deadline_s
        while end is None or time.monotonic() < end:
            for msg in self.grid.pull_messages([mid]):
                return self._record(msg, "the evaluating client")
            time.sleep(self.poll_s)
        return None

    @staticmethod
    def _record(msg: Message, who: str):
        """The reply's record; None for a node that died; RuntimeError for a client that failed."""
        if msg.has_error():
            if msg.error.code == NODE_UNAVAILABLE:
                return None
            raise RuntimeError(f"flower: {who} failed: {msg.error.reason}")
        return msg.content[RECORD]

    def _message(self, node: int, request: bytes, **flags) -> Message:
        return Message(RecordDict({RECORD: ConfigRecord({"request": request, **flags})}), dst_node_id=node,
                       message_type="query", group_id=str(self.round))


class ClientEvaluator:
    """zofed.loop's evaluator for a server without the model: a client evaluates its replica. It is sent
    the run's broadcasts it may lack (it skips those it holds), so any client that answers is brought to
    the run's current step first; a result is reused until the next broadcast."""

    def __init__(self, transport: GridTransport, run_config: dict):
        self.transport = transport
        self.task = types.SimpleNamespace(name=run_config["task"], options=run_config["task_options"])
        self.history: list[bytes] = []  # every broadcast, in order
        self.sent: dict[int, int] = {}  # client -> how many of them the evaluation sent it
        self.result: dict | None = None

    def follow(self, frames: bytes) -> None:
        if frames:
            self.history.append(frames)
            self.result = None

    def _metrics(self) -> dict:
        if self.result is None:
            order = sorted(self.transport.node_of)
            got = self.transport.evaluate({c: b"".join(self.history[self.sent.get(c, 0):]) for c in order})
            if got is None:
                raise RuntimeError("flower: no client answered the evaluation")
            c, self.result = got
            self.sent[c] = len(self.history)
        return self.result

    @property
    def base_sha256(self) -> str:
        if self.history:
            raise RuntimeError("base_sha256 is read before the run's first broadcast")
        return self._metrics()["sha256"]

    def evaluate(self) -> dict:
        m = self._metrics()
        return dict(accuracy=m["accuracy"], loss=m["loss"])

    def sha256(self) -> str:
        return self._metrics()["sha256"]

    def digest(self) -> str:
        return self._metrics()["digest"]

    def close(self) -> None:
        pass


def check(cfg) -> None:
    """ValueError for what this ServerApp cannot run (checked before any process starts, and here)."""
    cfg.validate()
    if cfg.client_weights == "data-size":
        raise ValueError("config field 'client_weights' = 'data-size' needs the clients' data sizes on the server: "
                         "not on the flower transport yet; use 'equal'")


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run config (zofed.transports.flower writes it into the app's pyproject): zofed-run-config (the JSON of
    zofed.client.run_config), zofed-out (the run's folder, on the SuperLink's machine), zofed-deadline-s (the
    real-time bound of a round, "" for none)."""
    from .. import loop
    from ..configs import SimConfig
    from ..sim import StepDriver

    rc = json.loads(str(context.run_config["zofed-run-config"]))
    out = str(context.run_config["zofed-out"])
    deadline = str(context.run_config.get("zofed-deadline-s", ""))
    cfg = SimConfig(**rc["config"])
    check(cfg)
    transport = GridTransport(grid, deadline_s=float(deadline) if deadline else None)
    evaluator = ClientEvaluator(transport, rc)
    driver = StepDriver(cfg, transport, evaluator, rc)
    loop.run(driver, evaluator, rc["task"], rc["task_options"], out=out, progress=False, eval_every=cfg.eval_every)
    replicas = {str(c): decode(f) for c, f in sorted(transport.checksums.items())}
    loop.write_json(os.path.join(out, "replicas.json"),
                    {c: dict(step=m.step, digest=m.digest.hex()) for c, m in replicas.items()})
