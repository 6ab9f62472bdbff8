"""ZO-SGD step time of zokernels.ZOSGD against MeZO's loop on an OPT-style model; prints JSON.

    python benchmarks/zo_step.py [--threads 2] [--steps 5] [--layers 12] [--dist gaussian] [--spec-version 1] [--table]

The model is OPTForCausalLM built from transformers' default OPTConfig (the 125M shape) with random
weights, batch 4, sequence 32, on CPU. Step times are taken in one process, the variants' steps
interleaved round-robin (each variant on its own copy of the model), so that machine noise hits
them alike. Peak memory is measured per variant in a child process: the resident-set peak during three steps
above the peak during plain inference forwards of the same model before the optimizer existed (so
memory a variant keeps between steps, such as shadow mode's reusable buffer, counts), the smaller
of two runs. Variants:
  mezo           MeZO's zo_step + zo_update: torch.manual_seed + torch.normal per parameter, 4 passes
  inplace        ZOSGD(mode="inplace"): +eps, -2eps, restore+update fused (3 passes)
  inplace-fused  ZOSGD(mode="inplace", fuse_steps=True): 2 passes per step
  shadow         ZOSGD(mode="shadow"): perturbed copies per module, one weight write per step
Step time is the median over --steps steps after one warm-up step of each. A plain forward (no_grad) of
the same model is timed in the same round-robin, and vs_two_forwards = step / (2 x forward median): a ZO
step needs two forwards, so everything above 1 is the cost of the optimizer's passes over the weights
(beyond_two_forwards_s, the step's time less two forward medians). --dist and --spec-version pick the noise
of zokernels' variants (docs/noise.md; MeZO's loop draws torch.normal whatever they say). In place, every
step generates its z three times whether or not fuse_steps saves a write (+eps, -2 eps, and the restore
and update, which share one generation): on a CPU, where generating z costs more than moving the weights,
fusing saves little time, and the noise stream's cost is what is left above two forwards.
"load" is os.getloadavg() before and after the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
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


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss(fn) -> int:
    """Highest resident set size while fn runs, sampled every 0.2 ms by a thread (the tensors of
    interest live for milliseconds at least)."""
    peak, done = [rss_bytes()], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.0002)

    th = threading.Thread(target=sample)
    th.start()
    try:
        fn()
    finally:
        done.set()
        th.join()
    return max(peak[0], rss_bytes())


def make_step(variant: str, model, ids, noise: dict):
    import zokernels

    closure = lambda: model(input_ids=ids, labels=ids).loss  # noqa: E731
    if variant == "mezo":
        return (lambda t: mezo_step(model, closure, t)), None
    opt = zokernels.ZOSGD(model, lr=LR, eps=EPS, mode="shadow" if variant == "shadow" else "inplace",
                          fuse_steps=variant == "inplace-fused", **noise)
    return (lambda t: opt.step(closure)), opt


def memory_child(variant: str, layers: int, noise: dict) -> dict:
    model, ids = build(layers)

    def forward():
        with torch.no_grad():
            model(input_ids=ids, labels=ids)

    inference_peak = max(peak_rss(forward) for _ in range(3))
    step, opt = make_step(variant, model, ids, noise)
    step_peak = max(peak_rss(lambda: step(t)) for t in range(3))
    return dict(extra_rss_bytes=max(0, step_peak - inference_peak),
                peak_temp_bytes=opt.stats["peak_temp_bytes"] if opt else None)


def timings(variants, steps: int, layers: int, noise: dict) -> list[dict]:
    runs = {}
    for v in variants:
        model, ids = build(layers)
        step, opt = make_step(v, model, ids, noise)
        step(0)  # warm-up
        runs[v] = dict(step=step, opt=opt, model=model, times=[])
    first = runs[variants[0]]["model"]
    forwards = []
    for t in range(1, steps + 1):
        with torch.no_grad():
            t0 = time.perf_counter()
            first(input_ids=ids, labels=ids)
            forwards.append(time.perf_counter() - t0)
        for v in variants:
            t0 = time.perf_counter()
            runs[v]["step"](t)
            runs[v]["times"].append(time.perf_counter() - t0)
    forward_s = statistics.median(forwards)
    results = []
    for v in variants:
        r, model = runs[v], runs[v]["model"]
        step_s = statistics.median(r["times"])
        results.append(dict(variant=v, step_s=step_s, forward_s=forward_s, vs_two_forwards=step_s / (2 * forward_s),
                            beyond_two_forwards_s=step_s - 2 * forward_s,
                            weight_write_passes=r["opt"].stats["weight_write_passes"] if r["opt"] else 4,
                            param_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
                            largest_module_bytes=max(sum(p.numel() * p.element_size()
                                                         for p in m.parameters(recurse=False))
                                                     for m in model.modules())))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--layers", type=int, default=12, help="decoder layers (12 = the 125M shape)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--dist", default="gaussian", choices=("gaussian", "rademacher", "uniform"))
    ap.add_argument("--spec-version", type=int, default=1, choices=(1, 2), help="noise spec version (docs/noise.md)")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    noise = dict(dist=args.dist, spec_version=args.spec_version)
    if args.child:
        print(json.dumps(memory_child(args.child, args.layers, noise)))
        return
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown or args.steps < 1 or args.layers < 1:
        ap.error(f"bad --variants {sorted(unknown)}" if unknown else "--steps and --layers must be >= 1")
    load_before = os.getloadavg()
    results = timings(variants, args.steps, args.layers, noise)
    load = dict(before=list(load_before), after=list(os.getloadavg()), cpus=os.cpu_count())
    for r in results:
        runs = []
        for _ in range(2):  # RSS sampling only errs upward (allocator slack): keep the smaller reading
            out = subprocess.run([sys.executable, __file__, "--child", r["variant"], "--layers", str(args.layers),
                                  "--threads", str(args.threads), "--dist", args.dist,
                                  "--spec-version", str(args.spec_version)], capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r.update(min(runs, key=lambda m: m["extra_rss_bytes"]))
    by = {r["variant"]: r for r in results}
    for r in results:
        if "mezo" in by:
            r["speedup_vs_mezo"] = by["mezo"]["step_s"] / r["step_s"]
        if "inplace" in by:
            r["time_vs_inplace"] = r["step_s"] / by["inplace"]["step_s"]
    report = dict(benchmark="zokernels.zo_step", model="OPTForCausalLM(OPTConfig(num_hidden_layers="
                  f"{args.layers}))", batch=4, seq=32, threads=args.threads, steps=args.steps, **noise,
                  params=by[variants[0]]["param_bytes"] // 4, load=load, results=results)
    print(json.dumps(report, indent=1))
    if args.table:
        print(f"\n{report['params'] / 1e6:.0f}M parameters, batch 4 x 32, {args.threads} threads, median of "
              f"{args.steps} steps, {args.dist} noise (spec v{args.spec_version}); one forward: "
              f"{results[0]['forward_s'] * 1e3:.0f} ms; load average "
              f"{load['before'][0]:.1f} before, {load['after'][0]:.1f} after, {load['cpus']} CPUs")
        print(f"{'variant':<15}{'step':>10}{'vs MeZO':>10}{'vs 2 fwd':>10}{'beyond':>10}{'writes':>8}"
              f"{'extra memory':>16}")
        for r in results:
            print(f"{r['variant']:<15}{r['step_s'] * 1e3:>8.0f}ms{r.get('speedup_vs_mezo', 0):>9.2f}x"
                  f"{r['vs_two_forwards']:>9.2f}x{r['beyond_two_forwards_s'] * 1e3:>8.0f}ms"
                  f"{r['weight_write_passes']:>8}{r['extra_rss_bytes'] / 2**20:>13.1f}MiB")


if __name__ == "__main__":
    main()
