"""ZO-SGD step time of zokernels.ZOSGD against MeZO's loop on an OPT-style model; prints JSON.

    python benchmarks/zo_step.py [--threads 2] [--steps 5] [--layers 12] [--table]

The model is OPTForCausalLM built from transformers' default OPTConfig (the 125M shape) with random
weights, batch 4, sequence 32, on CPU. Each variant runs in its own process so that its peak memory
(ru_maxrss) can be compared with a plain inference forward in that process:
  mezo           MeZO's zo_step + zo_update: torch.manual_seed + torch.normal per parameter, 4 passes
  inplace        ZOSGD(mode="inplace"): +eps, -2eps, restore+update fused (3 passes)
  inplace-fused  ZOSGD(mode="inplace", fuse_steps=True): 2 passes per step
  shadow         ZOSGD(mode="shadow"): perturbed copies per module, one weight write per step
Step time is the median over --steps steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

VARIANTS = ("mezo", "inplace", "inplace-fused", "shadow")
LR, EPS = 1e-6, 1e-3


def build(layers: int):
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    model = OPTForCausalLM(OPTConfig(num_hidden_layers=layers)).eval()
    ids = torch.randint(0, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(1))
    return model, ids


def mezo_step(model, closure, seed: int) -> None:
    """MeZO's trainer (zo_perturb_parameters x3, then zo_update regenerating z), as published."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def perturb(scale):
        torch.manual_seed(seed)
        for _, p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data + scale * z * EPS

    with torch.no_grad():
        perturb(1)
        l1 = closure()
        perturb(-2)
        l2 = closure()
        g = ((l1 - l2) / (2 * EPS)).item()
        perturb(1)
        torch.manual_seed(seed)
        for _, p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data - LR * g * z


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(variant: str, steps: int, layers: int) -> dict:
    import zokernels

    model, ids = build(layers)
    closure = lambda: model(input_ids=ids, labels=ids).loss  # noqa: E731
    with torch.no_grad():
        closure()
        closure()
    base_rss = maxrss_bytes()
    t0 = time.perf_counter()
    with torch.no_grad():
        closure()
    forward_s = time.perf_counter() - t0
    if variant == "mezo":
        step = lambda t: mezo_step(model, closure, t)  # noqa: E731
        passes = 4
    else:
        opt = zokernels.ZOSGD(model, lr=LR, eps=EPS, mode="shadow" if variant == "shadow" else "inplace",
                              fuse_steps=variant == "inplace-fused")
        step = lambda t: opt.step(closure)  # noqa: E731
    times = []
    for t in range(steps + 1):
        t0 = time.perf_counter()
        step(t)
        times.append(time.perf_counter() - t0)
    result = dict(variant=variant, step_s=statistics.median(times[1:]), forward_s=forward_s,
                  extra_rss_bytes=maxrss_bytes() - base_rss,
                  param_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
                  largest_module_bytes=max(sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
                                           for m in model.modules()))
    if variant != "mezo":
        result.update(weight_write_passes=opt.stats["weight_write_passes"],
                      peak_temp_bytes=opt.stats["peak_temp_bytes"])
    else:
        result.update(weight_write_passes=passes, peak_temp_bytes=None)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--layers", type=int, default=12, help="decoder layers (12 = the 125M shape)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.layers)))
        return
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown or args.steps < 1 or args.layers < 1:
        ap.error(f"bad --variants {sorted(unknown)}" if unknown else "--steps and --layers must be >= 1")
    results = []
    for v in variants:
        out = subprocess.run([sys.executable, __file__, "--child", v, "--steps", str(args.steps), "--layers",
                              str(args.layers), "--threads", str(args.threads)], capture_output=True, text=True,
                             check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    by = {r["variant"]: r for r in results}
    for r in results:
        if "mezo" in by:
            r["speedup_vs_mezo"] = by["mezo"]["step_s"] / r["step_s"]
        if "inplace" in by:
            r["time_vs_inplace"] = r["step_s"] / by["inplace"]["step_s"]
    report = dict(benchmark="zokernels.zo_step", model="OPTForCausalLM(OPTConfig(num_hidden_layers="
                  f"{args.layers}))", batch=4, seq=32, threads=args.threads, steps=args.steps,
                  params=by[variants[0]]["param_bytes"] // 4, results=results)
    print(json.dumps(report, indent=1))
    if args.table:
        print(f"\n{report['params'] / 1e6:.0f}M parameters, batch 4 x 32, {args.threads} threads, median of "
              f"{args.steps} steps; one forward: {results[0]['forward_s'] * 1e3:.0f} ms")
        print(f"{'variant':<15}{'step':>10}{'vs MeZO':>10}{'writes':>8}{'extra memory':>16}")
        for r in results:
            print(f"{r['variant']:<15}{r['step_s'] * 1e3:>8.0f}ms{r.get('speedup_vs_mezo', 0):>9.2f}x"
                  f"{r['weight_write_passes']:>8}{r['extra_rss_bytes'] / 2**20:>13.1f}MiB")


if __name__ == "__main__":
    main()
