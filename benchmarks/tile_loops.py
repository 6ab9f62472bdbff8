"""Per-element cost of the C++ tile loops on one thread with the weights in L1: ns per element, prints JSON.

    python benchmarks/tile_loops.py [--so PATH] [--isa NAME] [--numel 8192] [--windows 300] [--table]

One `update_` call (K=1, round to nearest) names the same small tensor --aliases times at different offsets,
so it runs --aliases x --numel elements of fresh noise over memory that stays in L1, and the call's fixed
cost (argument lists, the GIL) is spread over them. Each figure is the best of --windows calls: the loop's
own cost on an idle core, what instruction-level changes move (benchmarks/kernels.py measures the whole
pass against memory). The floor is `torch._foreach_add_` over the same aliases on one thread.
--so loads another build of zokernels._C (one per process: Python keeps the first module of that name),
so two builds can be compared in alternating runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import torch

DTYPES = {"float32": (torch.float32, 0), "bfloat16": (torch.bfloat16, 1), "float16": (torch.float16, 2)}
DISTS = {"gaussian": 0, "rademacher": 1, "uniform": 2}


def load(so: str | None):
    if so is None:
        from zokernels import _cpu

        return _cpu.require()
    spec = importlib.util.spec_from_file_location("_C", so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def best_seconds(fn, windows: int) -> float:
    fn()  # warm-up: page faults, instruction cache
    best = float("inf")
    for _ in range(windows):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(c, numel: int, aliases: int, windows: int, versions: list[int]) -> list[dict]:
    rows = []
    for name, (dtype, code) in DTYPES.items():
        w = (torch.randn(numel) * 0.1).to(dtype)
        elements = numel * aliases
        floor = best_seconds(lambda: torch._foreach_add_([w] * aliases, 1e-7), windows)
        rows.append(dict(dtype=name, case="floor", ns_per_element=floor / elements * 1e9))
        for version in versions:
            for dist, dcode in DISTS.items():
                args = ([w.data_ptr()] * aliases, [numel] * aliases, [numel * i for i in range(aliases)],
                        [7] * aliases, [code] * aliases, [1], [1e-30], dcode, 0, 1)
                # 1e-30 * z leaves every weight as it is (no drift to inf over thousands of calls) but is not
                # 0, so the loop does all of its work
                seconds = best_seconds(lambda: c.update(*args, version=version), windows)
                rows.append(dict(dtype=name, case=f"{dist}_v{version}", ns_per_element=seconds / elements * 1e9))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--so", help="a zokernels._C build to load instead of the installed one")
    ap.add_argument("--isa", help="the variant to run (set_isa); default: the fastest this CPU supports")
    ap.add_argument("--numel", type=int, default=8192, help="elements of the tensor (8192: 32 KiB as float32)")
    ap.add_argument("--aliases", type=int, default=64, help="times one call names the tensor")
    ap.add_argument("--windows", type=int, default=300)
    ap.add_argument("--versions", default="1,2", help="noise spec versions measured")
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    if args.so is not None and not os.path.isfile(args.so):
        ap.error(f"--so {args.so}: no such file")
    if min(args.numel, args.aliases, args.windows) < 1:
        ap.error("--numel, --aliases and --windows must be at least 1")
    if not set(args.versions.split(",")) <= {"1", "2"}:
        ap.error(f"--versions {args.versions}: a comma-separated list of 1 and 2")
    torch.set_num_threads(1)
    c = load(args.so)
    if args.isa:
        c.set_isa(args.isa)
    load_before = os.getloadavg()
    rows = measure(c, args.numel, args.aliases, args.windows, [int(v) for v in args.versions.split(",")])
    report = dict(isa=c.isa(), numel=args.numel, aliases=args.aliases, windows=args.windows,
                  load=dict(before=list(load_before), after=list(os.getloadavg())), rows=rows)
    print(json.dumps(report))
    if args.table:
        cases = list(dict.fromkeys(r["case"] for r in rows))
        print(f"ns per element, {report['isa']}, one thread, {args.numel} elements x {args.aliases}, best of "
              f"{args.windows} (load {load_before[0]:.2f})")
        print(f"{'dtype':<10}" + "".join(f"{case:>15}" for case in cases))
        for dtype in DTYPES:
            got = {r["case"]: r["ns_per_element"] for r in rows if r["dtype"] == dtype}
            print(f"{dtype:<10}" + "".join(f"{got[case]:>15.3f}" for case in cases))


if __name__ == "__main__":
    main()
