"""The README's benchmark script runs and reports what it claims (at a tiny scale: no timing asserts)."""

import json
import pathlib
import subprocess
import sys

import pytest

import zokernels

SCRIPT = pathlib.Path(__file__).parents[1] / "benchmarks" / "kernels.py"


@pytest.mark.skipif("cpu" not in zokernels.backends(), reason="C++ extension not built")
def test_kernels_script_prints_json_report():
    out = subprocess.run([sys.executable, str(SCRIPT), "--scale", "0.001", "--reps", "1", "--threads", "1"],
                         capture_output=True, text=True, timeout=600, check=True)
    report = json.loads(out.stdout)
    assert report["tensors"] == 73 and report["threads"] == 1
    names = [r["name"] for r in report["results"]]
    assert names == ["perturb_pass_float32", "update_K16_float32", "perturb_pass_v2_float32", "update_K16_v2_float32",
                     "perturb_pass_bfloat16", "perturb_pass_v2_bfloat16", "update_K16_v2_bfloat16"]
    for r in report["results"]:
        assert r["ours_s"] > 0 and r["mezo_s"] > 0 and r["speedup"] == pytest.approx(r["mezo_s"] / r["ours_s"])


def test_kernels_script_rejects_bad_arguments():
    out = subprocess.run([sys.executable, str(SCRIPT), "--scale", "0"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "--scale" in out.stderr


@pytest.mark.slow
@pytest.mark.skipif("cpu" not in zokernels.backends(), reason="C++ extension not built")
def test_zo_step_script_prints_json_report():
    pytest.importorskip("transformers")
    script = SCRIPT.with_name("zo_step.py")
    out = subprocess.run([sys.executable, str(script), "--layers", "1", "--steps", "1", "--threads", "1",
                          "--variants", "inplace,shadow"], capture_output=True, text=True, timeout=900, check=True)
    report = json.loads(out.stdout)
    by = {r["variant"]: r for r in report["results"]}
    assert set(by) == {"inplace", "shadow"}
    assert by["inplace"]["weight_write_passes"] == 3 and by["shadow"]["weight_write_passes"] == 1
    assert by["inplace"]["peak_temp_bytes"] == 0
    assert by["shadow"]["peak_temp_bytes"] == by["shadow"]["largest_module_bytes"]
    assert by["shadow"]["time_vs_inplace"] == pytest.approx(by["shadow"]["step_s"] / by["inplace"]["step_s"])
