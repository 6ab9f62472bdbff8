"""Memory planner: what ZO fine-tuning and first-order AdamW need per GPU for a transformers model.

    python -m zokernels.plan CONFIG --gpus N --gpu-memory 80GiB --dtype bf16 --batch B --seq S [--json]

CONFIG is a local transformers config.json (or the name of one shipped in zokernels/configs: opt-1.3b,
opt-13b, opt-30b, opt-66b). The model is built on the meta device (no weights, no hub), so the weight
bytes are exact; temporaries and activations are estimates, stated below.

Layout: naive model parallel (what MeZO runs for OPT-13B..66B with accelerate's device_map): the
repeated blocks (the model's largest nn.ModuleList) are split over the GPUs in contiguous, byte-balanced
runs; the other parameters (embeddings, final norm, a tied LM head) sit on the first GPU; the logits are
computed on the last.

Per GPU, ZO (no gradients, nothing kept for a backward pass):
  weights   the parameters on it, in --dtype.
  ZO temporaries, by optimizer mode: "inplace" none (z is regenerated inside the fused pass); "shadow" the
            largest module's weights on that GPU (the perturbed copy); "momentum" +4 bytes per parameter
            (one float32 buffer), "zoadam" +8 (two); and for reference MeZO's loop, which materializes z
            as large as the largest tensor.
  activations  one forward's peak: the largest block's live tensors, B*S*(4h + f) + 2*B*a*S*S elements
            (q, k, v, output, the FFN's inner activation, eager attention scores and probabilities), and on
            the last GPU the logits, B*S*V elements plus their float32 copy for the loss.
First-order AdamW with mixed precision: 16 bytes per parameter (16-bit weights and gradients, float32
master weights, m and v) plus the activations kept for the backward pass, s*b*h*(34 + 5*a*s/h) bytes per
block with 16-bit activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models", eq. 1, no recomputation), and the logits with their float32 copy and gradient.
  naive model parallel  each GPU its blocks' share.
  ZeRO-3 / FSDP         data parallel over the GPUs (each GPU runs batch B): 16 bytes per parameter / N,
                        every block's activations, and two gathered blocks (the one running and the prefetch).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
from dataclasses import asdict, dataclass

import torch
from torch import nn

CONFIGS = pathlib.Path(__file__).parent / "configs"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MODES = ("inplace", "shadow", "momentum", "zoadam", "mezo-loop")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class PlanError(ValueError):
    """A config, size or option the planner cannot use; the CLI prints it as one line."""


def parse_bytes(text: str) -> int:
    """'80GiB' -> 85899345920, '80GB' -> 80000000000, '1e9' -> 1000000000."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise PlanError(f"cannot read {text!r} as a size: write e.g. 80GiB, 80GB or 40000MiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def load_config(config: str):
    """A transformers config from a local JSON file or a shipped name; never the hub."""
    from transformers import AutoConfig

    path = pathlib.Path(config)
    if not path.is_file():
        shipped = CONFIGS / f"{config}.json"
        if not shipped.is_file():
            names = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.json")))
            raise PlanError(f"no config file {config!r}, and no shipped config of that name (shipped: {names})")
        path = shipped
    try:
        fields = json.loads(path.read_text())
        model_type = fields.pop("model_type")
        return AutoConfig.for_model(model_type, **fields)
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise PlanError(f"{path} is not a usable transformers config: {exc!r}") from None


def build_on_meta(cfg) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


def _blocks(model: nn.Module) -> nn.ModuleList:
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise PlanError("the model has no nn.ModuleList of repeated blocks to spread over GPUs")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def _split(sizes: list[int], parts: int) -> list[list[int]]:
    """Contiguous runs of indices, one per part, each close to sum(sizes) / parts (the first part always
    holds index 0)."""
    runs, start, total, done = [], 0, sum(sizes), 0
    for k in range(parts):
        target = total * (k + 1) / parts
        end = start
        while end < len(sizes) and (k == parts - 1 or end == 0 or done + sizes[end] / 2 <= target):
            done += sizes[end]
            end += 1
        runs.append(list(range(start, end)))
        start = end
    return runs


@dataclass
class Device:
    device: str
    param_count: int
    weights_bytes: int
    zo_temp_bytes: dict
    activation_bytes: int
    total_bytes: int  # weights + the chosen mode's temporaries + activations
    adamw_naive_bytes: int
    adamw_fsdp_bytes: int


def _dims(cfg) -> tuple[int, int, int, int]:
    h = cfg.hidden_size
    f = getattr(cfg, "ffn_dim", None) or getattr(cfg, "intermediate_size", None) or 4 * h
    return h, f, cfg.num_attention_heads, cfg.vocab_size


def plan(cfg, model: nn.Module, *, gpus: int, gpu_memory: int, dtype: str, batch: int, seq: int,
         mode: str = "inplace") -> dict:
    if gpus < 1 or batch < 1 or seq < 1:
        raise PlanError("--gpus, --batch and --seq must be positive")
    if mode not in MODES:
        raise PlanError(f"mode must be one of {MODES}, got {mode!r}")
    width = torch.empty((), dtype=DTYPES[dtype]).element_size()
    blocks = _blocks(model)
    in_block = {id(p) for p in blocks.parameters()}
    seen, rest = set(), []  # parameters outside the blocks, tied ones once
    for p in model.parameters():
        if id(p) not in in_block and id(p) not in seen:
            seen.add(id(p))
            rest.append(p)
    block_counts = [sum(p.numel() for p in b.parameters()) for b in blocks]
    # balance with the other parameters counted on the first GPU (item 0 of the split, then dropped)
    runs = [[i - 1 for i in run if i] for run in _split([sum(p.numel() for p in rest)] + block_counts, gpus)]
    h, f, a, vocab = _dims(cfg)
    b, s = batch, seq
    block_act_fwd = (b * s * (4 * h + f) + 2 * b * a * s * s) * width
    block_act_bwd = s * b * h * (34 + 5 * a * s / h) * width / 2  # eq. 1 counts bytes of 16-bit activations
    logits_fwd = b * s * vocab * (width + 4)
    logits_bwd = b * s * vocab * (width + 4 + 4)
    total_params = sum(block_counts) + sum(p.numel() for p in rest)
    device_of = {id(m): k for k, run in enumerate(runs) for i in run for m in blocks[i].modules()}
    largest_module = [0] * gpus  # shadow mode's copy: one module's own parameters at a time
    for m in model.modules():
        k = device_of.get(id(m), 0)
        largest_module[k] = max(largest_module[k], sum(p.numel() for p in m.parameters(recurse=False)))
    devices = []
    for k, run in enumerate(runs):
        params = [p for i in run for p in blocks[i].parameters()] + (rest if k == 0 else [])
        count = sum(p.numel() for p in params)
        temps = {"inplace": 0, "shadow": largest_module[k] * width, "momentum": 4 * count, "zoadam": 8 * count,
                 "mezo-loop": max((p.numel() for p in params), default=0) * width}
        last = k == gpus - 1
        act = max(block_act_fwd if run else 0, logits_fwd if last else 0)
        weights = count * width
        devices.append(Device(
            device=f"cuda:{k}", param_count=count, weights_bytes=weights, zo_temp_bytes=temps, activation_bytes=act,
            total_bytes=weights + temps[mode] + act,
            adamw_naive_bytes=int(16 * count + len(run) * block_act_bwd + (logits_bwd if last else 0)),
            adamw_fsdp_bytes=int(16 * total_params / gpus + len(blocks) * block_act_bwd + logits_bwd
                                 + 2 * max(block_counts) * width)))
    zo_fits = {m: all(d.weights_bytes + d.zo_temp_bytes[m] + d.activation_bytes <= gpu_memory for d in devices)
               for m in MODES}
    return dict(
        model_type=cfg.model_type, total_param_count=total_params, dtype=dtype, gpus=gpus, gpu_memory_bytes=gpu_memory,
        batch=batch, seq=seq, mode=mode, weights_bytes=total_params * width,
        devices=[asdict(d) for d in devices],
        fits=dict(zo=zo_fits[mode], zo_modes=zo_fits,
                  adamw_naive=all(d.adamw_naive_bytes <= gpu_memory for d in devices),
                  adamw_fsdp=all(d.adamw_fsdp_bytes <= gpu_memory for d in devices)))


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def table(result: dict) -> str:
    r = result
    lines = [f"{r['model_type']}: {r['total_param_count'] / 1e9:.2f}B parameters, {_gb(r['weights_bytes'])} of "
             f"{r['dtype']} weights; batch {r['batch']} x {r['seq']} tokens; {r['gpus']} GPU(s) of "
             f"{_gb(r['gpu_memory_bytes'])}",
             "",
             "| device | weights | ZO inplace | ZO shadow | ZO momentum | ZOAdam | MeZO loop | AdamW naive MP | AdamW FSDP |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for d in r["devices"]:
        zo = [d["weights_bytes"] + d["zo_temp_bytes"][m] + d["activation_bytes"] for m in MODES]
        lines.append("| " + " | ".join([d["device"], _gb(d["weights_bytes"]), *map(_gb, zo),
                                        _gb(d["adamw_naive_bytes"]), _gb(d["adamw_fsdp_bytes"])]) + " |")
    fits = r["fits"]
    yes = [m for m in MODES if fits["zo_modes"][m]]
    lines += ["", f"fits: ZO {', '.join(yes) if yes else 'in no mode'}; "
                  f"AdamW naive model parallel: {'yes' if fits['adamw_naive'] else 'no'}; "
                  f"AdamW ZeRO-3/FSDP: {'yes' if fits['adamw_fsdp'] else 'no'}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zokernels.plan", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="a local transformers config.json, or a shipped name (opt-1.3b, opt-13b, ...)")
    ap.add_argument("--gpus", type=int, default=1, help="GPUs to spread the model over (default 1)")
    ap.add_argument("--gpu-memory", default="80GiB", help="memory of one GPU, e.g. 80GiB, 40GB (default 80GiB)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="weight dtype (default bf16)")
    ap.add_argument("--batch", type=int, default=16, help="sequences per step (default 16)")
    ap.add_argument("--seq", type=int, default=512, help="tokens per sequence (default 512)")
    ap.add_argument("--mode", choices=MODES, default="inplace", help="the ZO mode of total_bytes (default inplace)")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
        result = plan(cfg, build_on_meta(cfg), gpus=args.gpus, gpu_memory=parse_bytes(args.gpu_memory),
                      dtype=args.dtype, batch=args.batch, seq=args.seq, mode=args.mode)
    except PlanError as exc:
        print(f"zokernels.plan: {exc}", file=sys.stderr)
        return 2
    try:
        print(json.dumps(result, indent=1) if args.json else table(result), flush=True)
    except BrokenPipeError:  # `... | head` closed the pipe: not an error of ours, and no traceback
        sys.stdout = None  # so the interpreter's final flush does not raise again
    return 0


if __name__ == "__main__":
    sys.exit(main())
