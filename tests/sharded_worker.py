"""Sharded ZO worker for tests/test_sharded.py, launched by torchrun as 2 or 3 gloo processes.

Every rank builds the same tiny model, shards it (FSDP2 fully_shard; with 2 processes also tensor
parallel), takes the same batch and runs 10 ZO steps per scenario; the full weights are then gathered
and rank 0 writes their sha256 (and the losses every step saw) to OUT/scenarios.json. The test
compares them with the same steps in one process without sharding.
"""

import hashlib
import json
import sys

import torch
import torch.distributed as dist
from torch import nn

import zokernels

STEPS, LR, EPS, SEED = 10, 1e-2, 1e-3, 7
# scenario -> (how the model is sharded, optimizer class, its options); TP only with 2 processes
SCENARIOS = {
    "fsdp-inplace": ("fsdp", "ZOSGD", dict(mode="inplace", weight_decay=0.1)),
    "fsdp-shadow": ("fsdp", "ZOSGD", dict(mode="shadow")),
    "fsdp-adam": ("fsdp", "ZOAdam", dict(mode="inplace", lr=1e-3)),
    "tp-inplace": ("tp", "ZOSGD", dict(mode="inplace", weight_decay=0.1)),
    "tp-shadow": ("tp", "ZOSGD", dict(mode="shadow")),
    "tp-momentum": ("tp", "ZOSGD", dict(mode="shadow", momentum=0.9)),
}


class MLP(nn.Module):
    """Row counts 13, 5 and 2 split unevenly over 2 and 3 ranks (2 rows over 3: one rank holds none)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2, self.head = nn.Linear(6, 13), nn.LayerNorm(13), nn.Linear(13, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(self.norm(torch.tanh(self.fc1(x))))))


class Block(nn.Module):
    """Attention-like: q/k/v column-parallel (Shard(0)), heads kept per rank, the output row-parallel (Shard(1))."""

    def __init__(self, dim: int = 8, head_dim: int = 4):
        super().__init__()
        self.head_dim = head_dim
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.head = nn.Linear(dim, 2)

    def forward(self, x):  # x: (batch, seq, dim)
        b, s, _ = x.shape

        def split(t):  # (batch, heads, seq, head_dim): a column-parallel output holds this rank's heads
            return t.view(b, s, -1, self.head_dim).transpose(1, 2)

        att = torch.softmax(split(self.q(x)) @ split(self.k(x)).transpose(-1, -2), dim=-1) @ split(self.v(x))
        return self.head(self.out(att.transpose(1, 2).reshape(b, s, -1)))


def model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return MLP() if kind == "fsdp" else Block()


def batch(kind: str):
    g = torch.Generator().manual_seed(100)
    x = torch.randn(16, 6, generator=g) if kind == "fsdp" else torch.randn(4, 3, 8, generator=g)
    return x, torch.randn(*x.shape[:-1], 2, generator=g)


def train(m: nn.Module, kind: str, opt_name: str, options: dict) -> list[float]:
    """STEPS steps; returns every loss the closure returned, in order."""
    x, y = batch(kind)
    kw = dict(lr=LR, eps=EPS, seed=SEED)
    kw.update(options)
    opt = getattr(zokernels, opt_name)(m, **kw)
    seen = []

    def closure():
        loss = nn.functional.mse_loss(m(x), y)
        seen.append(float(loss))
        return loss

    for _ in range(STEPS):
        opt.step(closure)
    opt.close()
    return seen


def digests(named) -> dict:
    return {n: hashlib.sha256(t.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
            for n, t in named}


def shard(m: nn.Module, kind: str, mesh) -> nn.Module:
    if kind == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for sub in (m.fc1, m.fc2, m.head):
            fully_shard(sub, mesh=mesh)
        return fully_shard(m, mesh=mesh)  # the root keeps norm's parameters: unsharded after a forward
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    return parallelize_module(m, mesh, {"q": ColwiseParallel(), "k": ColwiseParallel(), "v": ColwiseParallel(),
                                        "out": RowwiseParallel()})


def main(out: str) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    results = {}
    for name, (kind, opt_name, options) in SCENARIOS.items():
        if kind == "tp" and world != 2:
            continue
        m = shard(model(kind), kind, mesh)
        losses = train(m, kind, opt_name, options)
        if kind == "fsdp":
            m.reshard()
        full = [(n, p.full_tensor() if hasattr(p, "full_tensor") else p) for n, p in m.named_parameters()]
        placements = {n: str(getattr(p, "placements", "plain")) for n, p in m.named_parameters()}
        results[name] = dict(digests=digests(full), losses=losses, placements=placements)
    if dist.get_rank() == 0:
        with open(f"{out}/scenarios.json", "w") as f:
            json.dump(dict(world=world, scenarios=results), f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
