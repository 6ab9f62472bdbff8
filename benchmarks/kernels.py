"""Each ZO pass of zokernels against the memory floor and against MeZO's loop, side by side; prints JSON.

    python benchmarks/kernels.py [--threads 2] [--reps 5] [--scale 1.0] [--spec-version 1,2] [--table]

Parameters are BERT-base-like shapes (72 tensors of 768x768 and one 50272x768 embedding, about 81M
values). The memory floor is `torch._foreach_add_(params, 1e-7)` on the same tensors: one read and one
write of every weight, what any pass must cost. MeZO's loop is what its trainer runs per perturbation:
    torch.manual_seed(seed); for p: z = torch.normal(0, 1, p.shape, dtype=p.dtype); p.add_(z, alpha=scale)
All cases of one dtype run interleaved (case after case, --reps rounds, after one warm-up round), so
machine noise hits them alike; each figure is the median of its --reps times. "passes" gives every
case's time as a multiple of the floor measured in the same run (perturb_ per dist; update_ with K=16
seeds, K=2, and two K=1 calls: what fusing two updates into one pass saves); "results" gives MeZO time /
ours, where 16 MeZO loops cost 16 times the median loop. --spec-version picks the noise streams measured
(docs/noise.md), by default both in the same run against the same floor: version 2's cases are named
with a "_v2" suffix (perturb_ per dist, update_ K=16 gaussian and rademacher). "load" is os.getloadavg() before and after.
On a loaded machine (load average above the core count) read the 2-thread floor with care: torch runs one
OpenMP region per tensor, and each waits for a descheduled thread (we measured the 81M float32 floor at
560-600 ms under load 3 on 2 cores, 13.5 ms at load 2.6); --threads 1 avoids the barriers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

import zokernels
from zokernels import _cpu, spec

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


DISTS = ("gaussian", "rademacher", "uniform")


def interleaved(cases: dict, reps: int) -> dict:
    """Median seconds of each case, the cases run round-robin (one untimed warm-up round first)."""
    for fn in cases.values():
        fn()  # first-touch page faults, thread pools
    times = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure(dtype: torch.dtype, scale: float, reps: int, backend: str,
            versions: tuple[int, ...] = (1,)) -> tuple[list[dict], list[dict], int]:
    params = bert_like_params(dtype, scale)
    keys = list(range(len(params)))
    name = str(dtype).split(".")[1]
    seeds, coeffs = list(range(K_MULTI)), [1e-4] * K_MULTI
    cases = {"floor": lambda: torch._foreach_add_(params, 1e-7)}
    if 1 in versions:
        for dist in DISTS:
            cases[f"perturb_{dist}"] = lambda dist=dist: zokernels.perturb_(params, 1, 1e-3, keys=keys, dist=dist,
                                                                             backend=backend)
    cases["mezo_loop"] = lambda: mezo_pass(params, 1, 1e-3)
    if 1 in versions and dtype == torch.float32:
        cases[f"update_K{K_MULTI}"] = lambda: zokernels.update_(params, seeds, coeffs, keys=keys, backend=backend)
        cases["update_K2"] = lambda: zokernels.update_(params, [1, 2], [1e-4, 1e-4], keys=keys, backend=backend)
        cases["update_K1_twice"] = lambda: [zokernels.update_(params, [s], [1e-4], keys=keys, backend=backend)
                                            for s in (1, 2)]
    if 2 in versions:
        v2 = dict(keys=keys, backend=backend, spec_version=2)
        for dist in DISTS:
            cases[f"perturb_{dist}_v2"] = lambda dist=dist: zokernels.perturb_(params, 1, 1e-3, dist=dist, **v2)
        for dist in ("gaussian", "rademacher"):
            cases[f"update_K{K_MULTI}_{dist}_v2"] = lambda dist=dist: zokernels.update_(params, seeds, coeffs,
                                                                                        dist=dist, **v2)
    t = interleaved(cases, reps)
    passes = [dict(name=f"{case}_{name}", seconds=s, vs_floor=s / t["floor"]) for case, s in t.items()]
    results = []
    if 1 in versions:
        results.append(dict(name=f"perturb_pass_{name}", ours_s=t["perturb_gaussian"], mezo_s=t["mezo_loop"]))
        if dtype == torch.float32:
            results.append(dict(name=f"update_K{K_MULTI}_{name}", ours_s=t[f"update_K{K_MULTI}"],
                                mezo_s=K_MULTI * t["mezo_loop"]))
    if 2 in versions:
        results += [dict(name=f"perturb_pass_v2_{name}", ours_s=t["perturb_gaussian_v2"], mezo_s=t["mezo_loop"]),
                    dict(name=f"update_K{K_MULTI}_v2_{name}", ours_s=t[f"update_K{K_MULTI}_gaussian_v2"],
                         mezo_s=K_MULTI * t["mezo_loop"])]
    return results, passes, sum(p.numel() for p in params)


def run(threads: int, reps: int, scale: float, backend: str, versions: tuple[int, ...] = (1,)) -> dict:
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    results, passes = [], []
    for dtype in (torch.float32, torch.bfloat16):
        rows, floor_rows, numel = measure(dtype, scale, reps, backend, versions)
        results += rows
        passes += floor_rows
    for r in results:
        r["speedup"] = r["mezo_s"] / r["ours_s"]
    return dict(
        benchmark="zokernels.kernels",
        backend=backend,
        isa=_cpu.require().isa() if backend == "cpu" else None,
        threads=threads,
        reps=reps,
        spec_versions=list(versions),
        numel=numel,
        tensors=73,
        torch=torch.__version__,
        machine=platform.machine(),
        load=dict(before=list(load_before), after=list(os.getloadavg()), cpus=os.cpu_count()),
        passes=passes,
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
    load = report["load"]
    lines += ["", f"against the memory floor (load average {load['before'][0]:.1f} before, {load['after'][0]:.1f} "
              f"after, {load['cpus']} CPUs)", f"{'pass':<32}{'time':>12}{'x floor':>10}"]
    for r in report["passes"]:
        lines.append(f"{r['name']:<32}{r['seconds'] * 1e3:>10.1f}ms{r['vs_floor']:>9.2f}x")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the 81M parameters (for quick runs)")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--spec-version", default="1,2",
                    help="noise spec versions to measure, comma-separated (default 1,2: both against one floor)")
    ap.add_argument("--table", action="store_true", help="also print a human-readable table")
    args = ap.parse_args()
    if args.threads < 1 or args.reps < 1 or not 0 < args.scale <= 4:
        ap.error("--threads and --reps must be >= 1 and --scale in (0, 4]")
    try:
        versions = tuple(sorted({int(v) for v in args.spec_version.split(",")}))
    except ValueError:
        versions = ()
    if not versions or not set(versions) <= set(spec.SPEC_VERSIONS):
        ap.error(f"--spec-version must be versions from {spec.SPEC_VERSIONS}, comma-separated "
                 f"(got {args.spec_version!r})")
    report = run(args.threads, args.reps, args.scale, args.backend, versions)
    print(json.dumps(report, indent=1))
    if args.table:
        print()
        print(table(report))


if __name__ == "__main__":
    main()
