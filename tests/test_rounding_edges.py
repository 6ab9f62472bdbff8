"""Rounding float32 sums to bf16 and fp16 at the edges, under every ISA variant of the C++ backend: ties to
even in normal, smallest-normal and subnormal binades, just off the ties, sums that are float32 denormals
(VCVTNE2PS2BF16 of the avx512bf16 variant would take them as zero: those steps must take the exact path, and
the normal elements beside them with it), signed zeros, the overflow tie at the top, inf and NaN payloads.
Each variant agrees with the torch reference (NaN as NaN: torch writes its own NaN bits) and bit for bit
with the baseline variant (NaN payloads included), and raises NonFiniteError exactly where the reference does.

With Rademacher noise z = +-1, s = x +- c exactly where the binade allows, so a coefficient of half a unit in
the last place puts every element of a binade on a tie, in both directions."""

import os
import pathlib
import platform
import shutil
import subprocess

import pytest
import torch

import zokernels
from zokernels import NonFiniteError, _cpu

from conftest import bits
from test_dispatch import X86_NEEDS, _cpuinfo_flags

pytestmark = pytest.mark.skipif(not _cpu.available(), reason="C++ extension not built")

MANTISSA = {torch.bfloat16: 7, torch.float16: 10}
BIAS = {torch.bfloat16: 127, torch.float16: 15}
TOP = {torch.bfloat16: 254, torch.float16: 30}  # the largest finite exponent field
QUIET = {torch.bfloat16: 0x40, torch.float16: 0x200}


def _from_bits(patterns: list[int], dtype: torch.dtype) -> torch.Tensor:
    """16-bit patterns as a tensor of dtype, a little ragged: not a whole number of 32-element steps."""
    patterns = patterns + patterns[:7]
    return torch.tensor([p - 0x10000 if p >= 0x8000 else p for p in patterns], dtype=torch.int16).view(dtype)


def _binade(exponent: int, dtype: torch.dtype) -> torch.Tensor:
    """Every value with this exponent field, both signs (exponent 0: the subnormals and the zeros)."""
    m = MANTISSA[dtype]
    return _from_bits([(sign << 15) | (exponent << m) | f for sign in (0, 1) for f in range(1 << m)], dtype)


def _half_ulp(exponent: int, dtype: torch.dtype) -> float:
    return 2.0 ** (max(exponent, 1) - BIAS[dtype] - MANTISSA[dtype] - 1)


def _cases(dtype: torch.dtype):
    """(name, weights, coefficients): each coefficient is one K=1 update, the pair one K=2 update."""
    for e in (0, 1, BIAS[dtype], TOP[dtype]):
        half = _half_ulp(e, dtype)
        for name, c in (("tie", half), ("above", half * (1 + 2**-16)), ("below", half * (1 - 2**-17))):
            yield f"{name} e={e}", _binade(e, dtype), [c, -c]
    # float32 denormal sums: x = +-0 plus a denormal; and a few denormal results among normal ones
    zeros = _from_bits([0x0000, 0x8000] * 20, dtype)
    for i, c in enumerate((2.0**-149, 2.0**-130, 3 * 2.0**-140, 0.0, -0.0)):
        yield f"zeros {i}", zeros.clone(), [c, c]
    mixed = (torch.randn(300, generator=torch.Generator().manual_seed(3)) * 1e-3).to(dtype)
    mixed[::37] = 0.0
    yield "normal beside denormal", mixed, [2.0**-140, 2.0**-141]
    # inf, NaN payloads (quiet and signaling, both signs), the largest finite values; 1.0 leaves them as they are
    m = MANTISSA[dtype]
    inf = ((1 << (15 - m)) - 1) << m
    specials = [inf, inf | 0x8000, inf | QUIET[dtype], inf | QUIET[dtype] | 1, inf | 1, inf | 0x8001,
                0xFFFF, 0x7FFF, inf - 1, (inf - 1) | 0x8000, 0x3C00, 0x0001]
    yield "specials", _from_bits(specials * 3, dtype), [1.0, 2.0**-20]
    yield "overflow tie", _from_bits(specials * 3, dtype), [_half_ulp(TOP[dtype], dtype), 1.0]


def _update(w: torch.Tensor, coeffs: list[float], backend: str) -> bool:
    """Applies the update to w; returns whether it raised NonFiniteError (after applying it)."""
    try:
        zokernels.update_([w], list(range(11, 11 + len(coeffs))), coeffs, keys=[5], offsets=[3], dist="rademacher",
                          backend=backend)
    except NonFiniteError:
        return True
    return False


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_every_variant_rounds_the_edges_like_the_reference(isa_restored, dtype):
    c = isa_restored
    checked = 0
    for name, w0, coeffs in _cases(dtype):
        for k in (1, 2):  # K = 2 also rounds into the float32 scratch between the seeds
            ref = w0.clone()
            ref_flag = _update(ref, coeffs[:k], "torch")
            baseline = None
            for isa in ["baseline"] + [i for i in c.isas() if i != "baseline"]:
                c.set_isa(isa)
                got = w0.clone()
                flag = _update(got, coeffs[:k], "cpu")
                where = (name, k, isa)
                assert flag == ref_flag, where
                assert torch.equal(torch.isnan(got), torch.isnan(ref)), where
                keep = ~torch.isnan(ref)
                assert torch.equal(bits(got)[keep], bits(ref)[keep]), where
                if baseline is None:
                    baseline = got
                else:
                    assert torch.equal(bits(got), bits(baseline)), where
                checked += 1
            if name.startswith("tie"):
                assert not torch.equal(bits(ref), bits(w0)), ("a tie moved nothing", name, k)
    assert checked >= 40


def test_the_edge_cases_reach_the_paths_they_are_for():
    """The cases are what they claim: the ties are exact float32 sums halfway between two neighbours, and the
    denormal cases give float32 denormal sums (s = x +- c in float32, as every backend computes it)."""
    tiny = torch.finfo(torch.float32).tiny
    for dtype in (torch.bfloat16, torch.float16):
        cases = {name: (w, coeffs) for name, w, coeffs in _cases(dtype)}
        for e in (0, 1, BIAS[dtype], TOP[dtype]):
            w, coeffs = cases[f"tie e={e}"]
            x, c = w.float(), torch.tensor(coeffs[0], dtype=torch.float32)
            # off a tie: a zero mantissa field whose sum falls into the binade below, and what overflows
            inside = ((w.view(torch.int16) & ((1 << MANTISSA[dtype]) - 1)) != 0) & (x + c).isfinite()
            assert ((x + c) - x).eq(c).all() and (x + c).to(dtype).float().ne(x + c)[inside].all(), (dtype, e)
        denormal = ["zeros 0", "zeros 1", "zeros 2", "normal beside denormal"]
        for name in denormal + (["tie e=0", "tie e=1"] if dtype == torch.bfloat16 else []):
            w, coeffs = cases[name]
            x, c = w.float(), torch.tensor(coeffs[0], dtype=torch.float32)
            s = torch.cat([x + c, x - c])
            assert ((s.abs() < tiny) & (s != 0)).any(), (dtype, name)


# The flags setup.py compiles each AVX-512 variant with.
AVX512_FLAGS = ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512cd"]
VARIANT_FLAGS = {"avx2": ["-mavx2", "-mf16c"], "avx512": AVX512_FLAGS, "avx512bf16": AVX512_FLAGS + ["-mavx512bf16"]}
ROOT = pathlib.Path(__file__).parents[1]


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64" or not os.path.exists("/proc/cpuinfo") or not shutil.which("g++"),
                    reason="x86-64 variants, g++")
@pytest.mark.parametrize("isa", list(VARIANT_FLAGS))
def test_vector_conversions_equal_the_contract_on_every_input(tmp_path, isa):
    """What the API cannot reach (a NaN sum with nonzero low bits, every float32 at once) the conversions still
    match: each vector variant's narrow_step over all 2^32 float32 patterns, widen_step over all 2^16 inputs."""
    if not X86_NEEDS[isa] <= _cpuinfo_flags():
        pytest.skip(f"this CPU cannot run the {isa} variant")
    exe = tmp_path / "exhaustive"
    subprocess.run(["g++", "-O2", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp",
                    *VARIANT_FLAGS[isa], f"-DZO_ISA={isa}", f"-I{ROOT / 'csrc'}", str(ROOT / "tests" /
                    "exhaustive_conversions.cpp"), "-o", str(exe)], check=True, timeout=300)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True, timeout=600).stdout.split()
    counts = dict(zip(out[::2], map(int, out[1::2])))
    assert counts == {"narrow_bf16": 0, "narrow_f16": 0, "widen_bf16": 0, "widen_f16": 0}
