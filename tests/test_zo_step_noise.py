"""benchmarks/zo_step.py measures zokernels' steps with the noise it is told (--dist, --spec-version), and
reports the time each step spends beyond its two forwards. At a tiny size: no timing asserts."""

import json
import pathlib
import subprocess
import sys

import pytest

import zokernels

SCRIPT = pathlib.Path(__file__).parents[1] / "benchmarks" / "zo_step.py"


@pytest.mark.slow
@pytest.mark.skipif("cpu" not in zokernels.backends(), reason="C++ extension not built")
def test_the_step_benchmark_runs_the_noise_it_is_given():
    pytest.importorskip("transformers")
    out = subprocess.run([sys.executable, str(SCRIPT), "--layers", "1", "--steps", "1", "--threads", "1",
                          "--variants", "inplace-fused", "--dist", "rademacher", "--spec-version", "2", "--table"],
                         capture_output=True, text=True, timeout=900, check=True)
    report = json.loads(out.stdout[: out.stdout.rindex("}") + 1])
    assert (report["dist"], report["spec_version"]) == ("rademacher", 2)
    (r,) = report["results"]
    assert r["beyond_two_forwards_s"] == pytest.approx(r["step_s"] - 2 * r["forward_s"])
    assert "rademacher noise (spec v2)" in out.stdout and "beyond" in out.stdout
    bad = subprocess.run([sys.executable, str(SCRIPT), "--spec-version", "3"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--spec-version" in bad.stderr
