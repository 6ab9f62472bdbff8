"""The `zofed` command line.

    zofed run --strategy feedsign --clients 5 --steps 400 --task vader --model minilm --out runs/feedsign
    zofed orbit info runs/feedsign/orbit
    zofed orbit replay runs/feedsign/orbit --out weights.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys

from . import strategies
from .data import CONVENTIONS
from .orbit import OrbitError
from .sim import SimConfig


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="zofed", description="Federated zeroth-order fine-tuning: simulate runs, "
                                 "inspect and replay orbits.")
    sub = ap.add_subparsers(dest="command", required=True)
    d = SimConfig()
    r = sub.add_parser("run", help="simulate a federated run and write metrics, orbit, summary and plots",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--strategy", choices=sorted(strategies.STRATEGIES), default=d.strategy)
    r.add_argument("--clients", type=int, default=d.clients)
    r.add_argument("--steps", type=int, default=d.steps)
    r.add_argument("--lr", type=float, default=None, help="step size (default: the strategy's, see zofed.sim)")
    r.add_argument("--eps", type=float, default=d.eps)
    r.add_argument("--batch", type=int, default=d.batch, help="examples per client per step")
    r.add_argument("--byzantine", type=int, default=d.byzantine, help="attacking clients (the last ones)")
    r.add_argument("--dirichlet", type=float, default=None, help="label-skew beta (default: iid split)")
    r.add_argument("--convention", choices=CONVENTIONS, default=d.convention, help="Dirichlet convention")
    r.add_argument("--dp-epsilon", type=float, default=d.dp_epsilon)
    r.add_argument("--aggregator", choices=strategies.ZOFedSGD.AGGREGATORS, default=d.aggregator)
    r.add_argument("--pool-size", type=int, default=d.pool_size)
    r.add_argument("--pool-sampling", choices=("uniform", "importance"), default=d.pool_sampling)
    r.add_argument("--participation", type=float, default=d.participation)
    r.add_argument("--dropout", type=float, default=d.dropout)
    r.add_argument("--quorum", type=int, default=None)
    r.add_argument("--deadline", type=float, default=None)
    r.add_argument("--seed", type=int, default=d.seed)
    r.add_argument("--eval-every", type=int, default=d.eval_every)
    r.add_argument("--task", default="vader")
    r.add_argument("--model", default="minilm")
    r.add_argument("--lora-rank", type=int, default=4)
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--no-progress", action="store_true")
    o = sub.add_parser("orbit", help="inspect or replay an orbit file")
    osub = o.add_subparsers(dest="orbit_command", required=True)
    i = osub.add_parser("info", help="print an orbit's header as JSON")
    i.add_argument("orbit")
    p = osub.add_parser("replay", help="rebuild the fine-tuned weights, verify them, write safetensors")
    p.add_argument("orbit")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    return ap


def _run(args) -> None:
    import torch

    from . import sim, tasks

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_progress:
        from transformers.utils import logging

        logging.disable_progress_bar()
    fields = {k: v for k, v in vars(args).items() if k in SimConfig.__dataclass_fields__ and v is not None}
    cfg = SimConfig(**fields)
    cfg.validate()
    task = tasks.build(args.task, model=args.model, lora_rank=args.lora_rank)
    s = sim.run(task, cfg, out=args.out, progress=not args.no_progress)
    print(f"{cfg.strategy}: held-out accuracy {100 * s['initial_accuracy']:.1f}% -> {100 * s['final_accuracy']:.1f}% "
          f"in {cfg.steps} steps ({s['seconds']:.0f} s); per client: {s['bytes_up_per_client']:.0f} B up, "
          f"{s['bytes_down_per_client']:.0f} B down, payload {s['payload_bits_up_per_client_per_step']:g} bit(s) up and "
          f"{s['payload_bits_down_per_client_per_step']:g} down per step; model_sha256 {s['model_sha256']}")
    print(f"wrote {args.out}/metrics.jsonl, orbit ({s['orbit_bytes']} B), summary.json, loss_accuracy.png, "
          "accuracy_bytes.png")


def _replay(args) -> None:
    import os

    from safetensors.torch import save_file

    from . import orbit
    from .client import weights_sha256

    task = orbit.replay(orbit.load(args.orbit))
    state = {k: v.detach().contiguous().clone() for k, v in task.model.state_dict().items()}
    tmp = f"{args.out}.tmp"
    save_file(state, tmp)
    os.replace(tmp, args.out)
    print(weights_sha256(task.model))


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            _run(args)
        elif args.orbit_command == "info":
            from . import orbit

            print(json.dumps(orbit.info(orbit.load(args.orbit)), indent=1))
        else:
            _replay(args)
    except (OrbitError, ValueError, OSError, RuntimeError) as exc:
        print(f"zofed: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
