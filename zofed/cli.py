"""The `zofed` command line.

    zofed run --strategy feedsign --clients 5 --steps 400 --task vader --model minilm --out runs/feedsign
    zofed orbit info runs/feedsign/orbit
    zofed orbit replay runs/feedsign/orbit --out weights.safetensors
    zofed run --config experiment.toml            # keys as the flags; flags given override the file
    zofed plot runs/feedsign runs/zo-fedsgd --out compare.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from . import strategies
from .data import CONVENTIONS
from .orbit import OrbitError
from .sim import SimConfig


# options of `zofed run` that are not SimConfig fields, with their defaults
RUN_OPTIONS = dict(task="vader", model="minilm", lora_rank=4, threads=None, out=None)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="zofed", description="Federated zeroth-order fine-tuning: simulate runs, "
                                 "inspect and replay orbits, plot runs.")
    sub = ap.add_subparsers(dest="command", required=True)
    d = dict(dataclasses.asdict(SimConfig(lr=0.0)), lr="the strategy's", dirichlet="iid", **RUN_OPTIONS)
    r = sub.add_parser("run", help="simulate a federated run and write metrics, orbit, summary and plots",
                       description="Flags override the --config file, which overrides the defaults. Run again "
                       "with the same options to resume an interrupted run.")

    def opt(name, help="", **kw):  # only given flags land in the namespace, so a config file can fill the rest
        r.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS,
                       help=f"{help} (default: {d[name]})".strip(), **kw)

    r.add_argument("--config", help="a TOML file of these options (keys as here, - or _)")
    opt("strategy", choices=sorted(strategies.STRATEGIES))
    opt("clients", type=int)
    opt("steps", type=int)
    opt("lr", "step size", type=float)
    opt("eps", "perturbation scale", type=float)
    opt("batch", "examples per client per step", type=int)
    opt("byzantine", "attacking clients (the last ones)", type=int)
    opt("byzantine_scale", "a random projection is uniform in [-scale, scale]", type=float)
    opt("dirichlet", "label-skew beta", type=float)
    opt("convention", "Dirichlet convention", choices=CONVENTIONS)
    opt("dp_epsilon", type=float)
    opt("aggregator", choices=strategies.ZOFedSGD.AGGREGATORS)
    opt("pool_size", type=int)
    opt("pool_sampling", choices=("uniform", "importance"))
    opt("participation", "fraction of online clients sampled per round", type=float)
    opt("dropout", "probability a client is offline at a step", type=float)
    opt("quorum", "replies that close a round", type=int)
    opt("deadline", "seconds after which a round closes", type=float)
    opt("dist", choices=("gaussian", "rademacher", "uniform"))
    opt("seed", type=int)
    opt("eval_every", type=int)
    opt("task")
    opt("model")
    opt("lora_rank", type=int)
    opt("threads", "torch CPU threads", type=int)
    opt("out", "output folder (required, here or in the config)")
    r.add_argument("--no-progress", action="store_true")
    pl = sub.add_parser("plot", help="overlay runs: held-out accuracy vs step and vs bytes up per client")
    pl.add_argument("runs", nargs="+", help="run folders (with metrics.jsonl and summary.json)")
    pl.add_argument("--out", required=True, help="the PNG file to write")
    o = sub.add_parser("orbit", help="inspect or replay an orbit file")
    osub = o.add_subparsers(dest="orbit_command", required=True)
    i = osub.add_parser("info", help="print an orbit's header as JSON")
    i.add_argument("orbit")
    p = osub.add_parser("replay", help="rebuild the fine-tuned weights, verify them, write safetensors")
    p.add_argument("orbit")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    return ap


def _load_config(path: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config {path}: not valid TOML: {exc}") from None
    known = set(SimConfig.__dataclass_fields__) | set(RUN_OPTIONS)
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ValueError(f"config {path}: unknown field {key!r}; the fields are {', '.join(sorted(known))}")
        out[name] = value
    return out


def _run_options(args) -> dict:
    """defaults <- the config file <- the flags given."""
    given = {k: v for k, v in vars(args).items() if k not in ("command", "config", "no_progress")}
    merged = dict(RUN_OPTIONS)
    merged.update(_load_config(args.config) if args.config else {})
    merged.update(given)
    for name, kind in (("task", str), ("model", str), ("lora_rank", int), ("threads", (int, type(None))),
                       ("out", str)):
        if isinstance(merged[name], bool) or not isinstance(merged[name], kind):
            what = "required: give --out or put out = \"DIR\" in the config" if name == "out" and \
                merged[name] is None else f"has the wrong type, got {merged[name]!r}"
            raise ValueError(f"config field {name!r} {what}")
    return merged


def _run(args) -> None:
    import torch

    from . import sim, tasks

    o = _run_options(args)
    cfg = SimConfig(**{k: v for k, v in o.items() if k in SimConfig.__dataclass_fields__})
    cfg.validate()
    if o["threads"]:
        torch.set_num_threads(o["threads"])
    if args.no_progress:
        from transformers.utils import logging

        logging.disable_progress_bar()
    task = tasks.build(o["task"], model=o["model"], lora_rank=o["lora_rank"])
    out = o["out"]
    s = sim.run(task, cfg, out=out, progress=not args.no_progress)
    print(f"{cfg.strategy}: held-out accuracy {100 * s['initial_accuracy']:.1f}% -> {100 * s['final_accuracy']:.1f}% "
          f"in {cfg.steps} steps ({s['seconds']:.0f} s); per client: {s['bytes_up_per_client']:.0f} B up, "
          f"{s['bytes_down_per_client']:.0f} B down, payload {s['payload_bits_up_per_client_per_step']:g} bit(s) up and "
          f"{s['payload_bits_down_per_client_per_step']:g} down per step; model_sha256 {s['model_sha256']}")
    print(f"wrote {out}/metrics.jsonl, orbit ({s['orbit_bytes']} B), summary.json, loss_accuracy.png, "
          "accuracy_bytes.png")


def _replay(args) -> None:
    import os

    from safetensors.torch import save_file

    from . import orbit
    from .client import weights_sha256

    task = orbit.replay(orbit.load(args.orbit))
    state = {k: v.detach().contiguous().clone() for k, v in task.model.state_dict().items()}
    tmp = f"{args.out}.tmp"
    save_file(state, tmp)
    os.replace(tmp, args.out)
    print(weights_sha256(task.model))


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            _run(args)
        elif args.command == "plot":
            from .plots import plot_runs

            print(plot_runs(args.runs, args.out))
        elif args.orbit_command == "info":
            from . import orbit

            print(json.dumps(orbit.info(orbit.load(args.orbit)), indent=1))
        else:
            _replay(args)
    except (OrbitError, ValueError, OSError, RuntimeError) as exc:
        print(f"zofed: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
