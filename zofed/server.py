"""The parameter server: integers, bits and scalars only. It never sees the model and imports no torch;
its memory is the broadcast history (bounded by the clients still active) and a few counters.

A round (one step, or a retry of it when nobody answered):

    sampled = server.open_round()                 # which online clients should answer
    server.receive(client, frame, at=seconds)     # replies as they arrive (bytes counted "up")
    server.ready(now)                             # quorum reached, or the deadline has passed
    frame = server.close()                        # the broadcast (counted "down" per online client)

A reply that arrives after the round closed is a straggler: counted, then ignored. Clients that were
offline catch up with `catch_up(client)`: the broadcasts they missed, bit-packed into one history
message, or (FedKSeed pool) the pool's accumulators plus the broadcasts since the last rebuild.
Replicas report `Checksum` messages; a digest that differs from the others at that step is reported
in `mismatches`.
"""

from __future__ import annotations

import math

from .seeds import unit
from .strategies import FedKSeed, Strategy
from .wire import ByteCounter, Checksum, Message, encode

_SAMPLE = 0x5A  # hash domain of client sampling


class CatchUpError(RuntimeError):
    """A client needs broadcasts the server no longer holds."""


class ParameterServer:
    """Runs a strategy's rounds for clients 0..clients-1.

    Args:
        participation: the fraction of online clients sampled each round (at least one is).
        quorum: replies that close a round early (default: every sampled client).
        deadline: seconds after which a round closes with the replies it has (default: none).
        secret: the server's private seed (client sampling, DP-FeedSign's mechanism).
    """

    def __init__(self, strategy: Strategy, clients: int, *, participation: float = 1.0, quorum: int | None = None,
                 deadline: float | None = None, secret: int = 0, counter: ByteCounter | None = None):
        if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
            raise ValueError(f"clients must be a positive integer, got {clients!r}")
        if not 0 < participation <= 1:
            raise ValueError(f"participation must be in (0, 1], got {participation}")
        if quorum is not None and (isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1):
            raise ValueError(f"quorum must be a positive integer, got {quorum!r}")
        if deadline is not None and not (deadline > 0 and math.isfinite(deadline)):
            raise ValueError(f"deadline must be a positive number of seconds, got {deadline}")
        self.strategy, self.participation, self.quorum, self.deadline = strategy, participation, quorum, deadline
        self.secret = secret
        self.counter = counter or ByteCounter()
        self.step = 0  # the next step to aggregate
        self.attempt = 0  # rounds of this step that closed without replies
        self.history: list[Message] = []  # broadcasts of steps history_start .. step-1
        self.history_start = 0
        self.synced = {c: 0 for c in range(clients)}  # the next step each client needs
        self.active = set(range(clients))  # clients that may come back: they hold the history
        self.online = set(range(clients))
        self.round: dict | None = None
        self.checksums: dict[int, dict[int, bytes]] = {}
        self.mismatches: list[dict] = []
        self.stragglers = 0

    # ------------------------------------------------------------ membership

    def _check_client(self, client: int) -> None:
        if client not in self.synced:
            raise ValueError(f"unknown client {client!r}")

    def set_online(self, client: int, online: bool) -> None:
        """A client reachable or not; an offline client misses broadcasts and must catch_up() when back."""
        self._check_client(client)
        if online:
            self.online.add(client)
            self.active.add(client)
        else:
            self.online.discard(client)

    def leave(self, client: int) -> None:
        """A client gone for good: the history no longer waits for it."""
        self._check_client(client)
        self.active.discard(client)
        self.online.discard(client)
        self._trim()

    def _trim(self) -> None:
        if isinstance(self.strategy, FedKSeed):  # anyone older is served from the pool's checkpoint
            start = self.strategy.checkpoint.step
        else:
            start = min((self.synced[c] for c in self.active), default=self.step)
        if start > self.history_start:
            del self.history[: start - self.history_start]
            self.history_start = start

    # ------------------------------------------------------------ rounds

    def open_round(self) -> list[int]:
        """Sample this round's clients among those online and synced (caught up)."""
        if self.round is not None:
            raise RuntimeError(f"round for step {self.step} is still open")
        ready = sorted(c for c in self.online if self.synced[c] == self.step)
        if not ready:
            raise RuntimeError(f"no online, synced client can answer step {self.step}")
        draws = {c: unit(self.secret, _SAMPLE, self.step, self.attempt, c) for c in ready}
        sampled = [c for c in ready if draws[c] < self.participation] or [min(ready, key=draws.get)]
        self.round = dict(sampled=set(sampled), ups={}, closed_at=None)
        return sampled

    def receive(self, client: int, frame: bytes, at: float = 0.0) -> bool:
        """A reply arriving `at` seconds into the round; False if it came too late to count."""
        r = self.round
        if r is None:
            raise RuntimeError("no round is open")
        if client not in r["sampled"]:
            raise ValueError(f"client {client} was not sampled for step {self.step}")
        msg = self.counter.receive(client, "up", frame)
        if r["closed_at"] is not None and at > r["closed_at"] or self.deadline is not None and at > self.deadline:
            self.stragglers += 1
            return False
        if client in r["ups"]:
            raise ValueError(f"client {client} answered step {self.step} twice")
        self.strategy.check(self.step, client, msg)  # a bad reply is refused here, not at aggregation
        r["ups"][client] = msg
        if len(r["ups"]) >= (self.quorum or len(r["sampled"])):
            r["closed_at"] = at
        return True

    def ready(self, now: float) -> bool:
        """Whether the round can close: its quorum replied, or `now` is past the deadline."""
        r = self.round
        return r is not None and (r["closed_at"] is not None or self.deadline is not None and now >= self.deadline)

    def close(self) -> bytes | None:
        """Aggregate, record and broadcast; None (and the step is retried) when nobody replied in time."""
        r, self.round = self.round, None
        if r is None:
            raise RuntimeError("no round is open")
        if not r["ups"]:
            self.attempt += 1
            return None
        down = self.strategy.aggregate(self.step, r["ups"], self.secret)
        self.strategy.ops(self.step, down)  # keeps the server's copy of any strategy state (pool accumulators)
        self.history.append(down)
        frame = encode(down)
        for c in sorted(self.online):
            self.counter.send(c, "down", down)
            self.synced[c] = self.step + 1
        self.step += 1
        self.attempt = 0
        self._trim()
        return frame

    def catch_up(self, client: int) -> list[bytes]:
        """The frames that bring a returning client to the current step (counted "down")."""
        self._check_client(client)
        need = self.synced[client]
        msgs: list[Message] = []
        if need < self.history_start:
            if not isinstance(self.strategy, FedKSeed):
                raise CatchUpError(f"client {client} needs the broadcasts from step {need}, but the server holds "
                                   f"them from step {self.history_start} only (trimmed after the client left); "
                                   "rebuild its replica from an orbit replay instead")
            msgs.append(self.strategy.checkpoint)
            need = self.strategy.checkpoint.step
        if need < self.step:
            msgs.append(self.strategy.history(need, self.history[need - self.history_start:]))
        self.synced[client] = self.step
        self.active.add(client)
        return [self.counter.send(client, "down", m) for m in msgs]

    # ------------------------------------------------------------ saving and restoring

    def state_dict(self) -> dict:
        """The server's counters and membership as JSON-able values (between rounds). The strategy's state
        and the broadcasts are not in it: load_state_dict takes the broadcasts, which rebuild both."""
        if self.round is not None:
            raise RuntimeError("save the server between rounds, not while one is open")
        return dict(step=self.step, attempt=self.attempt, history_start=self.history_start,
                    synced=[[c, s] for c, s in sorted(self.synced.items())], active=sorted(self.active),
                    online=sorted(self.online), stragglers=self.stragglers, mismatches=self.mismatches,
                    counter=self.counter.state_dict())

    def load_state_dict(self, state: dict, downs: list[Message]) -> None:
        """Restore a state_dict() given the broadcasts of steps 0..step-1, which this server's strategy
        replays (a fresh strategy instance ends in the state the saved one had)."""
        if len(downs) != state["step"]:
            raise ValueError(f"the server state is at step {state['step']} but {len(downs)} broadcasts were given")
        for t, down in enumerate(downs):
            self.strategy.ops(t, down)
        self.step, self.attempt, self.history_start = state["step"], state["attempt"], state["history_start"]
        self.history = list(downs[self.history_start:])
        self.synced = {c: s for c, s in state["synced"]}
        self.active, self.online = set(state["active"]), set(state["online"])
        self.stragglers, self.mismatches = state["stragglers"], list(state["mismatches"])
        self.counter.load_state_dict(state["counter"])

    # ------------------------------------------------------------ replica checksums

    def checksum(self, client: int, frame: bytes) -> bool:
        """Compare a replica's digest with the others reported for the same step; False on a mismatch."""
        self._check_client(client)
        msg = self.counter.receive(client, "up", frame)
        if not isinstance(msg, Checksum):
            raise ValueError(f"expected a Checksum message, got {type(msg).__name__}")
        seen = self.checksums.setdefault(msg.step, {})
        seen[client] = msg.digest
        for old in [s for s in self.checksums if s < msg.step - 1000]:  # bounded: only recent steps compare
            del self.checksums[old]
        reference = next(iter(seen.values()))
        if msg.digest != reference:
            self.mismatches.append(dict(step=msg.step, client=client, differs_from=next(iter(seen))))
            return False
        return True
