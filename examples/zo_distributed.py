"""ZO fine-tuning of a small OPT-style model across processes: data parallel or FSDP2-sharded.

    torchrun --nproc_per_node 2 examples/zo_distributed.py --parallel dp
    torchrun --nproc_per_node 2 examples/zo_distributed.py --parallel fsdp2
    python examples/zo_distributed.py --parallel none        # the one-process run fsdp2 reproduces

The model is OPTForCausalLM with random weights from a small local OPTConfig (nothing from a hub); the
data is synthetic: each sequence counts up from a random start by a random stride (mod the vocabulary),
so next-token prediction is learnable. gloo on CPU, NCCL (one GPU per rank) when CUDA is there.

  dp     every rank draws its own batches; ZOSGD(model, process_group=WORLD) averages the step's 2q losses
         over the ranks in one all-reduce, so every rank applies the same update: the replicas stay
         bit-identical with no gradient or weight traffic (the effective batch is --batch x ranks).
  fsdp2  the model is sharded with fully_shard (each decoder layer, then the root); every rank draws the
         same batches, perturbs and updates only its own shards, and the run equals the one-process run
         bit for bit (the noise of element i depends on its global index, not on the shard holding it).
  none   one process, no torch.distributed (on the first GPU when there is one).

Rank 0 prints one JSON line per step, {"step", "loss"} (loss at w + eps z, averaged over the ranks in dp),
then {"sha256", "rank_sha256", ...}: the sha256 of the whole weights' bytes (shards gathered) and each
rank's own, so the replicas (dp) and the sharded run (fsdp2, against none) can be compared bit for bit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

import torch
import torch.distributed as dist
from transformers import OPTConfig, OPTForCausalLM

import zokernels


def build_model(args) -> OPTForCausalLM:
    torch.manual_seed(args.seed)  # every rank builds the same random weights
    cfg = OPTConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                    num_attention_heads=2, ffn_dim=2 * args.hidden, word_embed_proj_dim=args.hidden,
                    max_position_embeddings=args.seq, dropout=0.0, attention_dropout=0.0)
    return OPTForCausalLM(cfg)


def batch(args, step: int, stream: int, device: torch.device) -> torch.Tensor:
    """Token ids for one step: stream r's batches are the same wherever they are drawn."""
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + stream * 10_007 + step)
    start = torch.randint(0, args.vocab, (args.batch, 1), generator=g)
    stride = torch.randint(1, 4, (args.batch, 1), generator=g)
    return ((start + stride * torch.arange(args.seq)) % args.vocab).to(device)


def sha256(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes in order (a tied weight once), DTensor shards gathered: a collective
    that every rank calls."""
    from torch.distributed.tensor import DTensor

    return sha256(p.full_tensor() if isinstance(p, DTensor) else p for p in model.parameters())


def local_sha256(model: torch.nn.Module) -> str:
    """sha256 of what this rank holds (its shards under fsdp2)."""
    from torch.distributed.tensor import DTensor

    return sha256(p.to_local() if isinstance(p, DTensor) else p for p in model.parameters())


def setup(parallel: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); initializes the process group that torchrun describes."""
    cuda = torch.cuda.is_available()
    if parallel == "none":  # on the device the ranks would use, so that the runs can be compared bit for bit
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def shard(model: torch.nn.Module, device: torch.device, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    # reshard_after_forward=True for the root too: left unsharded after a forward, the root would run the next
    # forward on its gathered copy and ignore the in-place perturbation of its shards.
    for layer in model.model.decoder.layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)


def run(args, emit=print) -> dict:
    rank, world, device = setup(args.parallel)
    try:
        model = build_model(args).to(device)
        if args.parallel == "fsdp2":
            shard(model, device, world)
        group = dist.group.WORLD if args.parallel == "dp" else None
        opt = zokernels.ZOSGD(model, lr=args.lr, eps=args.eps, mode=args.mode, seed=args.seed, q=args.q,
                              process_group=group)
        stream = rank if args.parallel == "dp" else 0  # fsdp2: every rank the same batch
        for step in range(args.steps):
            ids = batch(args, step, stream, device)
            loss = opt.step(lambda: model(input_ids=ids, labels=ids).loss)
            if rank == 0:
                emit(json.dumps(dict(step=step, loss=loss)))
        opt.close()
        final = dict(parallel=args.parallel, mode=args.mode, world=world, steps=args.steps,
                     params=sum(p.numel() for p in model.parameters()), sha256=weights_sha256(model))
        mine = local_sha256(model)
        if world > 1:
            every = [None] * world
            dist.all_gather_object(every, mine)
        else:
            every = [mine]
        final["rank_sha256"] = every
        if rank == 0:
            emit(json.dumps(final))
        return final
    finally:
        if args.parallel != "none":
            dist.destroy_process_group()


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parallel", choices=("dp", "fsdp2", "none"), required=True)
    ap.add_argument("--mode", choices=("inplace", "shadow"), default="shadow", help="ZOSGD's perturbation mode")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8, help="sequences per rank and step")
    ap.add_argument("--seq", type=int, default=16, help="tokens per sequence")
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--q", type=int, default=1, help="perturbations per step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name in ("steps", "batch", "seq", "vocab", "layers", "q"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if args.hidden < 2 or args.hidden % 2:
        ap.error("--hidden must be an even number >= 2 (2 attention heads)")
    if not (args.lr > 0 and args.eps > 0):
        ap.error("--lr and --eps must be > 0")
    if not 0 <= args.seed < 2**32:
        ap.error("--seed must be in 0..2**32-1")
    if args.parallel != "none" and "RANK" not in os.environ:
        ap.error(f"--parallel {args.parallel} runs under torchrun: "
                 f"torchrun --nproc_per_node 2 examples/zo_distributed.py --parallel {args.parallel}")
    return args


if __name__ == "__main__":
    run(parse())
