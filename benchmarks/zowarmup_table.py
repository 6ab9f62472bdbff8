"""High-Res-Only vs ZOWarmUp on digits over resource splits, in the shape of the ZOWarmUp paper's Table 2.

    python benchmarks/zowarmup_table.py --out runs/zowarmup      # 30 runs; prints a Markdown table, then JSON

Each run is a `zofed run --strategy zowarmup --task digits` folder under --out (resumable: finished runs are
read back, interrupted ones resume). Seed s sets the client split, the tiers, the sampling, the ZO seeds
and the CNN's initialization (task option init_seed = s). Both methods have the same rounds: ZOWarmUp
spends the last zo_rounds on ZO rounds by every client, High-Res-Only on more first-order rounds by the
high-resource tier.
"""

import argparse
import json
import multiprocessing
import os
import statistics

SPLITS = (0.1, 0.3, 0.5, 0.7, 0.9)
METHODS = ("high-res-only", "zowarmup")


def one(job) -> dict:
    import torch

    torch.set_num_threads(1)
    from zofed import rounds, tasks
    from zofed.strategies import ZOWarmUp, ZOWarmUpConfig

    method, split, seed, root = job
    folder = os.path.join(root, f"{method}-{round(100 * split)}-s{seed}")
    path = os.path.join(folder, "summary.json")
    if not os.path.exists(path):
        cfg = ZOWarmUpConfig(high_fraction=split, high_res_only=method == "high-res-only", seed=seed)
        rounds.run(ZOWarmUp(tasks.build("digits", init_seed=seed), cfg), out=folder, progress=False)
    with open(path) as f:
        s = json.load(f)
    return dict(method=method, split=split, seed=seed, accuracy=100 * s["final_accuracy"],
                bytes_up=s["bytes_up_per_client"], bytes_down=s["bytes_down_per_client"], seconds=s["seconds"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/zowarmup")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    args = ap.parse_args(argv)
    jobs = [(m, s, seed, args.out) for seed in range(args.seeds) for s in SPLITS for m in METHODS]
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        rows = pool.map(one, jobs, chunksize=1)
    cell = {}
    for m in METHODS:
        for s in SPLITS:
            accs = [r["accuracy"] for r in rows if r["method"] == m and r["split"] == s]
            cell[m, s] = (statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0)
    names = {"high-res-only": "High-Res-Only", "zowarmup": "ZOWarmUp"}
    print("| method | " + " | ".join(f"{round(100 * s)}/{round(100 * (1 - s))}" for s in SPLITS) + " |")
    print("| --- |" + " --- |" * len(SPLITS))
    for m in METHODS:
        print(f"| {names[m]} | " + " | ".join(f"{cell[m, s][0]:.1f} ({cell[m, s][1]:.1f})" for s in SPLITS) + " |")
    print(json.dumps(dict(rows=rows, mean_std={f"{m} {s}": cell[m, s] for m, s in cell}), indent=1))


if __name__ == "__main__":
    main()
