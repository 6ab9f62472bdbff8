"""Tabulate zofed run folders (their summary.json) as a Markdown table, in the shape of FeedSign's Tables 5-7.

    python benchmarks/fed_table.py runs/*          # prints the table; --json prints the rows as JSON

A round run (FedMeZO, ZOWarmUp) tabulates as a step run does, a step being its round; its setting names what its
config has (no label-skew convention, no Byzantine clients).
"""

import argparse
import json
import pathlib

from zofed.strategies import run_label


def row(folder: pathlib.Path) -> dict:
    s = json.loads((folder / "summary.json").read_text())
    c = s["config"]
    setting = "iid" if c["dirichlet"] is None else f"Dirichlet {c['dirichlet']}"
    if "convention" in c and c["dirichlet"] is not None:
        setting += f" ({c['convention']})"
    if c.get("byzantine"):
        setting += f", {c['byzantine']} Byzantine of {c['clients']}"
    return dict(run=folder.name, strategy=run_label(c), setting=setting, seed=c["seed"], steps=s["steps"],
                initial=100 * s["initial_accuracy"], final=100 * s["final_accuracy"],
                up_bits_per_step=s["payload_bits_up_per_client"] / s["steps"],
                down_bits_per_step=s["payload_bits_down_per_client"] / s["steps"],
                bytes_up=s["bytes_up_per_client"], bytes_down=s["bytes_down_per_client"], seconds=s["seconds"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=pathlib.Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = [row(r) for r in args.runs]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| strategy | setting | seed | held-out accuracy | payload bits/step up, down | bytes up, down per client "
          "| time |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in sorted(rows, key=lambda r: (r["strategy"], r["setting"], r["seed"])):
        print(f"| {r['strategy']} | {r['setting']} | {r['seed']} | {r['initial']:.1f}% -> {r['final']:.1f}% | "
              f"{r['up_bits_per_step']:g}, {r['down_bits_per_step']:g} | {r['bytes_up']:,.0f}, {r['bytes_down']:,.0f} | "
              f"{r['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
