"""Round algorithms (zofed.strategies: FedMeZO, ZOWarmUp) driven through the transport seam on the one run loop
(zofed.loop): the same outputs as zofed.sim (metrics.jsonl, summary.json, plots, an orbit where the run has one)
and the same resumption.

A round algorithm is three separately callable steps and no wire:
    requests(t) -> {client: [Message]}        the server's round opening: what each client gets (model frames
                                              to apply, then Ask(t, 1) where it is to answer; a Report in a
                                              request carries that client's round parameters, FedMeZO's rate)
    client_update(state, client, t, params)   a client, from its state (the round's weights) and its data:
        -> (upload Message, report values)    its upload and the statistics the server's bookkeeping uses
    aggregate(t, uploads) -> Round            the server: {client: (upload, report)} -> the round's broadcast,
                                              its recipients, and the model message the global model follows
                                              (a zofed.strategies.Round)
    apply(state, msg) -> change               a replica applies a broadcast or model message; FedMeZO returns the
                                              norm of the change it made (its "update" signal), ZOWarmUp None
    conclude(t, change) -> row                the server closes the round, told the global model's change
plus make_state(model), state_dict(view) / load_state_dict(view, state), orbit_history(), no_orbit, dist,
max_bytes, cfg (its spec_version: the noise stream of the states' replicas, which the orbit records), task, name,
round. The driver moves the frames: encoding, decoding, the frame-size limit and the byte accounting happen in the
transport (zofed.transport), so an algorithm's byte figures are those of the frames that crossed. A request's
Report and a reply's Report are control (uncounted), as Ask is.

The global model (the evaluator's, and the state every in-process client shares, see InProcRounds) follows each
round's model message before the clients get the broadcast; a state applies a round once (a shared one skips it
when it arrives again). Unlike the step simulator, whose state is rebuilt from the seed history, these runs
checkpoint their weights (FedMeZO's dense average and ZOWarmUp's warm-up are not seed sums): `checkpoint.pt`,
written atomically every `checkpoint_every` rounds, sealed with its sha256 (zofed.atomic), and loaded with
torch.load(weights_only=True). Imports no torch at module level: the server side of FedMeZO needs none.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import pickle

from . import atomic, loop, strategies
from .loop import CHECKPOINT
from .loop import ROUND_CHECKPOINT as STATE
from .transport import InProc, split_frames
from .wire import Ask, Report, decode, encode


class RoundClient:
    """The client runtime of a round algorithm: applies a request's model frames to its state, answers its Ask with
    the algorithm's client update."""

    def __init__(self, cid: int, algo, state):
        self.cid, self.algo, self.state = cid, algo, state

    def handle(self, request: bytes) -> bytes:
        reply, params = [], ()
        for frame in split_frames(request, self.algo.max_bytes):
            msg = decode(frame, self.algo.max_bytes)
            if isinstance(msg, Report):
                params = msg.values
            elif isinstance(msg, Ask):
                up, stats = self.algo.client_update(self.state, self.cid, msg.step, params)
                reply += [encode(up), encode(Report(msg.step, tuple(stats)))]
            else:
                self.algo.apply(self.state, msg)
        return b"".join(reply)


class InProcRounds(InProc):
    """The in-process transport with round clients: on `view` (the global model's state, which they then share:
    each round applied once) or, with view=None, each on its own copy of the task's model."""

    def __init__(self, algo, view=None):
        super().__init__()
        self.algo, self.view, self.own = algo, view, []
        self.max_bytes = algo.max_bytes

    def start(self, run_config: dict, clients: list[int]) -> None:
        for c in clients:
            state = self.view
            if state is None:
                state = self.algo.make_state(copy.deepcopy(self.algo.task.model))
                self.own.append(state)
            self.clients[c] = RoundClient(c, self.algo, state)

    def _together(self, requests):
        return None  # round clients answer one after another

    def close(self) -> None:
        for state in self.own:
            state.close()
        self.own, self.clients = [], {}


def _load_state(path: str):
    import torch

    data = atomic.read_sealed(path)
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except (RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as exc:  # sealed, yet not torch's
        raise atomic.DamagedFileError(f"{path} is not a readable checkpoint ({exc})") from None


class RoundDriver:
    """A round algorithm as zofed.loop.run's driver (and its evaluator: the task's model, the global one), its
    frames moving through `transport` (None: InProcRounds, the clients sharing the global model's state)."""

    unit, checkpoint, other = "round", STATE, CHECKPOINT

    def __init__(self, algo, transport=None):
        from .client import weights_sha256

        self.algo, self.task, self.cfg = algo, algo.task, algo.cfg
        self.view = algo.make_state(algo.task.model)
        self.transport = transport or InProcRounds(algo, self.view)
        self.clients, self.total = algo.cfg.clients, algo.cfg.rounds
        self.name = strategies.run_label(self.config())  # the run's name in its progress bar and plots
        self.counter = self.transport.counter
        self._sha256 = weights_sha256
        self.base_sha256 = weights_sha256(algo.task.model)
        self.transport.start(dict(config=dataclasses.asdict(self.cfg), strategy=algo.name, task=self.task.name,
                                  task_options=dict(self.task.options)), list(range(self.clients)))

    @property
    def position(self) -> int:
        return self.algo.round

    def config(self) -> dict:
        return dict(dataclasses.asdict(self.cfg), strategy=self.algo.name)

    def advance(self) -> dict:
        """One round: open it, collect the uploads, aggregate, bring the global model and the clients to its end."""
        algo, t = self.algo, self.algo.round
        requests = {c: b"".join(encode(m) for m in msgs) for c, msgs in algo.requests(t).items()}
        replies = self.transport.exchange(requests)
        uploads = {}
        for c in requests:
            if replies.get(c):
                up, report = (decode(f, algo.max_bytes) for f in split_frames(replies[c], algo.max_bytes))
                uploads[c] = (up, report.values)
        result = algo.aggregate(t, uploads)
        change = algo.apply(self.view, decode(encode(result.model), algo.max_bytes))  # as it arrives
        if result.down is not None:
            frame = encode(result.down)
            self.transport.exchange({c: frame for c in result.to})
        return algo.conclude(t, change)

    def save(self, path: str, common: dict) -> None:
        import torch

        buf = io.BytesIO()
        state = dict(self.algo.state_dict(self.view), counter=self.counter.state_dict())
        torch.save(dict(common, state=state), buf)
        atomic.write_sealed(path, buf.getvalue())

    def load(self, path: str) -> dict:
        return loop.load_checkpoint(path, _load_state)

    def restore(self, ck: dict) -> None:
        self.algo.load_state_dict(self.view, ck["state"])
        self.counter.load_state_dict(ck["state"]["counter"])

    def finish(self, summary: dict) -> None:
        pass

    def orbit(self):
        history = self.algo.orbit_history()
        if history is None:
            return self.algo.no_orbit
        cfg, task = self.cfg, self.task
        return (dict(strategy=self.algo.name, strategy_options={}, lr=0.0, eps=cfg.eps, dist=self.algo.dist,
                     run_seed=cfg.seed, steps=cfg.rounds, task=task.name, task_options=task.options), history)

    def close(self) -> None:
        self.transport.close()
        self.view.close()

    # the evaluator side
    def evaluate(self) -> dict:
        return self.task.evaluate(self.task.model)

    def sha256(self) -> str:
        return self._sha256(self.task.model)


def run(algo, out: str | None = None, progress: bool = True, checkpoint_every: int = 20, transport=None) -> dict:
    """Run `algo` to its last round; with `out`, write the outputs there and resume from them if present."""
    driver = RoundDriver(algo, transport)
    return loop.run(driver, driver, algo.task.name, algo.task.options, out=out, progress=progress,
                    checkpoint_every=checkpoint_every, eval_every=algo.cfg.eval_every)
