"""The C++ backend's hot loops exist once per instruction set (baseline, AVX2, AVX-512 on x86-64); the
extension picks the fastest one the CPU supports at import. Every variant gives the same bits."""

import os
import pathlib
import platform
import subprocess
import sys

import pytest
import torch

from zokernels import _cpu

from conftest import bits

pytestmark = pytest.mark.skipif(not _cpu.available(), reason="C++ extension not built")
ROOT = pathlib.Path(__file__).parents[1]

# What each variant is compiled for (setup.py) and so what the CPU must have, as /proc/cpuinfo names it.
AVX512_NEEDS = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}
X86_NEEDS = {"avx512bf16": AVX512_NEEDS | {"avx512_bf16"}, "avx512": AVX512_NEEDS, "avx2": {"avx2", "f16c"}}


def _cpuinfo_flags() -> set[str]:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(platform.machine() != "x86_64" or not os.path.exists("/proc/cpuinfo"),
                    reason="reads x86-64 features from Linux's /proc/cpuinfo")
def test_the_fastest_variant_this_cpu_supports_is_chosen():
    c = _cpu.require()
    flags = _cpuinfo_flags()
    supported = [name for name, needs in X86_NEEDS.items() if needs <= flags] + ["baseline"]
    assert c.isas() == supported  # fastest first
    if "ZOKERNELS_CPU_ISA" not in os.environ:
        assert c.isa() == supported[0]


SIZES = [1, 2, 3, 5, 15, 16, 17, 63, 511, 512, 513, 1029]  # around the 4-element group, 16-group vector, 512 tile
OFFSETS = [0, 1, 2, 3, 5, 13, 509, 2**32 - 3]


# inf, NaN, signed zero, fp16's largest value and its subnormals, bf16-sized and float32-only magnitudes
SPECIALS = [float("inf"), float("nan"), -0.0, 65504.0, -65519.0, 3e-8, -6e-5, 1e38, -3.4e38, 1e-40]


def _with_specials(w: torch.Tensor) -> torch.Tensor:
    w[::7] = torch.tensor(SPECIALS * (len(w[::7]) // len(SPECIALS) + 1))[: len(w[::7])]
    return w


def _run_everything(c) -> list[torch.Tensor]:
    """Noise and multi-seed updates over every spec version, dist, dtype and rounding, at ragged sizes and
    offsets."""
    out = []
    for version, dist, code in [(v, d, code) for v in (1, 2) for d, code in _cpu.DIST_CODES.items()]:
        for n in SIZES:
            for off in OFFSETS:
                z = torch.empty(n)
                c.noise(z.data_ptr(), n, off, 2**64 - 5, 7, code, 2, version=version)
                out.append(z)
        for dtype, dcode in _cpu.DTYPE_CODES.items():
            for rounding in (0, 1):
                g = torch.Generator().manual_seed(1)
                ws = [_with_specials(torch.randn(n, generator=g) * 10.0 ** (i % 3 - 2)).to(dtype)
                      for i, n in enumerate(SIZES)]
                offs = [OFFSETS[i % len(OFFSETS)] for i in range(len(ws))]
                c.update([w.data_ptr() for w in ws], [w.numel() for w in ws], offs, list(range(len(ws))),
                         [dcode] * len(ws), [3, 2**63 + 1, 11], [1e-2, -3e-3, 2e4], code, rounding, 2,
                         version=version)
                out += ws
    return out


def test_every_variant_gives_the_same_bits(isa_restored):
    c = isa_restored
    c.set_isa("baseline")
    expected = _run_everything(c)
    for name in c.isas():
        c.set_isa(name)
        assert c.isa() == name
        got = _run_everything(c)
        for i, (a, b) in enumerate(zip(expected, got)):
            assert torch.equal(bits(a), bits(b)), (name, i)


def test_set_isa_refuses_unknown_names(isa_restored):
    with pytest.raises(ValueError, match="'sse9'.*baseline"):
        isa_restored.set_isa("sse9")


def _import_isa(value: str) -> subprocess.CompletedProcess:
    code = "import zokernels._C as c; print(c.isa())"
    env = dict(os.environ, ZOKERNELS_CPU_ISA=value)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_environment_variable_forces_a_variant():
    out = _import_isa("baseline")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "baseline"
    bad = _import_isa("avx9000")
    assert bad.returncode != 0
    assert "ZOKERNELS_CPU_ISA='avx9000'" in bad.stderr and "baseline" in bad.stderr
