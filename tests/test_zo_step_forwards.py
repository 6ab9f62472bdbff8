"""benchmarks/zo_step.py reports each step against two forwards timed in the same round-robin (issue 13,
item 1), and the machine's load. At a tiny size: no timing asserts, only that the record says what it claims."""

import json
import pathlib
import subprocess
import sys

import pytest

import zokernels

SCRIPT = pathlib.Path(__file__).parents[1] / "benchmarks" / "zo_step.py"


@pytest.mark.slow
@pytest.mark.skipif("cpu" not in zokernels.backends(), reason="C++ extension not built")
def test_each_step_is_reported_against_two_forwards():
    pytest.importorskip("transformers")
    out = subprocess.run([sys.executable, str(SCRIPT), "--layers", "1", "--steps", "2", "--threads", "1",
                          "--variants", "inplace-fused", "--table"], capture_output=True, text=True, timeout=900,
                         check=True)
    report = json.loads(out.stdout[: out.stdout.rindex("}") + 1])
    (r,) = report["results"]
    assert r["variant"] == "inplace-fused" and r["weight_write_passes"] == 2
    assert r["forward_s"] > 0 and r["vs_two_forwards"] == pytest.approx(r["step_s"] / (2 * r["forward_s"]))
    assert len(report["load"]["before"]) == 3 and report["load"]["cpus"] >= 1
    assert "vs 2 fwd" in out.stdout and "load average" in out.stdout
