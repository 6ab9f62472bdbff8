"""benchmarks/gpu.py: the report's schema from a quick CPU run (Triton in its interpreter), a wrong golden value
caught, and the real run on a GPU (marked gpu). No timing asserts."""

import json
import pathlib
import subprocess
import sys

import pytest
import torch

import zokernels

SCRIPT = pathlib.Path(__file__).parents[1] / "benchmarks" / "gpu.py"
GOLDEN = pathlib.Path(__file__).parent / "golden"
PASS_KEYS = {"case", "spec_version", "kind", "dtype", "seconds", "bytes", "bytes_per_s", "vs_measured_peak", "vs_nominal_peak"}


def run(*args: str, timeout: int = 600) -> tuple[int, dict, str]:
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
    assert out.stdout.startswith("{"), out.stderr[-3000:]
    return out.returncode, json.JSONDecoder().raw_decode(out.stdout)[0], out.stderr  # --table follows the JSON


def with_one_wrong_bit(tmp_path) -> tuple[pathlib.Path, str]:
    """A copy of the golden folder with the last hex digit of one spec v2 update case's bits changed."""
    for v in (1, 2):
        (tmp_path / f"noise_v{v}.json").write_text((GOLDEN / f"noise_v{v}.json").read_text())
    golden = json.loads((tmp_path / "noise_v2.json").read_text())
    case = golden["update"][4]
    case["bits"] = case["bits"][:-1] + ("0" if case["bits"][-1] != "0" else "1")
    (tmp_path / "noise_v2.json").write_text(json.dumps(golden))
    return tmp_path, f"v2 update {case['dist']} {case['dtype']} {case['rounding']}"


@pytest.mark.skipif("cpu" not in zokernels.backends(), reason="C++ extension not built")
def test_cpu_run_reports_every_section_and_catches_a_wrong_golden_value(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("triton")
    path, wrong = with_one_wrong_bit(tmp_path)
    code, report, err = run("--device", "cpu", "--small", "--reps", "1", "--golden", str(path))
    assert code == 1 and "golden mismatch" in err  # the report is printed, the exit status says it failed
    assert report["benchmark"] == "zokernels.gpu" and report["nominal_peak_bytes_per_s"] is None

    rows = report["bandwidth"]
    assert all(set(r) == PASS_KEYS for r in rows)
    for dtype in ("float32", "bfloat16", "float16"):
        mine = {(r["case"], r["spec_version"]): r for r in rows if r["dtype"] == dtype}
        assert set(mine) == {("copy", None), ("foreach_add", None)} | {
            (d, v) for d in ("gaussian", "rademacher", "uniform") for v in (1, 2)}  # no gaussian-fast on CPU
        assert len({r["bytes"] for r in mine.values()}) == 1
        assert max(mine["copy", None]["vs_measured_peak"], mine["foreach_add", None]["vs_measured_peak"]) == 1.0
        for r in mine.values():
            assert r["bytes_per_s"] == pytest.approx(r["bytes"] / r["seconds"]) and r["vs_nominal_peak"] is None

    z = report["zo_step"]
    by = {r["variant"]: r for r in z["results"]}
    assert list(by) == ["mezo", "inplace", "inplace-fused", "shadow"] and z["dtype"] == "float32"
    assert [by[v]["weight_write_passes"] for v in by] == [4, 3, 2, 1]
    assert by["mezo"]["speedup_vs_mezo"] == 1.0
    assert by["shadow"]["speedup_vs_mezo"] == pytest.approx(by["mezo"]["step_s"] / by["shadow"]["step_s"])

    g = report["golden"]
    assert g["backend"] == "triton" and g["cases"] == 72  # 18 noise + 18 update cases per version, interpreted
    assert g["mismatches"] == [wrong] and g["all_equal"] is False  # the other 71 are bit-identical


def test_nominal_peaks_by_device_name():
    sys.path.insert(0, str(SCRIPT.parent))
    import gpu

    assert gpu.nominal_peak("NVIDIA H200") == gpu.nominal_peak("NVIDIA H200 NVL") == 4.8e12
    assert gpu.nominal_peak("NVIDIA H100 80GB HBM3") == 3.35e12  # the SXM part
    assert gpu.nominal_peak("NVIDIA A100-SXM4-80GB") == gpu.nominal_peak("NVIDIA A100 80GB PCIe") == 2.0e12
    assert gpu.nominal_peak("NVIDIA H100 PCIe") is None and gpu.nominal_peak("NVIDIA A100-SXM4-40GB") is None


def test_bad_arguments_are_named():
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--reps", "0"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and "--reps" in out.stderr
    if not torch.cuda.is_available():
        out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and "no CUDA GPU" in out.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_run_matches_golden_and_reports_bandwidth():
    code, report, err = run("--layers", "4", "--reps", "5", "--table", timeout=900)
    assert code == 0, err[-3000:]
    assert report["golden"]["all_equal"] and report["golden"]["backend"] == "triton"
    cases = {(r["case"], r["dtype"]) for r in report["bandwidth"]}
    assert ("gaussian-fast", "bfloat16") in cases and ("rademacher", "bfloat16") in cases
    for r in report["bandwidth"]:
        assert r["vs_measured_peak"] > 0
        if r["kind"] == "floor" and r["vs_nominal_peak"] is not None:
            assert r["vs_nominal_peak"] < 1.0  # no pass beats the data sheet: the byte count is not inflated
    assert report["zo_step"]["dtype"] == "bfloat16"
