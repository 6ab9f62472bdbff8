"""The federated demo (`make demo`): FeedSign with 5 clients fine-tunes the pretrained all-MiniLM-L6-v2 on the
VADER sentiment lexicon, beside ZO-FedSGD with 5 clients and centralized ZO-SGD on all the data.

    python examples/federated_demo.py [--steps 150] [--out runs/demo]

Every run starts from the same base model (LoRA rank 4 on query/value + a zero-shot head) and takes the
same number of steps; a federated step uses 16 examples per client, the centralized one 5 x 16. Prints a
table (held-out accuracy, payload and total bytes up and down per client, steps, time) and writes
runs/demo/demo.png (accuracy vs step and vs bytes) and the runs' own folders (metrics, orbits, plots).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import time

import numpy as np
import torch

import zokernels
from zofed import sim, strategies, tasks
from zofed.plots import plot_curves


def centralized(task, steps: int, batch: int, lr: float, eval_every: int, seed: int = 0) -> tuple[list, float]:
    """Plain ZO-SGD (MeZO) on the union of the clients' data: no communication."""
    opt = zokernels.ZOSGD(task.model, lr=lr, eps=1e-3, mode="shadow", seed=seed)
    first = task.evaluate(task.model)
    rows = [dict(step=0, accuracy=first["accuracy"])]
    t0 = time.perf_counter()
    for t in range(steps):
        idx = np.random.default_rng([seed, t]).integers(0, len(task.labels), batch).tolist()
        b = task.batch(idx)
        opt.step(lambda: task.losses(task.model, b).mean())
        if (t + 1) % eval_every == 0 or t + 1 == steps:
            rows.append(dict(step=t + 1, accuracy=task.evaluate(task.model)["accuracy"]))
    opt.close()
    return rows, time.perf_counter() - t0


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if os.path.isdir(args.out):
        shutil.rmtree(args.out)  # the demo owns its folder: fresh runs, not resumed ones
    base = tasks.build("vader")
    fresh = lambda: dataclasses.replace(base, model=copy.deepcopy(base.model))  # noqa: E731
    table, curves = [], {}
    for strategy in ("feedsign", "zo-fedsgd"):
        cfg = sim.SimConfig(strategy=strategy, clients=args.clients, steps=args.steps, eval_every=50)
        s = sim.run(fresh(), cfg, out=os.path.join(args.out, strategy), progress=not args.no_progress)
        with open(os.path.join(args.out, strategy, "metrics.jsonl")) as f:
            curves[f"{strategy}, K={args.clients}"] = [r for r in map(json.loads, f) if "accuracy" in r]
        table.append(dict(run=f"{strategy}, {args.clients} clients", initial=s["initial_accuracy"],
                          final=s["final_accuracy"], payload_up=s["payload_bits_up_per_client_per_step"],
                          payload_down=s["payload_bits_down_per_client_per_step"], bytes_up=s["bytes_up_per_client"],
                          bytes_down=s["bytes_down_per_client"], steps=s["steps"], seconds=s["seconds"]))
    lr = strategies.STRATEGIES["zo-fedsgd"].default_lr  # the centralized baseline takes the zo-fedsgd runs' step
    rows, seconds = centralized(fresh(), args.steps, 16 * args.clients, lr, 50)
    curves["ZO-SGD, centralized"] = rows
    table.append(dict(run="ZO-SGD, centralized", initial=rows[0]["accuracy"], final=rows[-1]["accuracy"],
                      payload_up=0, payload_down=0, bytes_up=0, bytes_down=0, steps=args.steps, seconds=seconds))
    png = plot_curves(curves, os.path.join(args.out, "demo.png"))
    print("\n| run | held-out accuracy | payload bits up, down per client per step | bytes up, down per client "
          "| steps | time |\n| --- | --- | --- | --- | --- | --- |")
    for r in table:
        print(f"| {r['run']} | {100 * r['initial']:.1f}% -> {100 * r['final']:.1f}% | {r['payload_up']:g}, "
              f"{r['payload_down']:g} | {r['bytes_up']:,.0f}, {r['bytes_down']:,.0f} | {r['steps']} | "
              f"{r['seconds']:.0f} s |")
    print(f"\nplot: {png}; runs (metrics.jsonl, orbit, summary.json, plots): {args.out}/")
    with open(os.path.join(args.out, "demo.json"), "w") as f:
        json.dump(table, f, indent=1)
    return table


if __name__ == "__main__":
    main()
