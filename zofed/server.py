"""The parameter server: integers, bits and scalars only. It never sees the model and imports no torch;
its memory is the broadcast history (bounded by the clients still active), the recent replica checksums
(bounded by CHECKSUM_WINDOW steps) and a few counters.

A round (one step, or a retry of it when nobody answered):

    sampled = server.open_round()                 # which online clients should answer
    server.receive(client, frame, at=seconds)     # replies as they arrive
    server.ready(now)                             # quorum reached, or the deadline has passed
    frame = server.close()                        # the broadcast, for every client in server.online

A round covers `steps_per_round` = B steps from server.step: a client's one reply holds its B steps' answers
(Strategy.reply), the server aggregates each step in order, and the broadcast is one message of the B steps'
results (Strategy.history). The server counts no bytes: the transport that carries the frames does
(zofed.transport).

A reply is checked from its frame header (the strategy's message type and exact size) before its body is
decoded, then its content is checked against the step (seeds, counts). A reply that arrives after its round
closed, during the round's quorum/deadline or after close() (until the next round closes), is a straggler:
counted, then ignored. Clients that were offline catch up with `catch_up(client)`: the broadcasts they
missed, bit-packed into history messages of at most wire.MAX_FRAME_BYTES each, or (FedKSeed pool) the pool's
state plus the broadcasts since the last rebuild.

Replicas report `Checksum` messages for a step no later than the server's. The digest a strict majority of
the replicas reporting for a step share is that step's reference: `mismatches` lists every replica whose
digest differs from it (or, while no digest has a majority, every replica of a step with differing digests),
so a bad replica that reports first cannot make the honest ones look wrong.

Randomness: client sampling is hashed from `sampling_seed` (public: runs are reproducible from it);
DP-FeedSign's mechanism from `secret`, the server's private seed (os.urandom unless the operator gives one).
The secret is in state_dict() (the server's own checkpoint, to resume the same run) and nowhere else: not in
a broadcast, not in an orbit.
"""

from __future__ import annotations

import math
import os
from collections import Counter

from .seeds import unit
from .strategies import Strategy
from .wire import FRAME_BYTES, MAX_FRAME_BYTES, Checksum, Message, WireError, decode, encode, header

_SAMPLE = 0x5A  # hash domain of client sampling
CHECKSUM_WINDOW = 1000  # checksums are compared for the last CHECKSUM_WINDOW steps; older reports are refused


class CatchUpError(RuntimeError):
    """A client needs broadcasts the server no longer holds."""


def _seed(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise ValueError(f"{name} must be an integer in [0, 2**64), got {value!r}")
    return value


def private_seed() -> int:
    """64 bits from the operating system's CSPRNG: a secret no party can derive from the run's seeds."""
    return int.from_bytes(os.urandom(8), "little")


def _first_step(msg: Message) -> int:
    return msg.first_step if hasattr(msg, "first_step") else msg.step


class ParameterServer:
    """Runs a strategy's rounds for clients 0..clients-1.

    Args:
        participation: the fraction of online clients sampled each round (at least one is).
        quorum: replies that close a round early (default: every sampled client).
        deadline: seconds after which a round closes with the replies it has (default: none).
        secret: the server's private seed for DP-FeedSign's mechanism; None draws 64 bits from os.urandom.
            Give one to make a DP run reproducible, and keep it as private as the server.
        sampling_seed: the public seed of client sampling.
        steps_per_round: B, the steps one round answers and broadcasts.
    """

    def __init__(self, strategy: Strategy, clients: int, *, participation: float = 1.0, quorum: int | None = None,
                 deadline: float | None = None, secret: int | None = None, sampling_seed: int = 0,
                 steps_per_round: int = 1):
        if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
            raise ValueError(f"clients must be a positive integer, got {clients!r}")
        if not 0 < participation <= 1:
            raise ValueError(f"participation must be in (0, 1], got {participation}")
        if quorum is not None and (isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1):
            raise ValueError(f"quorum must be a positive integer, got {quorum!r}")
        if deadline is not None and not (deadline > 0 and math.isfinite(deadline)):
            raise ValueError(f"deadline must be a positive number of seconds, got {deadline}")
        self.strategy, self.participation, self.quorum, self.deadline = strategy, participation, quorum, deadline
        self.secret = private_seed() if secret is None else _seed("secret", secret)
        self.sampling_seed = _seed("sampling_seed", sampling_seed)
        if isinstance(steps_per_round, bool) or not isinstance(steps_per_round, int) or steps_per_round < 1:
            raise ValueError(f"steps_per_round must be a positive integer, got {steps_per_round!r}")
        self.steps_per_round = steps_per_round
        self.step = 0  # the next step to aggregate
        self.attempt = 0  # rounds of this step that closed without replies
        self.history: list[Message] = []  # broadcasts of steps history_start .. step-1
        self.history_start = 0
        self.synced = {c: 0 for c in range(clients)}  # the next step each client needs
        self.active = set(range(clients))  # clients that may come back: they hold the history
        self.online = set(range(clients))
        self.round: dict | None = None
        self.late: dict[int, int] = {}  # client -> step: sampled in a closed round, its reply not yet seen
        self.checksums: dict[int, dict[int, bytes]] = {}  # step -> client -> digest, the last CHECKSUM_WINDOW steps
        self.stragglers = 0

    # ------------------------------------------------------------ membership

    def _check_client(self, client) -> None:
        if isinstance(client, bool) or not isinstance(client, int) or client not in self.synced:
            raise ValueError(f"unknown client {client!r} (clients are the integers 0..{len(self.synced) - 1})")

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
        start = self.strategy.history_floor()  # anyone older is served from the strategy's snapshot
        if start is None:
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
        draws = {c: unit(self.sampling_seed, _SAMPLE, self.step, self.attempt, c) for c in ready}
        sampled = [c for c in ready if draws[c] < self.participation] or [min(ready, key=draws.get)]
        self.round = dict(sampled=set(sampled), ups={}, late=set(), closed_at=None)
        return sampled

    def _decode(self, client: int, frame: bytes, kind: type, entries: int) -> Message:
        """Check a frame's type and size from its header alone, then decode and count it."""
        got, n = header(frame)
        if got is not kind:
            raise ValueError(f"client {client}: expected a {kind.__name__} message, got {got.__name__}")
        size = kind.frame_bytes(entries)
        if FRAME_BYTES + n != size:
            raise ValueError(f"client {client}: a {FRAME_BYTES + n}-byte {kind.__name__} frame, where a valid one "
                             f"is {size} bytes")
        return decode(frame, max_bytes=size)

    def receive(self, client: int, frame: bytes, at: float = 0.0) -> bool:
        """A reply arriving `at` seconds into the round; False if it came too late to count (a straggler)."""
        self._check_client(client)
        r = self.round
        if (r is None or client not in r["sampled"]) and client not in self.late:
            if r is None:
                raise RuntimeError("no round is open")
            raise ValueError(f"client {client} was not sampled for step {self.step}")
        kind, entries = self.strategy.reply_shape()
        msg = self._decode(client, frame, kind, entries * self.steps_per_round)
        if (r is None or client not in r["sampled"] or _first_step(msg) != self.step) and \
                self.late.get(client) == _first_step(msg):
            del self.late[client]  # the reply to a round that has closed
            self.stragglers += 1
            return False
        if r is None or client not in r["sampled"]:
            raise ValueError(f"client {client} answered step {_first_step(msg)}, which is not open")
        if r["closed_at"] is not None and at > r["closed_at"] or self.deadline is not None and at > self.deadline:
            self.stragglers += 1
            r["late"].add(client)
            return False
        if client in r["ups"] or client in r["late"]:
            raise ValueError(f"client {client} answered step {self.step} twice")
        steps = self.strategy.replies_of(msg, self.steps_per_round)
        for i, up in enumerate(steps):  # a bad reply is refused here, not at aggregation
            self.strategy.check(self.step + i, client, up)
        r["ups"][client] = steps
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
        # clients that have not replied may still: until the next round closes, their reply is a straggler
        self.late = {c: s for c, s in self.late.items() if s == self.step}
        self.late.update((c, self.step) for c in r["sampled"] - set(r["ups"]) - r["late"])
        if not r["ups"]:
            self.attempt += 1
            return None
        downs = []
        for i in range(self.steps_per_round):
            down = self.strategy.aggregate(self.step + i, {c: ups[i] for c, ups in r["ups"].items()}, self.secret)
            self.strategy.ops(self.step + i, down)  # keeps the server's copy of strategy state (pool accumulators)
            downs.append(down)
        self.history += downs
        frame = encode(self.strategy.history(self.step, downs))
        for c in self.online:
            self.synced[c] = self.step + self.steps_per_round
        self.step += self.steps_per_round
        self.attempt = 0
        self._trim()
        self._prune_checksums()
        return frame

    def catch_up(self, client: int) -> list[bytes]:
        """The frames that bring a returning client to the current step."""
        self._check_client(client)
        need = self.synced[client]
        msgs: list[tuple[Message, bytes]] = []
        if need < self.history_start:
            snapshot = self.strategy.snapshot()
            if snapshot is None:
                raise CatchUpError(f"client {client} needs the broadcasts from step {need}, but the server holds "
                                   f"them from step {self.history_start} only (trimmed after the client left); "
                                   "rebuild its replica from an orbit replay instead")
            msgs.append((snapshot, encode(snapshot)))
            need = snapshot.step
        if need < self.step:
            msgs += self.history_messages(need, self.history[need - self.history_start:])
        self.synced[client] = self.step
        self.active.add(client)
        return [frame for _, frame in msgs]

    def history_messages(self, first: int, downs: list[Message]) -> list[tuple[Message, bytes]]:
        """The broadcasts of steps first.. as (history message, frame) pairs whose frames a client decodes with
        the default size cap."""
        msg = self.strategy.history(first, downs)
        try:
            frame = encode(msg)
        except WireError:  # more entries than one message holds
            frame = None
        if len(downs) == 1 or frame is not None and len(frame) <= MAX_FRAME_BYTES:
            return [(msg, frame if frame is not None else encode(msg))]
        half = len(downs) // 2
        return self.history_messages(first, downs[:half]) + self.history_messages(first + half, downs[half:])

    # ------------------------------------------------------------ saving and restoring

    def state_dict(self) -> dict:
        """The server's counters, membership, recent checksums and secret as JSON-able values (between rounds).
        The strategy's state and the broadcasts are not in it: load_state_dict takes the broadcasts, which
        rebuild both. It holds the secret: keep it as private as the server."""
        if self.round is not None:
            raise RuntimeError("save the server between rounds, not while one is open")
        return dict(step=self.step, attempt=self.attempt, history_start=self.history_start,
                    synced=[[c, s] for c, s in sorted(self.synced.items())], active=sorted(self.active),
                    online=sorted(self.online), late=sorted(self.late.items()), stragglers=self.stragglers,
                    checksums=[[s, [[c, d.hex()] for c, d in sorted(seen.items())]]
                               for s, seen in sorted(self.checksums.items())],
                    secret=self.secret)

    def load_state_dict(self, state: dict, downs) -> None:
        """Restore a state_dict() given the broadcasts of steps 0..step-1, which this server's strategy
        replays (a fresh strategy instance ends in the state the saved one had). ValueError, and nothing
        changed, for a state that is not one this server could have saved."""
        try:
            step, attempt, start = (_count(state[k]) for k in ("step", "attempt", "history_start"))
            synced = {_client(c, self.synced): _count(s) for c, s in state["synced"]}
            active = {_client(c, self.synced) for c in state["active"]}
            online = {_client(c, self.synced) for c in state["online"]}
            late = {_client(c, self.synced): _count(s) for c, s in state["late"]}
            checksums = {_count(s): {_client(c, self.synced): bytes.fromhex(d) for c, d in seen}
                         for s, seen in state["checksums"]}
            stragglers, secret = _count(state["stragglers"]), _seed("secret", state["secret"])
        except KeyError as exc:
            raise ValueError(f"not a saved server state: it has no {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a saved server state: {exc}") from None
        if set(synced) != set(self.synced) or start > step or len(downs) != step:
            raise ValueError(f"the server state (step {step}, {len(synced)} clients) does not fit this server "
                             f"({len(self.synced)} clients) and the {len(downs)} broadcasts given")
        for t, down in enumerate(downs):
            self.strategy.ops(t, down)
        self.step, self.attempt, self.history_start = step, attempt, start
        self.history = list(downs[start:])
        self.synced, self.active, self.online, self.late = synced, active, online, late
        self.checksums, self.stragglers, self.secret = checksums, stragglers, secret

    # ------------------------------------------------------------ replica checksums

    def checksum(self, client: int, frame: bytes) -> bool:
        """Record a replica's digest for its step (at most the server's step, at least CHECKSUM_WINDOW steps
        back); True if it is the digest a strict majority of that step's reports share so far (a first report
        agrees with itself), False if not. A client reports once per step (again only with the same digest)."""
        self._check_client(client)
        msg = self._decode(client, frame, Checksum, 1)
        if msg.step > self.step:
            raise ValueError(f"client {client} reported a checksum for step {msg.step}, but the run is at step "
                             f"{self.step}: no replica can be there yet")
        if msg.step < self.step - CHECKSUM_WINDOW:
            raise ValueError(f"client {client} reported a checksum for step {msg.step}; only the last "
                             f"{CHECKSUM_WINDOW} steps (from {self.step - CHECKSUM_WINDOW}) are compared")
        seen = self.checksums.setdefault(msg.step, {})
        if seen.get(client, msg.digest) != msg.digest:
            raise ValueError(f"client {client} already reported another checksum for step {msg.step}")
        seen[client] = msg.digest
        return _majority(seen) == msg.digest

    def _prune_checksums(self) -> None:
        for old in [s for s in self.checksums if s < self.step - CHECKSUM_WINDOW]:
            del self.checksums[old]

    @property
    def mismatches(self) -> list[dict]:
        """Replicas whose digest differs from their step's majority: dict(step, client, majority), majority the
        clients that hold the majority digest, or None while that step's digests have no strict majority."""
        out = []
        for step, seen in sorted(self.checksums.items()):
            ref = _majority(seen)
            agree = sorted(c for c, d in seen.items() if d == ref) if ref is not None else None
            out += [dict(step=step, client=c, majority=agree) for c, d in sorted(seen.items()) if d != ref]
        return out


def _majority(seen: dict[int, bytes]) -> bytes | None:
    """The digest more than half of the reports share, or None."""
    digest, n = Counter(seen.values()).most_common(1)[0]
    return digest if 2 * n > len(seen) else None


def _count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return value


def _client(value, clients: dict) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in clients:
        raise ValueError(f"unknown client {value!r}")
    return value
