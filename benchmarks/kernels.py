"""One ZO perturbation pass of zokernels against MeZO's loop, measured side by side; prints JSON.

    python benchmarks/kernels.py [--threads 2] [--reps 5] [--scale 1.0] [--table]

Parameters are BERT-base-like shapes (72 tensors of 768x768 and one 50272x768 embedding, about 81M
values). MeZO's loop is what its trainer runs per perturbation:
    torch.manual_seed(seed); for p: z = torch.normal(0, 1, p.shape, dtype=p.dtype); p.add_(z, alpha=scale)
Each figure is the median of --reps timed runs after one warm-up; the ratio is MeZO time / ours.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import zokernels

K_MULTI = 16


def bert_like_params(dtype: torch.dtype, scale: float) -> list[torch.Tensor]:
    side = max(8, int(768 * scale**0.5))
    vocab = max(8, int(50272 * scale**0.5))
    return [torch.randn(side, side).to(dtype) for _ in range(72)] + [torch.randn(vocab, side).to(dtype)]


def mezo_pass(params, seed: int, scale: float) -> None:
    torch.manual_seed(seed)
    for p in params:
        z = torch.normal(mean=0, std=1, size=p.shape, dtype=p.dtype)
        p.add_(z, alpha=scale)


def timed(fn, reps: int) -> float:
    fn()  # warm-up: first-touch page faults, thread pools
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(dtype: torch.dtype, scale: float, reps: int, backend: str) -> tuple[list[dict], int]:
    params = bert_like_params(dtype, scale)
    keys = list(range(len(params)))
    ours = timed(lambda: zokernels.perturb_(params, 1, 1e-3, keys=keys, backend=backend), reps)
    mezo = timed(lambda: mezo_pass(params, 1, 1e-3), reps)
    results = [dict(name=f"perturb_pass_{str(dtype).split('.')[1]}", ours_s=ours, mezo_s=mezo)]
    if dtype == torch.float32:
        seeds, coeffs = list(range(K_MULTI)), [1e-4] * K_MULTI
        ours = timed(lambda: zokernels.update_(params, seeds, coeffs, keys=keys, backend=backend), reps)
        mezo = timed(lambda: [mezo_pass(params, s, c) for s, c in zip(seeds, coeffs)], max(1, reps // 2))
        results.append(dict(name=f"update_K{K_MULTI}_float32", ours_s=ours, mezo_s=mezo))
    return results, sum(p.numel() for p in params)


def run(threads: int, reps: int, scale: float, backend: str) -> dict:
    torch.set_num_threads(threads)
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        rows, numel = measure(dtype, scale, reps, backend)
        results += rows
    for r in results:
        r["speedup"] = r["mezo_s"] / r["ours_s"]
    return dict(
        benchmark="zokernels.kernels",
        backend=backend,
        threads=threads,
        reps=reps,
        numel=numel,
        tensors=73,
        torch=torch.__version__,
        machine=platform.machine(),
        results=results,
    )


def table(report: dict) -> str:
    lines = [
        f"{report['numel'] / 1e6:.1f}M parameters in {report['tensors']} tensors, backend={report['backend']}, "
        f"{report['threads']} threads, median of {report['reps']}",
        f"{'case':<24}{'zokernels':>12}{'MeZO loop':>12}{'speedup':>10}",
    ]
    for r in report["results"]:
        lines.append(f"{r['name']:<24}{r['ours_s'] * 1e3:>10.1f}ms{r['mezo_s'] * 1e3:>10.1f}ms{r['speedup']:>9.1f}x")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the 81M parameters (for quick runs)")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--table", action="store_true", help="also print a human-readable table")
    args = ap.parse_args()
    if args.threads < 1 or args.reps < 1 or not 0 < args.scale <= 4:
        ap.error("--threads and --reps must be >= 1 and --scale in (0, 4]")
    report = run(args.threads, args.reps, args.scale, args.backend)
    print(json.dumps(report, indent=1))
    if args.table:
        print()
        print(table(report))


if __name__ == "__main__":
    main()
