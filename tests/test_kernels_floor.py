"""benchmarks/kernels.py reports every pass against the memory floor measured in the same run (issue 13,
item 1): each dist in float32 and bfloat16, update_ with K=16, K=2 and two K=1 calls, and the machine's load.
At a tiny scale: no timing asserts, only that the record says what it claims."""

import json
import pathlib
import subprocess
import sys

import pytest

import zokernels
from zokernels import _cpu

SCRIPT = pathlib.Path(__file__).parents[1] / "benchmarks" / "kernels.py"


@pytest.mark.skipif("cpu" not in zokernels.backends(), reason="C++ extension not built")
def test_every_pass_is_reported_against_the_floor_of_the_same_run():
    out = subprocess.run([sys.executable, str(SCRIPT), "--scale", "0.001", "--reps", "1", "--threads", "1",
                          "--table"], capture_output=True, text=True, timeout=600, check=True)
    report = json.loads(out.stdout[: out.stdout.rindex("}") + 1])
    expected = [f"{case}_{dtype}" for dtype in ("float32", "bfloat16")
                for case in ["floor", "perturb_gaussian", "perturb_rademacher", "perturb_uniform", "mezo_loop"]
                + (["update_K16", "update_K2", "update_K1_twice"] if dtype == "float32" else [])]
    passes = {r["name"]: r for r in report["passes"]}
    assert list(passes) == expected
    for dtype in ("float32", "bfloat16"):
        floor = passes[f"floor_{dtype}"]["seconds"]
        for name, r in passes.items():
            if name.endswith(dtype):
                assert r["seconds"] > 0 and r["vs_floor"] == pytest.approx(r["seconds"] / floor)
    assert len(report["load"]["before"]) == 3 and report["load"]["cpus"] >= 1
    assert report["isa"] in _cpu.require().isas()
    assert "x floor" in out.stdout and "load average" in out.stdout
