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
                + (["update_K16", "update_K2", "update_K1_twice"] if dtype == "float32" else [])
                + ["perturb_gaussian_v2", "perturb_rademacher_v2", "perturb_uniform_v2", "update_K16_gaussian_v2",
                   "update_K16_rademacher_v2"]]  # both spec versions by default, against one floor
    passes = {r["name"]: r for r in report["passes"]}
    assert list(passes) == expected
    for dtype in ("float32", "bfloat16"):
        floor = passes[f"floor_{dtype}"]["seconds"]
        for name, r in passes.items():
            if name.endswith(dtype):
                assert r["seconds"] > 0 and r["vs_floor"] == pytest.approx(r["seconds"] / floor)
    assert len(report["load"]["before"]) == 3 and report["load"]["cpus"] >= 1
    assert report["isa"] in _cpu.require().isas() and report["spec_versions"] == [1, 2]
    assert "x floor" in out.stdout and "load average" in out.stdout


@pytest.mark.skipif("cpu" not in zokernels.backends(), reason="C++ extension not built")
def test_spec_version_picks_the_streams_measured():
    out = subprocess.run([sys.executable, str(SCRIPT), "--scale", "0.0005", "--reps", "1", "--threads", "1",
                          "--spec-version", "2"], capture_output=True, text=True, timeout=600, check=True)
    report = json.loads(out.stdout)
    assert report["spec_versions"] == [2]
    assert [r["name"] for r in report["passes"]][:7] == [
        f"{case}_float32" for case in ("floor", "mezo_loop", "perturb_gaussian_v2", "perturb_rademacher_v2",
                                       "perturb_uniform_v2", "update_K16_gaussian_v2", "update_K16_rademacher_v2")]
    assert [r["name"] for r in report["results"]] == [
        "perturb_pass_v2_float32", "update_K16_v2_float32", "perturb_pass_v2_bfloat16", "update_K16_v2_bfloat16"]


@pytest.mark.parametrize("bad", ["3", "1,x"])
def test_spec_version_refuses_unknown_versions(bad):
    out = subprocess.run([sys.executable, str(SCRIPT), "--spec-version", bad], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2 and "--spec-version" in out.stderr


TILE_LOOPS = pathlib.Path(__file__).parents[1] / "benchmarks" / "tile_loops.py"


@pytest.mark.skipif("cpu" not in zokernels.backends(), reason="C++ extension not built")
def test_tile_loop_figures_cover_every_dtype_and_stream_on_the_variant_asked_for():
    isa = _cpu.require().isas()[-1]  # baseline: any variant but the default shows --isa is obeyed
    out = subprocess.run([sys.executable, str(TILE_LOOPS), "--isa", isa, "--numel", "64", "--aliases", "2",
                          "--windows", "1", "--versions", "1,2", "--table"], capture_output=True, text=True,
                         timeout=300, check=True)
    report = json.loads(out.stdout.splitlines()[0])
    assert report["isa"] == isa and len(report["load"]["before"]) == 3
    cases = ["floor"] + [f"{d}_v{v}" for v in (1, 2) for d in ("gaussian", "rademacher", "uniform")]
    assert [(r["dtype"], r["case"]) for r in report["rows"]] == [
        (dtype, case) for dtype in ("float32", "bfloat16", "float16") for case in cases]
    assert all(r["ns_per_element"] > 0 for r in report["rows"])
    assert "ns per element" in out.stdout
