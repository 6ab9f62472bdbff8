"""The `zofed` command line.

    zofed run --strategy feedsign --clients 5 --steps 400 --task vader --model minilm --out runs/feedsign
    zofed orbit info runs/feedsign/orbit
    zofed orbit replay runs/feedsign/orbit --out weights.safetensors
    zofed run --config experiment.toml            # keys as the flags; flags given override the file
    zofed plot runs/feedsign runs/zo-fedsgd --out compare.png
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import json
import re
import sys
import textwrap
import tokenize

from . import configs, strategies
from .configs import SimConfig
from .orbit import MAX_BYTES as MAX_ORBIT_BYTES
from .orbit import OrbitError
from .transport import TRANSPORTS, open_transport

STEP = "the step strategies"  # who takes SimConfig's own fields


def strategy_names() -> list[str]:
    """The registry's step strategies (zofed.sim runs them) and round-based algorithms (zofed.rounds), as
    registered when asked."""
    return sorted(strategies.STRATEGIES) + sorted(strategies.ROUNDS)


# options of `zofed run` that are not config fields, with their defaults (None: the task's or strategy's own)
RUN_OPTIONS = dict(task=None, model=None, lora_rank=None, threads=None, out=None, transport="inproc", processes=None)
RUN_HELP = dict(task="vader or digits",  # and the defaults, from the registry (_parser)
                transport=f"how frames travel between the server and the clients: {', '.join(TRANSPORTS)} (default: "
                "inproc, every client in this process; the step strategies only)",
                processes="torchdist: processes, the server's and the clients' (default: 2)",
                model="vader: the pretrained model (default: the task's)",
                lora_rank="vader: LoRA rank, 0 for no adapters (default: the task's)",
                threads="torch CPU threads (default: torch's)", out="the run folder (required, here or in the config)")
_TYPES = {"int": int, "float": float, "str": str}


def _field_docs(cls) -> dict:
    """name -> the comment on the line that declares the field in cls's source (zofed/configs.py, or a round
    algorithm's file under zofed/strategies/), or else the comment lines right above it: the one place a config
    field is documented, for `zofed run --help` as for a reader of the code."""
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # installed without sources: help without the descriptions
        return {}
    docs, above, depth = {}, [], 0
    for tok in tokenize.generate_tokens(io.StringIO(textwrap.dedent(source)).readline):
        depth += {tokenize.INDENT: 1, tokenize.DEDENT: -1}.get(tok.type, 0)
        declared = re.match(r"\s*(\w+)\s*:", tok.line)
        field = declared.group(1) if declared and declared.group(1) in names and depth == 1 else None  # class body
        if tok.type == tokenize.COMMENT and tok.line.lstrip().startswith("#"):
            above.append(tok.string.lstrip("#").strip())
        elif tok.type == tokenize.COMMENT and field:
            docs[field] = tok.string.lstrip("#").strip()
        elif tok.type == tokenize.NEWLINE:  # the end of a statement
            if field and above:
                docs.setdefault(field, " ".join(above))
            above = []
    return docs


_PROBES = {"str": "\0", "int": -1}  # per field type, a value no list of choices holds


def _choices(cls, name: str, kind: str) -> tuple:
    """The values cls.validate() accepts for the str or int field `name`, read from its refusal of a value none
    takes ("config field 'dist' must be one of ('gaussian', ...), got ..."): validate() stays the one list. ()
    for a field without a list of choices (or a config without checks)."""
    if kind not in _PROBES or not hasattr(cls, "validate"):
        return ()
    try:
        cls(**{name: _PROBES[kind]}).validate()
    except ValueError as exc:
        found = re.search(r"must be one of (\(.*?\)), got", str(exc))
        if found:
            return ast.literal_eval(found.group(1))
    return ()


def _kind(f: dataclasses.Field) -> str:
    """A config field's type name ("float" for `float | None`), whether its annotation is a string or a type."""
    return (f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))).split(" |")[0]


def _takers() -> dict:
    """field name -> who takes it, in order: (who, the strategies that covers, type, doc, default, choices) for
    SimConfig's own fields (the step strategies), each strategy option (its strategies) and each round
    algorithm's config field."""
    out = {}

    def add(name, who, covers, kind, doc, default, choices):
        out.setdefault(name, []).append((who, set(covers), kind, doc, default, choices))

    docs, takers = _field_docs(SimConfig), configs.option_takers()
    for f in configs.sim_fields():
        option = f.metadata.get("option")
        if option is None:
            kind = _kind(f)
            add(f.name, STEP, strategies.STRATEGIES, kind, docs.get(f.name), f.default,
                _choices(SimConfig, f.name, kind) if f.name != "strategy" else ())
        else:
            names = takers[f.name][1]
            add(f.name, " and ".join(names), names, option.type.__name__, option.doc, option.default, option.choices)
    for name, algorithm in strategies.ROUNDS.items():
        docs = _field_docs(algorithm.config)
        for f in dataclasses.fields(algorithm.config):
            kind = _kind(f)
            add(f.name, name, (name,), kind, docs.get(f.name), f.default, _choices(algorithm.config, f.name, kind))
    return out


def _fields() -> dict:
    """name -> (type, help) for every config field of every strategy; the help says what the field is (in each
    config that documents it), its choices, its default and, unless every strategy takes it, which do."""
    everyone = set(strategy_names())
    out = {}
    for name, taken in _takers().items():
        kind = taken[0][2]
        docs = [(who, doc) for who, _, _, doc, _, _ in taken]
        doc = "; ".join(d if i == 0 else f"{who}: {d}" for i, (who, d) in enumerate(docs)
                        if d and d not in [d for _, d in docs[:i]])
        choices = list(dict.fromkeys(c for *_, cs in taken for c in cs))  # argparse's
        defaults = [("the strategy's" if name == "lr" else "iid" if name == "dirichlet" and default is None
                     else default, who) for who, _, _, _, default, _ in taken]
        shown = f"default: {defaults[0][0]}" + "".join(f", {who}: {d}" for d, who in defaults[1:]
                                                         if d != defaults[0][0])
        notes = ([f"one of {', '.join(map(str, choices))}"] if choices else []) + [shown]
        if set().union(*(covers for _, covers, *_ in taken)) != everyone:
            notes.append("only " + " and ".join(who for who, *_ in taken))
        out[name] = (kind, f"{doc} ({'; '.join(notes)})".strip())
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="zofed", description="Federated zeroth-order fine-tuning: simulate runs, "
                                 "inspect and replay orbits, plot runs.")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="simulate a federated run and write metrics, orbit, summary and plots",
                       description="Flags override the --config file, which overrides the defaults. Run again "
                       "with the same options to resume an interrupted run. The step strategies ("
                       f"{', '.join(sorted(strategies.STRATEGIES))}) and the round-based ones "
                       f"({', '.join(sorted(strategies.ROUNDS))}) take their own fields.")
    r.add_argument("--config", help="a TOML file of these options (keys as here, - or _)")
    tasks = "".join(f", {name}: {a.task}" for name, a in sorted(strategies.ROUNDS.items()) if a.task != "vader")
    run_help = dict(RUN_HELP, task=f"{RUN_HELP['task']} (default: vader{tasks})")
    for name, (kind, text) in list(_fields().items()) + [
            (k, ("int" if k in ("lora_rank", "threads", "processes") else "str", run_help[k])) for k in RUN_OPTIONS]:
        kw = dict(action=argparse.BooleanOptionalAction) if kind == "bool" else dict(type=_TYPES[kind])
        if name in ("strategy", "transport"):
            kw["choices"] = strategy_names() if name == "strategy" else TRANSPORTS
        # only given flags land in the namespace, so a config file can fill the rest
        r.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS, help=text, **kw)
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    pl = sub.add_parser("plot", help="overlay runs: held-out accuracy vs step and vs bytes up per client",
                        description="One curve per run folder, labelled by the folder or by --label.")
    pl.add_argument("runs", nargs="+", help="run folders (with metrics.jsonl and summary.json)")
    pl.add_argument("--out", required=True, help="the file to write: .png, .pdf or .svg")
    pl.add_argument("--label", action="append", dest="labels",
                    help="the legend entry of a run (once per run, in the order of the folders; default: the folder)")
    o = sub.add_parser("orbit", help="inspect or replay an orbit file")
    osub = o.add_subparsers(dest="orbit_command", required=True)
    i = osub.add_parser("info", help="print an orbit's header as JSON")
    p = osub.add_parser("replay", help="rebuild the fine-tuned weights, verify them, write safetensors",
                        description="Prints the verified sha256 of the final weights on stdout. The file's keys are "
                        "the names the task's own model gives its weights (vader: peft's PeftModel names, and "
                        "head.weight/head.bias); its metadata records the orbit (spec_version, base_sha256, "
                        "final_sha256, strategy, steps, task, task_options).")
    for q in (i, p):
        q.add_argument("orbit")
        q.add_argument("--max-bytes", type=_byte_count, default=MAX_ORBIT_BYTES,
                       help=f"refuse an orbit file larger than this (default {MAX_ORBIT_BYTES}: 16 MiB)")
    p.add_argument("--out", required=True, help="the .safetensors file to write (a missing folder is made)")
    return ap


def _byte_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number of bytes, got {text!r}")
    return int(text)


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
    return strategies.ROUNDS[strategy].config if strategy in strategies.ROUNDS else SimConfig


def _config_fields(cls) -> set[str]:
    return {f.name for f in (configs.sim_fields() if cls is SimConfig else dataclasses.fields(cls))}


def _run_options(args) -> dict:
    """defaults <- the config file <- the flags given; only fields the chosen strategy takes."""
    given = {k: v for k, v in vars(args).items() if k not in ("command", "config", "no_progress")}
    merged = dict(RUN_OPTIONS)
    merged.update(_load_config(args.config) if args.config else {})
    merged.update(given)
    strategy = merged.get("strategy", "feedsign")
    if strategy not in strategy_names():
        raise ValueError(f"config field 'strategy' must be one of {tuple(strategy_names())}, got {strategy!r}")
    takes = _config_fields(config_class(strategy)) | set(RUN_OPTIONS) | {"strategy"}
    for name in merged:
        if name not in takes:
            raise ValueError(f"config field {name!r} does not apply to strategy {strategy!r}")
    if merged["task"] is None:
        merged["task"] = strategies.ROUNDS[strategy].task if strategy in strategies.ROUNDS else "vader"
    for name, kind in (("task", str), ("model", (str, type(None))), ("lora_rank", (int, type(None))),
                       ("threads", (int, type(None))), ("out", str), ("transport", str),
                       ("processes", (int, type(None)))):
        if isinstance(merged[name], bool) or not isinstance(merged[name], kind):
            what = "required: give --out or put out = \"DIR\" in the config" if name == "out" and \
                merged[name] is None else f"has the wrong type, got {merged[name]!r}"
            raise ValueError(f"config field {name!r} {what}")
    if merged["transport"] not in TRANSPORTS:
        raise ValueError(f"config field 'transport' must be one of {TRANSPORTS}, got {merged['transport']!r}")
    if merged["transport"] != "inproc" and strategy in strategies.ROUNDS:
        raise ValueError(f"strategy {strategy!r} runs in-process only (config field 'transport' is "
                         f"{merged['transport']!r})")
    if merged["processes"] is not None and (merged["transport"] != "torchdist" or merged["processes"] < 2):
        raise ValueError("config field 'processes' applies to transport 'torchdist' and must be >= 2 (one server "
                         f"process and client processes), got {merged['processes']!r} with {merged['transport']!r}")
    return merged


def _run(args) -> None:
    o = _run_options(args)
    cls = config_class(o.get("strategy", "feedsign"))
    cfg = cls(**{k: v for k, v in o.items() if k in _config_fields(cls)})
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

        if o["transport"] == "flower":
            from .transports import flower

            s = flower.run(task, cfg, out, progress=not args.no_progress)
        else:
            transport = None if o["transport"] == "inproc" else open_transport(
                o["transport"], {} if o["processes"] is None else dict(processes=o["processes"]))
            s = sim.run(task, cfg, out=out, progress=not args.no_progress, transport=transport)
        name, steps = cfg.strategy, f"{cfg.steps} steps"
    else:
        from . import rounds

        s = rounds.run(strategies.ROUNDS[o["strategy"]].build(task, cfg), out=out, progress=not args.no_progress)
        name, steps = s["config"]["strategy"], f"{cfg.rounds} rounds"
    print(f"{name}: held-out accuracy {100 * s['initial_accuracy']:.1f}% -> {100 * s['final_accuracy']:.1f}% "
          f"in {steps} ({s['seconds']:.0f} s); per client: {s['bytes_up_per_client']:.0f} B up, "
          f"{s['bytes_down_per_client']:.0f} B down (payload {s['payload_bits_up_per_client'] / 8:.0f} B up, "
          f"{s['payload_bits_down_per_client'] / 8:.0f} B down); model_sha256 {s['model_sha256']}")
    orbit = f"orbit ({s['orbit_bytes']} B)" if "orbit_bytes" in s else f"no orbit ({s['no_orbit']})"
    print(f"wrote {out}/metrics.jsonl, {orbit}, summary.json, loss_accuracy.png, accuracy_bytes.png")


def _replay(args) -> None:
    from . import orbit

    orbit.check_weights_path(args.out)  # before the replay, which can take minutes
    recorded = orbit.load(args.orbit, args.max_bytes)
    task = orbit.replay(recorded)
    tensors, size = orbit.write_weights(args.out, recorded, task)
    print(recorded.final_sha256)  # stdout: the sha256 alone, for scripts
    print(f"zofed: replayed {recorded.steps} {recorded.config['strategy']} steps on the base model (sha256 "
          f"{recorded.base_sha256}): final weights sha256 {recorded.final_sha256} verified against the orbit; "
          f"wrote {args.out} ({tensors} tensors, {size} bytes)", file=sys.stderr)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            _run(args)
        elif args.command == "plot":
            from .plots import plot_runs

            print(plot_runs(args.runs, args.out, args.labels))
        elif args.orbit_command == "info":
            from . import orbit

            print(json.dumps(orbit.info(orbit.load(args.orbit, args.max_bytes)), indent=1))
        else:
            _replay(args)
    except KeyboardInterrupt:  # Ctrl-C: checkpoints are written atomically, so the last one stands
        resumes = "; the same command resumes the run from its last checkpoint" if args.command == "run" else ""
        print(f"zofed: interrupted{resumes}", file=sys.stderr)
        return 130
    except ImportError as exc:
        print(f"zofed: error: {exc}; `pip install zokernels[fed]` installs what zofed needs", file=sys.stderr)
        return 2
    except (OrbitError, ValueError, OSError, RuntimeError, ArithmeticError) as exc:  # bad input, damaged or
        print("zofed: error: " + " ".join(str(exc).splitlines()), file=sys.stderr)  # locked files, diverged runs
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
