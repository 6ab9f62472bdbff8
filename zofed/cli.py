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
from .configs import FedMeZOConfig, SimConfig, ZOWarmUpConfig
from .orbit import OrbitError

# the round-based algorithms (zofed.rounds drives them), beside the step strategies (zofed.sim)
ROUND_CONFIGS = {"fedmezo": FedMeZOConfig, "zowarmup": ZOWarmUpConfig}
STRATEGY_NAMES = sorted(strategies.STRATEGIES) + sorted(ROUND_CONFIGS)
# options of `zofed run` that are not config fields, with their defaults (None: the task's or strategy's own)
RUN_OPTIONS = dict(task=None, model=None, lora_rank=None, threads=None, out=None)
HELP = dict(
    strategy="", steps="steps of a step strategy", rounds="FedMeZO rounds", lr="step size", eps="perturbation scale",
    batch="examples per client per step", byzantine="attacking clients (the last ones)",
    byzantine_scale="a random projection is uniform in [-scale, scale]", dirichlet="label-skew beta",
    participation="fraction of the eligible clients sampled per round", dropout="probability a client is offline",
    quorum="replies that close a round", deadline="seconds after which a round closes",
    local_steps="FedMeZO: MeZO steps per client per round (H)", encoding="FedMeZO: dense weights or seed replay",
    alpha="FedMeZO: personalization strength", signal="FedMeZO: heterogeneity signal",
    high_fraction="ZOWarmUp: high-resource share of the clients", warmup_rounds="ZOWarmUp: first-order rounds (N)",
    zo_rounds="ZOWarmUp: zeroth-order rounds (M)", fo_lr="ZOWarmUp: client SGD step", zo_lr="ZOWarmUp: ZO step",
    server_lr="ZOWarmUp: server step", perturbations="ZOWarmUp: seeds per client per round (S)",
    tau="ZOWarmUp: Rademacher scale", high_res_only="ZOWarmUp: the High-Res-Only baseline",
    task="vader, digits (default: digits for zowarmup, else vader)", model="vader: the pretrained model",
    lora_rank="vader: LoRA rank (0: no adapters)", threads="torch CPU threads",
    out="output folder (required, here or in the config)")
_TYPES = {"int": int, "float": float, "str": str}


def _fields() -> dict:
    """name -> (type, default shown) over every config, first definition wins for the type."""
    out = {}
    for cls in (SimConfig, FedMeZOConfig, ZOWarmUpConfig):
        for f in dataclasses.fields(cls):
            kind = f.type.split(" |")[0]
            shown = "the strategy's" if f.name == "lr" else "iid" if f.name == "dirichlet" and f.default is None \
                else f.default
            if f.name in out and out[f.name][1] != shown:
                shown = "per strategy"
            out[f.name] = (out.get(f.name, (kind,))[0], shown)
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="zofed", description="Federated zeroth-order fine-tuning: simulate runs, "
                                 "inspect and replay orbits, plot runs.")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="simulate a federated run and write metrics, orbit, summary and plots",
                       description="Flags override the --config file, which overrides the defaults. Run again "
                       "with the same options to resume an interrupted run.")
    r.add_argument("--config", help="a TOML file of these options (keys as here, - or _)")
    fields = _fields()
    for name, (kind, shown) in list(fields.items()) + [(k, ("int" if k in ("lora_rank", "threads") else "str", v))
                                                         for k, v in RUN_OPTIONS.items()]:
        kw = dict(action=argparse.BooleanOptionalAction) if kind == "bool" else dict(type=_TYPES[kind])
        if name == "strategy":
            kw["choices"] = STRATEGY_NAMES
        # only given flags land in the namespace, so a config file can fill the rest
        r.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS,
                       help=f"{HELP.get(name, '')} (default: {shown})".strip(), **kw)
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
    known = set(_fields()) | set(RUN_OPTIONS)
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ValueError(f"config {path}: unknown field {key!r}; the fields are {', '.join(sorted(known))}")
        out[name] = value
    return out


def config_class(strategy: str):
    return ROUND_CONFIGS.get(strategy, SimConfig)


def _run_options(args) -> dict:
    """defaults <- the config file <- the flags given; only fields the chosen strategy takes."""
    given = {k: v for k, v in vars(args).items() if k not in ("command", "config", "no_progress")}
    merged = dict(RUN_OPTIONS)
    merged.update(_load_config(args.config) if args.config else {})
    merged.update(given)
    strategy = merged.get("strategy", "feedsign")
    if strategy not in STRATEGY_NAMES:
        raise ValueError(f"config field 'strategy' must be one of {tuple(STRATEGY_NAMES)}, got {strategy!r}")
    takes = set(config_class(strategy).__dataclass_fields__) | set(RUN_OPTIONS) | {"strategy"}
    for name in merged:
        if name not in takes:
            raise ValueError(f"config field {name!r} does not apply to strategy {strategy!r}")
    if merged["task"] is None:
        merged["task"] = "digits" if strategy == "zowarmup" else "vader"
    for name, kind in (("task", str), ("model", (str, type(None))), ("lora_rank", (int, type(None))),
                       ("threads", (int, type(None))), ("out", str)):
        if isinstance(merged[name], bool) or not isinstance(merged[name], kind):
            what = "required: give --out or put out = \"DIR\" in the config" if name == "out" and \
                merged[name] is None else f"has the wrong type, got {merged[name]!r}"
            raise ValueError(f"config field {name!r} {what}")
    return merged


def _run(args) -> None:
    o = _run_options(args)
    cls = config_class(o.get("strategy", "feedsign"))
    cfg = cls(**{k: v for k, v in o.items() if k in cls.__dataclass_fields__})
    cfg.validate()
    import torch

    from . import tasks

    if o["threads"]:
        torch.set_num_threads(o["threads"])
    if args.no_progress:
        from transformers.utils import logging

        logging.disable_progress_bar()
    task = tasks.build(o["task"], **{k: o[k] for k in ("model", "lora_rank") if o[k] is not None})
    out = o["out"]
    if cls is SimConfig:
        from . import sim

        s = sim.run(task, cfg, out=out, progress=not args.no_progress)
        name, steps = cfg.strategy, f"{cfg.steps} steps"
    else:
        from . import rounds

        if cls is FedMeZOConfig:
            from .fedmezo import FedMeZO as algorithm
        else:
            from .zowarmup import ZOWarmUp as algorithm
        s = rounds.run(algorithm(task, cfg), out=out, progress=not args.no_progress)
        name, steps = s["config"]["strategy"], f"{cfg.rounds} rounds"
    print(f"{name}: held-out accuracy {100 * s['initial_accuracy']:.1f}% -> {100 * s['final_accuracy']:.1f}% "
          f"in {steps} ({s['seconds']:.0f} s); per client: {s['bytes_up_per_client']:.0f} B up, "
          f"{s['bytes_down_per_client']:.0f} B down (payload {s['payload_bits_up_per_client'] / 8:.0f} B up, "
          f"{s['payload_bits_down_per_client'] / 8:.0f} B down); model_sha256 {s['model_sha256']}")
    orbit = f"orbit ({s['orbit_bytes']} B)" if "orbit_bytes" in s else f"no orbit ({s['no_orbit']})"
    print(f"wrote {out}/metrics.jsonl, {orbit}, summary.json, loss_accuracy.png, accuracy_bytes.png")


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
