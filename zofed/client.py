"""The client side: a model replica driven by seeds, and a client that answers rounds with it.

A replica's trainable parameters change only through broadcast seeds and scalars, applied with the
multi-seed update of zokernels, so two replicas that apply the same broadcasts are bit-identical;
`digest()` lets them prove it cheaply. Projections use zokernels.ZOSGD in shadow mode: the weights
are never written during the forwards, so evaluating a seed leaves them exactly as they were.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

import zokernels

from .strategies import FedKSeed, Strategy
from .wire import Checksum, Dense, PoolState, decode, encode


def weights_sha256(model: nn.Module) -> str:
    """sha256 of every tensor in the state dict, in name order (name, dtype, shape and raw bytes): the
    model_sha256 of run summaries and orbits."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(_raw_bytes(t))
    return h.hexdigest()


def _raw_bytes(t: torch.Tensor) -> bytes:
    """A tensor's elements as stored, row-major (any dtype, bfloat16 included)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


class Replica:
    """The trainable parameters of `model` (requires_grad=True), driven by seeds.

    keep_base: keep a copy of the starting trainable weights, for strategies that rebuild from them
    (the FedKSeed pool); costs one copy of the trainable parameters.
    """

    def __init__(self, model: nn.Module, *, eps: float = 1e-3, dist: str = "gaussian", keep_base: bool = False,
                 backend: str | None = None):
        self.model, self.eps = model, eps
        self.opt = zokernels.ZOSGD(model, lr=0.0, eps=eps, mode="shadow", dist=dist, backend=backend)
        self.params = [p for g in self.opt.param_groups for p in g["params"]]
        self.base = [p.detach().clone() for p in self.params] if keep_base else None

    def projection(self, seed: int, closure: Callable[[], torch.Tensor]) -> float:
        """(L(w + eps z) - L(w - eps z)) / (2 eps) on the closure's batch."""
        return self.opt.projection(seed, closure)

    def evaluate_pair(self, seed: int, closure: Callable):
        """The closure's outputs at w +- eps z(seed) (see ZOSGD.evaluate_pair)."""
        return self.opt.evaluate_pair(seed, closure)

    @torch.no_grad()
    def apply(self, ops: Iterable[tuple], chunk: int = 4096) -> None:
        """Apply strategy ops in order; consecutive updates merge into multi-seed passes of up to `chunk`
        pairs, which is bit-identical to applying them one by one."""
        seeds: list[int] = []
        coeffs: list[float] = []
        for kind, op_seeds, op_coeffs in ops:
            if kind == "rebuild":
                seeds, coeffs = [], []  # superseded: the rebuild does not depend on the current weights
                if self.base is None:
                    raise RuntimeError("this strategy rebuilds from the base weights: make the Replica with "
                                       "keep_base=True")
                for p, b in zip(self.params, self.base):
                    p.copy_(b)
            elif kind != "update":
                raise ValueError(f"unknown op {kind!r}")
            seeds.extend(op_seeds)
            coeffs.extend(op_coeffs)
            if len(seeds) >= chunk:
                self.opt.apply_updates(seeds, coeffs)
                seeds, coeffs = [], []
        if seeds:
            self.opt.apply_updates(seeds, coeffs)

    def close(self) -> None:
        """Remove the shadow-mode hooks: the model runs plain forwards again."""
        self.opt.close()

    def digest(self) -> bytes:
        """A 16-byte blake2b digest of the trainable weights (in noise-key order)."""
        h = hashlib.blake2b(digest_size=16)
        for p in sorted(self.params, key=lambda p: self.opt.key_of[id(p)]):
            h.update(_raw_bytes(p))
        return h.digest()


@torch.no_grad()
def local_steps(replica: Replica, strategy: Strategy, step: int, client: int,
                closures: Sequence[Callable]) -> tuple[list[float], list[float]]:
    """A client's local steps of a round (FedKSeed's local_steps = H): for h = 0..H-1, the projection at the
    current weights along z(strategy.seed_for(step, client, h)) on closures[h]'s batch, then the local ZO-SGD
    step w -= lr * g * z. The weights are restored exactly afterwards (the round's result arrives as the
    broadcast), so a replica shared by several simulated clients serves each in turn. A closure returns a
    loss or per-example losses (averaged). Returns the H projections and the H losses (L+ + L-) / 2."""
    if len(closures) != strategy.local_steps:
        raise ValueError(f"{strategy.name} takes {strategy.local_steps} local step(s) per round: give as many "
                         f"closures, got {len(closures)}")
    start = [p.detach().clone() for p in replica.params]
    projections, losses = [], []
    try:
        for h, closure in enumerate(closures):
            seed = strategy.seed_for(step, client, h)
            plus, minus = replica.evaluate_pair(seed, closure)
            lp, lm = float(plus.float().mean()), float(minus.float().mean())
            g = (lp - lm) / (2 * replica.eps)
            if not math.isfinite(g):
                raise FloatingPointError(f"non-finite loss for client {client} at step {step}, local step {h}; "
                                         "the weights are restored to the round's")
            projections.append(g)
            losses.append((lp + lm) / 2)
            if h + 1 < len(closures):  # the last local update would be undone at once
                replica.apply([("update", (seed,), (-strategy.lr * g,))])
    finally:
        for p, w in zip(replica.params, start):
            p.copy_(w)
    return projections, losses


class Client:
    """One federated client: its replica, its own copy of the strategy's state, and its step counter.

    loss(batch) -> scalar tensor runs the model on the client's data; `answer` returns the encoded reply
    for the current step, `receive` applies a broadcast, `catch_up` applies the frames a returning
    client gets from the server, `checksum` is the replica digest to report.
    """

    def __init__(self, cid: int, replica: Replica, strategy: Strategy, *, byzantine: bool = False):
        if isinstance(strategy, FedKSeed) and replica.base is None:
            raise ValueError("a FedKSeed client needs Replica(..., keep_base=True)")
        self.cid, self.replica, self.strategy, self.byzantine = cid, replica, strategy, byzantine
        self.step = 0

    def answer(self, closure: Callable[[], torch.Tensor] | Sequence[Callable[[], torch.Tensor]]) -> bytes:
        """The reply for the current step; with local steps, `closure` is one closure per local step."""
        if self.strategy.local_steps == 1 and callable(closure):
            p = self.replica.projection(self.strategy.seed_for(self.step, self.cid), closure)
        else:
            p, _ = local_steps(self.replica, self.strategy, self.step, self.cid, closure)
        return encode(self.strategy.up(self.step, self.cid, p, self.byzantine))

    def receive(self, frame: bytes) -> None:
        self.replica.apply(self.strategy.ops(self.step, decode(frame)))
        self.step += 1

    def catch_up(self, frames: Iterable[bytes]) -> None:
        ops: list[tuple] = []
        for frame in frames:
            msg = decode(frame)
            if isinstance(msg, PoolState):
                if not isinstance(self.strategy, FedKSeed):
                    raise ValueError("a pool state arrived for a strategy without a seed pool")
                ops.extend(self.strategy.load(msg))
                self.step = msg.step
                continue
            for down in self.strategy.steps_of(msg):
                if down.first_step != self.step:
                    raise ValueError(f"catch-up for step {down.first_step} arrived at a client on step {self.step}")
                ops.extend(self.strategy.ops(self.step, down))
                self.step += 1
        self.replica.apply(ops)

    def checksum(self) -> bytes:
        return encode(Checksum(self.step, self.replica.digest()))


def flat_weights(params) -> torch.Tensor:
    """The parameters as one float32 vector (what dense FedAvg uploads and averages)."""
    return torch.cat([p.detach().float().reshape(-1) for p in params])


@torch.no_grad()
def load_flat(params, flat: torch.Tensor) -> None:
    n = 0
    for p in params:
        p.copy_(flat[n:n + p.numel()].view_as(p))
        n += p.numel()


def dense_frame_bytes(params) -> int:
    """The size of a Dense frame of these parameters: what a receiver of dense weights accepts (more than
    wire.MAX_FRAME_BYTES for a model over about 4M weights)."""
    return Dense.frame_bytes(sum(p.numel() for p in params))


def to_dense(step: int, flat: torch.Tensor) -> Dense:
    return Dense(step, flat.float().numpy().astype("<f4").tobytes())


def from_dense(msg: Dense) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(msg.data, dtype="<f4").copy())
