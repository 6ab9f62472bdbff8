"""GPU benchmark: a perturb pass against the device's peak bandwidth, the ZO step against MeZO's loop on an
OPT model, and the Triton noise against the CPU golden vectors; prints JSON.

    python benchmarks/gpu.py [--config zokernels/configs/opt-1.3b.json] [--layers N] [--reps 20] [--table]
    python benchmarks/gpu.py --device cpu --small          # the same report at toy sizes, in seconds

bandwidth  For each dtype (float32, bfloat16, float16) the tensors are the OPT model's parameter shapes, random
           values. A perturb_ pass reads and writes every element once, so its bandwidth is 2 x bytes / time.
           It is reported as a fraction of the peak measured in the same run on the same tensors (the faster of
           torch._foreach_copy_ into twins and torch._foreach_add_: plain read+write passes) and of the nominal
           HBM peak of the GPU (table NOMINAL_PEAK, from the vendors' data sheets; null for another GPU).
           Every dist of every noise spec version is timed (version 2 is the cheaper opt-in stream), and
           gaussian-fast (Triton's approximate, non-portable Gaussian) on CUDA.
           All cases of one dtype run round-robin (benchmarks/kernels.py's `interleaved`, median of --reps),
           each followed by a device synchronize.
zo_step    ZO-SGD step time of MeZO's loop (benchmarks/zo_step.py's transcription: torch.manual_seed and one
           torch.normal per parameter, 4 passes) and of ZOSGD in-place, in-place fused and shadow, each on its
           own copy of the model (random weights from --config; bfloat16 on CUDA, float32 on CPU), the steps
           interleaved, median of --reps; a plain forward is timed in the same round-robin.
golden     Every case of tests/golden/noise_v{1,2}.json (noise and update, every dist, dtype, rounding) computed
           by the Triton backend on the device (on CPU: Triton's interpreter) and compared bit for bit.
           A mismatch makes the script exit with status 1 after printing the report.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import torch

if not torch.cuda.is_available():  # Triton runs on CPU tensors only in its interpreter; set before it is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the golden vectors' generator: initial weights and update arguments

import zokernels  # noqa: E402
from golden import generate  # noqa: E402
from kernels import interleaved  # noqa: E402
from zo_step import VARIANTS, make_step  # noqa: E402
from zokernels import spec  # noqa: E402

# Nominal HBM bandwidth in bytes/s by a substring of torch.cuda.get_device_name(), first match wins.
NOMINAL_PEAK = (
    ("H200", 4.8e12),            # H200 SXM and NVL: 4.8 TB/s
    ("H100 80GB HBM3", 3.35e12),  # H100 SXM (the PCIe and NVL parts differ and are not listed)
    ("A100-SXM4-80GB", 2.0e12),  # A100 80GB: 2.0 TB/s (SXM4 2.04, PCIe 1.94)
    ("A100 80GB", 2.0e12),
)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SMALL_CONFIG = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                    word_embed_proj_dim=64, max_position_embeddings=64)


def nominal_peak(device_name: str) -> float | None:
    return next((bw for pattern, bw in NOMINAL_PEAK if pattern in device_name), None)


def opt_config(path: str | None, layers: int | None):
    from transformers import OPTConfig

    cfg = OPTConfig(**SMALL_CONFIG) if path is None else OPTConfig.from_json_file(path)
    if layers is not None:
        cfg.num_hidden_layers = layers
    return cfg


def build(cfg, device: torch.device, dtype: torch.dtype):
    """OPTForCausalLM with random weights, initialized on the device (fast for billions of parameters)."""
    from transformers import OPTForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        return OPTForCausalLM(cfg).to(dtype).eval()


def synced(fn, device: torch.device):
    """fn followed by a device synchronize, so that a host timer measures the kernels and not their launch."""
    if device.type != "cuda":
        return fn
    return lambda *args: (fn(*args), torch.cuda.synchronize(device))


def bandwidth(cfg, device: torch.device, reps: int, peak: float | None) -> list[dict]:
    from transformers import OPTForCausalLM

    with torch.device("meta"):
        shapes = [p.shape for p in OPTForCausalLM(cfg).parameters()]  # the tied embedding once
    streams = [(dist, v) for v in spec.SPEC_VERSIONS for dist in spec.PORTABLE_DISTS]
    if device.type == "cuda":
        streams.append(("gaussian-fast", None))  # not a spec stream: no version
    rows = []
    for dtype in DTYPES:
        params = [torch.randn(s, device=device).to(dtype) for s in shapes]
        twins = [torch.empty_like(p) for p in params]
        keys = list(range(len(params)))
        moved = 2 * sum(p.numel() * p.element_size() for p in params)  # one read and one write of each element
        cases = {("copy", None): lambda: torch._foreach_copy_(twins, params),
                 ("foreach_add", None): lambda: torch._foreach_add_(params, 1e-7)}
        for dist, v in streams:
            cases[dist, v] = lambda dist=dist, v=v: zokernels.perturb_(params, 1, 1e-3, keys=keys, dist=dist,
                                                                       **({"spec_version": v} if v else {}))
        seconds = interleaved({name: synced(fn, device) for name, fn in cases.items()}, reps)
        measured = moved / min(seconds["copy", None], seconds["foreach_add", None])
        for (name, v), s in seconds.items():
            bps = moved / s
            rows.append(dict(case=name, spec_version=v, kind="floor" if name in ("copy", "foreach_add") else
                             "perturb_pass", dtype=str(dtype).split(".")[1], seconds=s, bytes=moved,
                             bytes_per_s=bps, vs_measured_peak=bps / measured,
                             vs_nominal_peak=bps / peak if peak else None))
        del params, twins, cases  # the cases' closures hold the tensors: free them before the next dtype
    return rows


def zo_steps(cfg, device: torch.device, reps: int, batch: int, seq: int) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(1)).to(device)
    runs = {}
    for v in VARIANTS:
        model = build(cfg, device, dtype)
        step, opt = make_step(v, model, ids, {})  # the default noise stream
        step = synced(step, device)
        step(0)  # warm-up: Triton compiles, the allocator grows
        runs[v] = dict(step=step, opt=opt, model=model, times=[])
    first = runs[VARIANTS[0]]["model"]

    @torch.no_grad()
    def forward():
        first(input_ids=ids, labels=ids)

    forward = synced(forward, device)
    forwards = []
    for t in range(1, reps + 1):
        t0 = time.perf_counter()
        forward()
        forwards.append(time.perf_counter() - t0)
        for r in runs.values():
            t0 = time.perf_counter()
            r["step"](t)
            r["times"].append(time.perf_counter() - t0)
    forward_s = statistics.median(forwards)
    mezo_s = statistics.median(runs["mezo"]["times"])
    results = []
    for v, r in runs.items():
        step_s = statistics.median(r["times"])
        results.append(dict(variant=v, step_s=step_s, speedup_vs_mezo=mezo_s / step_s,
                            vs_two_forwards=step_s / (2 * forward_s),
                            weight_write_passes=r["opt"].stats["weight_write_passes"] if r["opt"] else 4,
                            peak_temp_bytes=r["opt"].stats["peak_temp_bytes"] if r["opt"] else None))
    return dict(dtype=str(dtype).split(".")[1], batch=batch, seq=seq, forward_s=forward_s,
                params=sum(p.numel() for p in first.parameters()), results=results)


def golden(folder: pathlib.Path, device: torch.device, backend: str) -> dict:
    """Every case of every spec version's golden file recomputed by `backend` on `device`, compared bit for bit
    (as the files write them: hex strings)."""
    mismatches, count = [], 0
    for version in spec.SPEC_VERSIONS:
        cases = json.loads((folder / f"noise_v{version}.json").read_text())
        for c in cases["noise"]:
            n = len(c["bits"].split())
            z = zokernels.noise(n, c["seed"], key=c["key"], offset=c["offset"], dist=c["dist"], device=device,
                                backend=backend, spec_version=version)
            count += 1
            if generate.bits(z.cpu()) != c["bits"]:
                mismatches.append(f"v{version} noise {c['dist']} seed={c['seed']} key={c['key']} offset={c['offset']}")
        for c in cases["update"]:
            w = generate.initial_weights().to(getattr(torch, c["dtype"])).to(device)
            zokernels.update_(w, generate.UPDATE_SEEDS, generate.UPDATE_COEFFS, keys=generate.UPDATE_KEY,
                              offsets=generate.UPDATE_OFFSET, dist=c["dist"], rounding=c["rounding"],
                              backend=backend, spec_version=version)
            count += 1
            if generate.bits(w.cpu()) != c["bits"]:
                mismatches.append(f"v{version} update {c['dist']} {c['dtype']} {c['rounding']}")
    return dict(folder=str(folder), spec_versions=list(spec.SPEC_VERSIONS), backend=backend, cases=count,
                mismatches=mismatches, all_equal=not mismatches)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def table(report: dict) -> str:
    peak = report["nominal_peak_bytes_per_s"]
    lines = [f"{report['device_name']}, nominal peak {peak / 1e12:.2f} TB/s" if peak else report["device_name"],
             f"{'pass':<18}{'dtype':<10}{'time':>10}{'GB/s':>10}{'x measured':>12}{'x nominal':>11}"]
    for r in report["bandwidth"]:
        nominal = f"{r['vs_nominal_peak']:.0%}" if r["vs_nominal_peak"] is not None else "-"
        name = r["case"] + (f" v{r['spec_version']}" if r["spec_version"] else "")
        lines.append(f"{name:<18}{r['dtype']:<10}{r['seconds'] * 1e3:>8.3f}ms{r['bytes_per_s'] / 1e9:>10.0f}"
                     f"{r['vs_measured_peak']:>12.0%}{nominal:>11}")
    z = report["zo_step"]
    lines += ["", f"{report['model']}: {z['params'] / 1e6:.1f}M parameters, {z['dtype']}, batch {z['batch']} x "
              f"{z['seq']}; one forward {z['forward_s'] * 1e3:.1f} ms",
              f"{'variant':<15}{'step':>11}{'vs MeZO':>10}{'vs 2 fwd':>10}{'writes':>8}"]
    for r in z["results"]:
        lines.append(f"{r['variant']:<15}{r['step_s'] * 1e3:>9.1f}ms{r['speedup_vs_mezo']:>9.2f}x"
                     f"{r['vs_two_forwards']:>9.2f}x{r['weight_write_passes']:>8}")
    g = report["golden"]
    lines += ["", f"golden vectors (spec versions {g['spec_versions']}, backend {g['backend']}): "
              f"{g['cases'] - len(g['mismatches'])}/{g['cases']} bit-identical"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--config", default=str(ROOT / "zokernels" / "configs" / "opt-1.3b.json"),
                    help="a local transformers OPT config (random weights)")
    ap.add_argument("--layers", type=int, help="override the config's decoder layers (a smaller model)")
    ap.add_argument("--small", action="store_true", help="a toy OPT config, batch 2 x 16 (a quick CPU run)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--golden", default=str(ROOT / "tests" / "golden"),
                    help="the folder of the golden files noise_v{version}.json")
    ap.add_argument("--table", action="store_true", help="also print a human-readable table")
    args = ap.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        ap.error(f"--device: {exc}")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA GPU is visible; --device cpu --small runs the same report on CPU")
    if device.type not in ("cuda", "cpu"):
        ap.error(f"--device must be cuda or cpu, got {args.device}")
    if args.reps < 1 or args.batch < 1 or args.seq < 1 or (args.layers is not None and args.layers < 1):
        ap.error("--reps, --batch, --seq and --layers must be >= 1")
    if not args.small and not pathlib.Path(args.config).is_file():
        ap.error(f"--config: no such file {args.config}")
    missing = [f"noise_v{v}.json" for v in spec.SPEC_VERSIONS
               if not (pathlib.Path(args.golden) / f"noise_v{v}.json").is_file()]
    if missing:
        ap.error(f"--golden: {args.golden} lacks {', '.join(missing)}")
    batch, seq = (2, 16) if args.small else (args.batch, args.seq)
    cfg = opt_config(None if args.small else args.config, args.layers)
    peak = nominal_peak(device_name(device)) if device.type == "cuda" else None
    # Triton is what the golden check is for; on CPU it needs the interpreter (set above when there is no GPU)
    backend = "triton" if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1" else "cpu"
    report = dict(benchmark="zokernels.gpu", device=str(device), device_name=device_name(device),
                  nominal_peak_bytes_per_s=peak, torch=torch.__version__, reps=args.reps,
                  model="toy OPT (--small)" if args.small else f"{pathlib.Path(args.config).name}"
                  + (f", {args.layers} layers" if args.layers else ""),
                  bandwidth=bandwidth(cfg, device, args.reps, peak),
                  zo_step=zo_steps(cfg, device, args.reps, batch, seq),
                  golden=golden(pathlib.Path(args.golden), device, backend))
    print(json.dumps(report, indent=1))
    if args.table:
        print()
        print(table(report))
    if not report["golden"]["all_equal"]:
        print(f"golden mismatch: {report['golden']['mismatches']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
