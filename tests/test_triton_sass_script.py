"""benchmarks/triton_sass.py compiles the variants it is asked for and reports their SASS per element and the
modelled H100 bandwidth consistently (one variant here: compiling all takes minutes; tests/test_triton_aot.py
checks the counts themselves)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = pathlib.Path(__file__).parents[1] / "benchmarks" / "triton_sass.py"


def _run(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton_cache")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


def test_script_reports_one_variant_as_json_and_as_a_table(tmp_path):
    from zokernels.triton import _aot

    out = _run(tmp_path, "--arch", "90", "--only", "update/v2/gaussian/bfloat16/nearest", "--table")
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout[:out.stdout.rindex("}") + 1])
    if report["skipped"]:
        pytest.skip(str(report["skipped"]))
    [v] = report["variants"]
    assert {k: v[k] for k in ("kernel", "version", "dist", "dtype", "rounding", "arch", "portable")} == {
        "kernel": "update", "version": 2, "dist": "gaussian", "dtype": "bfloat16", "rounding": "nearest",
        "arch": "sm_90", "portable": True}
    assert v["elements_per_thread"] == 16  # BLOCK_G 256 groups x 4 / (2 warps x 32 threads)
    assert sum(v["pipes_per_element"].values()) == pytest.approx(v["instructions_per_element"])
    # 4 bytes per element (bf16 read and written): the bound's cycles per element against HBM's bytes per cycle
    assert v["bound"] in _aot.RATE
    cycles = v["instructions_per_element"] / _aot.RATE["issue"]
    if v["bound"] == "issue":  # as today: 46 instructions take more issue slots than ALU slots
        assert v["hbm_fraction"] == pytest.approx(min(1.0, _aot.SM_CYCLES / cycles / (_aot.HBM / 4)))
    assert 0 < v["hbm_fraction"] <= 1 and v["registers"] > 0
    lines = out.stdout.strip().splitlines()
    assert lines[-1].startswith("| update | gaussian | bfloat16 | nearest | - | ")
    assert f"{v['instructions_per_element']:.1f} ({100 * v['hbm_fraction']:.0f}%)" in lines[-1]


@pytest.mark.parametrize("args, complaint", [(["--arch", "sm90"], "--arch"), (["--arch", "70"], "--arch"),
                                             (["--arch", "90", "--only", "nothing"], "matches no variant")])
def test_script_rejects_bad_arguments(tmp_path, args, complaint):
    out = _run(tmp_path, *args)
    assert out.returncode == 2 and complaint in out.stderr
