"""Data-parallel ZO worker for tests/test_data_parallel.py, launched by torchrun as 2 gloo processes.

Every rank builds the same model, takes its own batch, and runs ZOSGD(process_group=WORLD) for 10 steps
in each mode (and shadow mode on a DDP-wrapped model); it writes what it saw to OUT/rank{r}.json.
"""

import hashlib
import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

import zokernels

STEPS, LR, EPS, SEED, Q = 10, 1e-2, 1e-3, 7, 2


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.LayerNorm(16), nn.Linear(16, 1))


def batch(rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(32, 6, generator=g)
    return x, x[:, :1] * 2 - x[:, 1:2]


def digest(m: nn.Module) -> str:
    h = hashlib.sha256()
    for p in m.parameters():
        h.update(p.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run(m: nn.Module, mode: str, rank: int) -> dict:
    x, y = batch(rank)
    opt = zokernels.ZOSGD(m, lr=LR, eps=EPS, mode=mode, seed=SEED, q=Q, process_group=dist.group.WORLD)
    steps = []
    for _ in range(STEPS):
        opt.step(lambda: nn.functional.mse_loss(m(x), y))
        steps.append(dict(projections=opt.last_projections, digest=digest(m),
                          allreduce_numbers=opt.stats["allreduce_numbers"]))
    opt.close()
    return dict(steps=steps, weights=[p.detach().flatten().tolist() for p in m.parameters()])


def trainer(out: str) -> dict:
    """ZOTrainer launched the way a Trainer user launches it: each rank trains on its shard of the data."""
    from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

    from zokernels.hf import ZOTrainer

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=16, num_labels=2)
    bert = BertForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (32, 8), generator=g)
    data = [dict(input_ids=ids[i], attention_mask=torch.ones(8, dtype=torch.long), labels=int(ids[i, 0] % 2))
            for i in range(32)]
    args = TrainingArguments(output_dir=os.path.join(out, "trainer"), per_device_train_batch_size=4, learning_rate=1e-3,
                             max_steps=3, report_to=[], use_cpu=True, save_strategy="no", seed=3, logging_steps=1)
    t = ZOTrainer(model=bert, args=args, train_dataset=data, zo_eps=1e-3)
    t.train()
    return dict(digest=digest(bert), steps=t.zo_optimizer.step_count, world=t.args.world_size,
                allreduce_numbers=t.zo_optimizer.stats.get("allreduce_numbers", 0))


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result = {mode: run(model(), mode, rank) for mode in ("inplace", "shadow")}
    result["ddp-shadow"] = run(nn.parallel.DistributedDataParallel(model()), "shadow", rank)
    result["trainer"] = trainer(out)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
