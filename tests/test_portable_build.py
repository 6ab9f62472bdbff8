"""The build is portable (no -march=native: a wheel runs on any CPU of its architecture) and clean (no
compiler warnings); at import it still runs the fastest variant this CPU supports, and every variant
reproduces the golden vectors."""

import json
import os
import pathlib
import platform
import re
import subprocess
import sys

import pytest

from zokernels import SPEC_VERSION, _cpu

from test_dispatch import X86_NEEDS, _cpuinfo_flags

ROOT = pathlib.Path(__file__).parents[1]

# Runs in a fresh process: a process can hold only one extension module named zokernels._C (loading a
# second file of that name hands back the first module), so the new build is loaded there alone.
CHECK_BUILD = r"""
import importlib.util, json, sys, torch
sys.path.insert(0, sys.argv[2])
from golden.generate import UPDATE_COEFFS, UPDATE_KEY, UPDATE_OFFSET, UPDATE_SEEDS, bits, initial_weights
spec = importlib.util.spec_from_file_location("_C", sys.argv[1])
c = importlib.util.module_from_spec(spec)
spec.loader.exec_module(c)
golden = json.loads(open(sys.argv[3]).read())
codes = {"gaussian": 0, "rademacher": 1, "uniform": 2}
dtypes = {"float32": 0, "bfloat16": 1, "float16": 2}
mismatches = []
chosen = c.isa()
for isa in c.isas():
    c.set_isa(isa)
    for case in golden["noise"]:
        z = torch.empty(len(case["bits"].split()))
        c.noise(z.data_ptr(), z.numel(), case["offset"], case["seed"], case["key"], codes[case["dist"]], 2)
        if bits(z) != case["bits"]:
            mismatches.append((isa, "noise", case["dist"], case["seed"]))
    for case in golden["update"]:
        w = initial_weights().to(getattr(torch, case["dtype"]))
        c.update([w.data_ptr()], [w.numel()], [UPDATE_OFFSET], [UPDATE_KEY], [dtypes[case["dtype"]]], UPDATE_SEEDS,
                 UPDATE_COEFFS, codes[case["dist"]], case["rounding"] == "stochastic", 2)
        if bits(w) != case["bits"]:
            mismatches.append((isa, "update", case["dist"], case["dtype"], case["rounding"]))
print(json.dumps({"isa": chosen, "isas": c.isas(), "mismatches": mismatches}))
"""


@pytest.fixture(scope="module")
def fresh_build(tmp_path_factory):
    """A clean build of the extension as `pip install` makes it (default flags), with the compiler's output."""
    tmp = tmp_path_factory.mktemp("build")
    env = {k: v for k, v in os.environ.items() if k not in ("CFLAGS", "CXXFLAGS", "ZOKERNELS_CPU_ISA")}
    out = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp / "lib"), "--build-temp",
                          str(tmp / "tmp")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    return tmp, out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.skipif(not _cpu.available(), reason="C++ extension not built")
def test_build_is_portable_and_clean(fresh_build):
    _, log = fresh_build
    compiles = [line for line in log.splitlines() if " -c csrc/" in line]  # not the probe of -mavx512bf16
    assert len(compiles) == (5 if platform.machine() == "x86_64" else 2), log  # bindings + one per variant
    assert not any("-march" in line or "-ffast-math" in line for line in compiles), log
    assert all("-ffp-contract=off" in line for line in compiles), log
    assert "warning" not in log.lower(), log


@pytest.mark.slow
@pytest.mark.skipif(not _cpu.available(), reason="C++ extension not built")
def test_variants_share_nothing_but_their_tables(fresh_build):
    """Each variant's object defines one global symbol, its table, and runs nothing at load time: an inline
    function it exported could be linked into the baseline path and die on an older CPU."""
    tmp, _ = fresh_build
    objects = sorted((tmp / "tmp").glob("*/csrc/zo_tiles.o"))
    assert objects
    for obj in objects:
        isa = obj.parts[-3]
        defined = subprocess.run(["nm", "-C", "--defined-only", "--extern-only", str(obj)], capture_output=True,
                                 text=True, check=True).stdout.split()
        assert defined[1:] == ["D", f"zo::tiles_{isa}"], (isa, defined)
        sections = subprocess.run(["objdump", "-h", str(obj)], capture_output=True, text=True, check=True).stdout
        assert "init_array" not in sections and ".ctors" not in sections, isa


def _mnemonics(obj: pathlib.Path) -> list[str]:
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(obj)], capture_output=True, text=True,
                             check=True).stdout
    return re.findall(r"^\s*[0-9a-f]+:\t(\S+)", listing, re.M)  # "  4a4:\tvpmuludq %zmm1,..." -> vpmuludq


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 instruction sets")
def test_only_the_variants_use_wider_instructions(fresh_build):
    """The bindings and the baseline loops use no VEX/EVEX (AVX) instruction, the AVX2 loops no zmm register."""
    tmp, _ = fresh_build
    for obj in (tmp / "tmp" / "csrc" / "zo_kernels.o", tmp / "tmp" / "baseline" / "csrc" / "zo_tiles.o"):
        avx = [m for m in _mnemonics(obj) if m.startswith("v")]
        assert avx == [], (obj, avx[:5])
    avx2 = subprocess.run(["objdump", "-d", str(tmp / "tmp" / "avx2" / "csrc" / "zo_tiles.o")], capture_output=True,
                          text=True, check=True).stdout
    assert "%ymm" in avx2 and "%zmm" not in avx2


@pytest.mark.slow
@pytest.mark.skipif(not _cpu.available(), reason="C++ extension not built")
def test_fresh_build_runs_the_fast_path_with_the_golden_bits(fresh_build):
    tmp, _ = fresh_build
    so = next((tmp / "lib" / "zokernels").glob("_C*.so"))
    env = {k: v for k, v in os.environ.items() if k != "ZOKERNELS_CPU_ISA"}
    golden = ROOT / "tests" / "golden" / f"noise_v{SPEC_VERSION}.json"
    out = subprocess.run([sys.executable, "-c", CHECK_BUILD, str(so), str(ROOT / "tests"), str(golden)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["mismatches"] == []
    if platform.machine() == "x86_64" and os.path.exists("/proc/cpuinfo"):
        flags = _cpuinfo_flags()
        fastest = next((name for name, needs in X86_NEEDS.items() if needs <= flags), "baseline")
        assert report["isa"] == fastest
        assert len(report["isas"]) == 1 + sum(needs <= flags for needs in X86_NEEDS.values())
