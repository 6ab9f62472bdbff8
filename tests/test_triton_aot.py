"""The Triton kernels as an NVIDIA GPU would run them, checked on a machine without one.

Every launch that `noise` and `update_` make for a portable dist (kernel x dist x dtype x rounding, with
the launch options the launchers pass) is compiled ahead of time for sm_80 and sm_90; Triton's wheel
ships ptxas, so this needs no GPU. The PTX must hold nothing that could change a bit between the GPU
and the C++/torch backends (docs/noise.md):

  ftz      flush-to-zero of subnormals (e.g. libdevice's floor as cvt.rmi.ftz unless ftz reflection is off)
  fma      fused multiply-add (one rounding where the contract has two)
  approx   approximate ops (sqrt.approx, div.full, ex2.approx, ...)
  rounding float add/sub/mul without an explicit round-to-nearest (ptxas may contract an unrounded
           mul + add into an FMA; a .rn operation it never contracts)

and no kernel may scale tl.program_id in 32 bits (the element offset wraps past 2^33 elements). The SASS
(cuobjdump from Triton's wheel) of the unmasked update's main path must stay within a per-element
instruction budget for the variants that bound the kernels' speed on a GPU (SASS_BUDGET).

Spec version 2 (VERSION=2, with its table) is compiled for every dist in the noise kernel and in the update
kernel's bfloat16/stochastic variant, and for the Gaussian's bfloat16/nearest and float32 updates (budgeted):
the rounding code is shared with version 1, so these cover what version 2 changes (Philox-7, the 32-signs
Rademacher, the table Gaussian, the rounding bits' Philox-7).

Compiling needs Triton's real JIT, and the test session runs under TRITON_INTERPRET=1, so the compiles run once
per module in a subprocess (this file run as a script) with a fresh Triton cache: 116 compiles (masked and
unmasked launches; zokernels/triton/_aot.py, shared with benchmarks/triton_sass.py), about 2 minutes of CPU on
a quiet machine. gaussian-fast is outside the contract (approximate by design) and is not compiled here;
benchmarks/triton_sass.py and ../shared/tools/aot_check.py report it.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ARCHS = (80, 90)
ROOT = pathlib.Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------------------------ compiling
# (runs in the subprocess: no interpreter there)


def _compiled_here(kernel, version, dist, dtype, rounding):
    """Every portable variant of version 1; of version 2 the noise, the bfloat16/stochastic update of every dist
    and the Gaussian's bfloat16/nearest and float32 updates (SASS_BUDGET)."""
    import torch

    from zokernels import spec

    if dist not in spec.PORTABLE_DISTS:
        return False
    return version == 1 or kernel == "noise" or (dtype, rounding) == (torch.bfloat16, "stochastic") or (
        dist == "gaussian" and (dtype, rounding) in {(torch.bfloat16, "nearest"), (torch.float32, "nearest")})


def _compile_all():
    from zokernels.triton import _aot

    kernels, launches = _aot.record_launches(_compiled_here)
    out = {"kernels": sorted(kernels), "variants": [], "skipped": {}}
    for arch in ARCHS:
        reason = _aot.target_unusable(arch)
        if reason:
            out["skipped"][arch] = reason
            continue
        for name, args, kw in launches:
            compiled = _aot.compile_launch(kernels[name], args, kw, arch)
            constexprs = {k: v for k, v in _aot.launch_constexprs(kernels[name], kw).items() if k != "table_ptr"}
            out["variants"].append({"kernel": name, "arch": arch, "constexprs": constexprs,
                                    "num_warps": kw["num_warps"], "ptx": compiled.asm["ptx"],
                                    "ttir": compiled.asm["ttir"],
                                    "sass": _aot.figures(compiled.asm["cubin"], kw, constexprs)})
    return out


# --------------------------------------------------------------------------------------- checks


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton_cache"))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = tmp_path_factory.mktemp("aot") / "compiled.json"
    proc = subprocess.run([sys.executable, __file__, str(result)], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, f"compiling the kernels failed:\n{proc.stderr[-4000:]}"
    out = json.loads(result.read_text())
    if out["skipped"]:
        pytest.skip("; ".join(out["skipped"].values()))
    return out


def _label(v):
    from zokernels.triton import _aot

    variant = _aot.describe(v["kernel"], v["constexprs"])
    parts = [variant.pop("kernel"), f"v{variant.pop('version')}", *variant.values()]
    return "/".join(parts + ["masked" if v["constexprs"]["MASKED"] else "full"]) + f"@sm{v['arch']}"


_FLOAT = r"(f16|f16x2|bf16|bf16x2|f32|f64)"
_INSTRUCTION = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z][\w.]*)")
_BREAKS_BITS = {
    "ftz": lambda op: ".ftz" in op,
    "fma": lambda op: re.fullmatch(rf"(fma|mad)(\.\w+)*\.{_FLOAT}", op) is not None,
    "approx": lambda op: ".approx" in op or op.startswith("div.full"),
    "rounding": lambda op: (re.fullmatch(rf"(add|sub|mul)(\.\w+)*\.{_FLOAT}", op) is not None
                            and ".rn." not in op),
}


def ptx_opcodes(ptx: str) -> list[str]:
    """The opcode of every instruction (directives, labels, braces and comments skipped)."""
    ops = []
    for line in ptx.splitlines():
        m = _INSTRUCTION.match(line.split("//")[0])
        if m:
            ops.append(m.group(1))
    return ops


def test_ptx_scan_recognizes_what_breaks_bits():
    ptx = """
        cvt.rmi.ftz.f32.f32 	%r1, %r2;   // libdevice floor with ftz reflection on
        fma.rn.f32 	%r3, %r1, %r2, %r1;
        sqrt.approx.f32 	%r4, %r3;
        div.full.f32 	%r4, %r3, %r3;
        add.f32 	%r5, %r4, %r3;
        @%p1 mul.f32 	%r5, %r4, %r3;
        add.rn.f32 	%r5, %r4, %r3;
        mul.lo.s32 	%r6, %r7, %r8;
        cvt.rmi.f32.f32 	%r1, %r2;
    """
    ops = ptx_opcodes(ptx)
    assert {cat: sum(map(test, ops)) for cat, test in _BREAKS_BITS.items()} == {
        "ftz": 1, "fma": 1, "approx": 2, "rounding": 2}


def test_every_kernel_and_target_is_compiled(compiled):
    assert compiled["kernels"] and {v["kernel"] for v in compiled["variants"]} == set(compiled["kernels"])
    assert {v["arch"] for v in compiled["variants"]} == set(ARCHS)
    assert all(".target sm_%d" % v["arch"] in v["ptx"] for v in compiled["variants"])
    # full tiles run unmasked and partial ones masked: both are launched, so both are checked
    assert {(v["kernel"], v["constexprs"]["MASKED"]) for v in compiled["variants"]} == {
        (k, masked) for k in compiled["kernels"] for masked in (False, True)}


@pytest.mark.parametrize("category", sorted(_BREAKS_BITS))
def test_ptx_has_nothing_that_breaks_bits(compiled, category):
    offenders = {}
    for v in compiled["variants"]:
        found = sorted({op for op in ptx_opcodes(v["ptx"]) if _BREAKS_BITS[category](op)})
        if found:
            offenders[_label(v)] = found
    assert not offenders, f"{category} in the PTX: {offenders}"


def _gaussian(compiled, version):
    from zokernels.triton import noise as tn

    return [v for v in compiled["variants"]
            if v["constexprs"]["DIST"] == tn.DIST_CODES["gaussian"] and v["constexprs"]["VERSION"] == version]


def test_spec_gaussian_divides_and_takes_square_roots_correctly_rounded(compiled):
    gaussian = _gaussian(compiled, 1)
    assert len(gaussian) == 2 * 7 * len(ARCHS)  # (noise + 3 dtypes x 2 roundings) x (masked, unmasked)
    for v in gaussian:
        assert {"div.rn.f32", "sqrt.rn.f32"} <= set(ptx_opcodes(v["ptx"])), _label(v)


def test_spec_v2_gaussian_is_polynomial_without_division_or_square_root(compiled):
    gaussian = _gaussian(compiled, 2)
    assert len(gaussian) == 2 * 4 * len(ARCHS)  # (noise + 3 update variants) x (masked, unmasked)
    for v in gaussian:
        ops = set(ptx_opcodes(v["ptx"]))
        assert not {op for op in ops if op.startswith(("div.", "sqrt.", "lg2.", "ex2.", "sin.", "cos."))}, _label(v)


# SASS instructions per element on the main path of the unmasked update (K = 1, sm_90), at most: every update
# variant compiled here. The issue-rate model (zokernels/triton/_aot.py, ../shared/tools/aot_check.py's: H100, 128
# instructions per clock per SM, 3.35 TB/s) reaches full HBM bandwidth at 80 per element for float32 (8 bytes
# moved per element) and 40 for bfloat16 and float16 (4 bytes), if no pipe binds first. These pin what the
# kernels reach today (rounded up to a half) so that a change adding instructions to the hot path shows here;
# benchmarks/triton_sass.py prints every figure.
SASS_BUDGET = {  # (dtype, dist, rounding, version): instructions per element
    ("float32", "gaussian", "nearest", 1): 68.5,
    ("float32", "gaussian", "stochastic", 1): 68.5,
    ("bfloat16", "gaussian", "nearest", 1): 76.0,
    ("bfloat16", "gaussian", "stochastic", 1): 82.5,
    ("float16", "gaussian", "nearest", 1): 72.0,
    ("float16", "gaussian", "stochastic", 1): 100.0,
    ("float32", "rademacher", "nearest", 1): 21.0,
    ("float32", "rademacher", "stochastic", 1): 21.0,
    ("bfloat16", "rademacher", "nearest", 1): 27.0,
    ("bfloat16", "rademacher", "stochastic", 1): 35.5,
    ("float16", "rademacher", "nearest", 1): 23.5,
    ("float16", "rademacher", "stochastic", 1): 52.0,
    ("float32", "uniform", "nearest", 1): 26.0,
    ("float32", "uniform", "stochastic", 1): 26.0,
    ("bfloat16", "uniform", "nearest", 1): 32.5,
    ("bfloat16", "uniform", "stochastic", 1): 40.0,
    ("float16", "uniform", "nearest", 1): 29.0,
    ("float16", "uniform", "stochastic", 1): 56.5,
    ("float32", "gaussian", "nearest", 2): 39.5,
    ("bfloat16", "gaussian", "nearest", 2): 46.5,
    ("bfloat16", "gaussian", "stochastic", 2): 49.5,
    ("bfloat16", "rademacher", "stochastic", 2): 30.5,
    ("bfloat16", "uniform", "stochastic", 2): 33.0,
}


def test_update_hot_path_stays_within_its_sass_budget(compiled):
    from zokernels.triton import _aot

    found = {}
    for v in compiled["variants"]:
        if v["kernel"] == "_update_kernel" and v["arch"] == 90 and not v["constexprs"]["MASKED"]:
            if v["sass"] is None:
                pytest.skip("Triton's wheel ships no cuobjdump here")
            d = _aot.describe(v["kernel"], v["constexprs"])
            found[(d["dtype"], d["dist"], d["rounding"], d["version"])] = v["sass"]["instructions_per_element"]
    assert set(found) == set(SASS_BUDGET)
    over = {k: (round(n, 2), SASS_BUDGET[k]) for k, n in found.items() if n > SASS_BUDGET[k]}
    assert not over, f"SASS instructions per element (found, budget): {over}"


def test_launches_pass_the_warps_the_kernels_assume(compiled):
    """The flag's max runs over the groups a thread holds, laid out for noise.NUM_WARPS warps per program."""
    from zokernels.triton import noise as tn

    assert {v["num_warps"] for v in compiled["variants"]} == {tn.NUM_WARPS}


def test_program_id_is_widened_to_64_bits_before_any_arithmetic(compiled):
    """The only use of tl.program_id is its sign extension to i64: a 32-bit pid * BLOCK wraps once a
    launch covers 2^33 elements (BLOCK groups of 4), and the noise past that point was garbage."""
    offenders = {}
    for v in compiled["variants"]:
        ttir = [line.split(" loc(")[0].strip() for line in v["ttir"].splitlines()]
        for pid in (m.group(1) for line in ttir if (m := re.match(r"(%[\w.]+) = tt\.get_program_id", line))):
            uses = [line for line in ttir if re.search(rf"{re.escape(pid)}\b", line)
                    and not line.startswith(f"{pid} = ")]
            bad = [u for u in uses if not re.fullmatch(rf"%[\w.]+ = arith\.extsi {re.escape(pid)} : i32 to i64", u)]
            if bad or not uses:
                offenders[_label(v)] = bad or ["program id unused?"]
    assert not offenders, offenders


if __name__ == "__main__":
    pathlib.Path(sys.argv[1]).write_text(json.dumps(_compile_all()))
