"""The Triton kernels' machine code per element and the H100 bandwidth it allows, modelled without a GPU; prints JSON.

    python benchmarks/triton_sass.py [--arch 90,80] [--only SUBSTRING] [--table]

Every variant the launchers compile (noise and update kernels x dist x dtype x rounding x noise spec version 1
and 2; gaussian-fast, outside the contract, in version 1 only) is compiled ahead of time, as its unmasked launch
(full tiles: all of a tensor but its partial first and last tile), for each target by Triton's own ptxas, and its
SASS read with the cuobjdump that Triton's wheel ships (zokernels/triton/_aot.py, shared with
tests/test_triton_aot.py). Per variant and target: SASS instructions per element on the main path (the update
with K = 1 seed), the same per pipe, registers per thread, spill instructions on the main path, and the
issue-rate model of ../shared/tools/aot_check.py: which limit binds (issue slot or a pipe) and the fraction of
H100 HBM bandwidth (3.35 TB/s) the kernel reaches at that rate (bytes per element: 4 for the noise, twice the
parameter's size for the update). A model, not a measurement: latency, occupancy and caches are left out. As
in aot_check, the model is applied to the sm_80 code too; only the sm_90 figure describes an H100.
--only keeps the variants whose label (e.g. update/v2/gaussian/bfloat16/nearest) contains SUBSTRING; --table
also prints a markdown table (sm_90: instructions per element and modelled bandwidth; sm_80: instructions).
About one second of compiling per variant and target.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # compiling needs Triton's real JIT, before triton is imported

from zokernels import spec  # noqa: E402
from zokernels.triton import _aot  # noqa: E402


def label(v: dict) -> str:
    parts = [v["kernel"], f"v{v['version']}", v["dist"]] + ([v["dtype"], v["rounding"]] if "dtype" in v else [])
    return "/".join(parts)


def run(archs: list[int], only: str) -> dict:
    import triton

    kernels, launches = _aot.record_launches(lambda *_: True)
    unmasked = []
    for name, args, kw in launches:
        constexprs = _aot.launch_constexprs(kernels[name], kw)
        variant = _aot.describe(name, constexprs)
        if not constexprs["MASKED"] and only in label(variant):
            unmasked.append((name, args, kw, constexprs, variant))
    report = {"triton": triton.__version__, "model": {"sm_cycles_per_s": _aot.SM_CYCLES, "hbm_bytes_per_s": _aot.HBM,
                                                      "thread_instructions_per_clock_per_sm": _aot.RATE},
              "skipped": {}, "variants": []}
    for arch in archs:
        reason = _aot.target_unusable(arch)
        if reason:
            report["skipped"][f"sm_{arch}"] = reason
            continue
        for name, args, kw, constexprs, variant in unmasked:
            cubin = _aot.compile_launch(kernels[name], args, kw, arch).asm["cubin"]
            found = _aot.figures(cubin, kw, constexprs)
            if found is None:
                sys.exit("benchmarks/triton_sass.py needs the cuobjdump that Triton's wheel ships; none found")
            report["variants"].append({**variant, "portable": variant["dist"] in spec.PORTABLE_DISTS,
                                       "arch": f"sm_{arch}", **found})
    return report


def table(report: dict) -> str:
    """One row per variant (spec versions side by side): sm_90 instructions per element and modelled fraction
    of H100 bandwidth, sm_80 instructions per element."""
    cells: dict[tuple, dict] = {}
    for v in report["variants"]:
        key = (v["kernel"], v["dist"], v.get("dtype", ""), v.get("rounding", ""))
        text = f"{v['instructions_per_element']:.1f}"
        if v["arch"] == "sm_90":
            text += f" ({100 * v['hbm_fraction']:.0f}%)"
        cells.setdefault(key, {})[(v["version"], v["arch"])] = text
    columns = [(version, arch) for arch in ("sm_90", "sm_80") for version in spec.SPEC_VERSIONS]
    lines = ["| kernel | dist | dtype | rounding | " + " | ".join(f"v{ver} {arch}" for ver, arch in columns) + " |",
             "|" + " --- |" * (4 + len(columns))]
    for key, found in cells.items():
        lines.append("| " + " | ".join(key) + " | " + " | ".join(found.get(c, "-") for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="90,80", help="CUDA capabilities, comma-separated (default 90,80)")
    ap.add_argument("--only", default="", help="only the variants whose label contains this")
    ap.add_argument("--table", action="store_true", help="also print a markdown table")
    args = ap.parse_args()
    try:
        archs = [int(a) for a in args.arch.split(",")]
    except ValueError:
        archs = []
    if not archs or any(a < 80 for a in archs):
        ap.error(f"--arch must be CUDA capabilities of at least 80, comma-separated (got {args.arch!r})")
    report = run(archs, args.only)
    if not report["variants"] and not report["skipped"]:
        ap.error(f"--only {args.only!r} matches no variant (labels look like update/v2/gaussian/bfloat16/nearest)")
    print(json.dumps(report, indent=1))
    if args.table:
        print()
        print(table(report))


if __name__ == "__main__":
    main()
