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
kernel's bfloat16/stochastic variant: the rounding code is shared with version 1, so these cover what
version 2 changes (Philox-7, the 32-signs Rademacher, the table Gaussian, the rounding bits' Philox-7).

Compiling needs Triton's real JIT, and the test session runs under TRITON_INTERPRET=1, so the
compiles run once per module in a subprocess (this file run as a script) with a fresh Triton cache:
108 compiles (masked and unmasked launches), about 100 s of CPU on a quiet machine. gaussian-fast is outside the contract (approximate by design) and is
not compiled here; ../shared/tools/aot_check.py reports it.
"""

import inspect
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


def _recorded_launches():
    """(kernel name, positional args, keyword args) of every launch the launchers make for a portable
    dist, one per variant, recorded by calling them on CPU tensors with the kernels swapped for
    recorders. The tensors cover one tile whole and two in part, so both the unmasked launch (full
    tiles) and the masked one (a tensor's partial first and last tiles) are recorded."""
    import torch

    from zokernels import spec
    from zokernels.triton import noise as tn

    launches = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kw: launches.append((self.name, args, kw))

    kernels = {name: getattr(tn, name) for name in vars(tn) if name.endswith("_kernel")}
    for name in kernels:
        setattr(tn, name, Recorder(name))
    numel, offset = 8 * tn.BLOCK_G + 8, 4  # vector-aligned groups: a multiple of 4
    every = [(dtype, rounding) for dtype in tn._DTYPE_CODES for rounding in ("nearest", "stochastic")]
    v2_only = [(torch.bfloat16, "stochastic")]
    try:
        for version in spec.SPEC_VERSIONS:
            for dist in spec.PORTABLE_DISTS:
                tn.noise(torch.empty(numel), offset, 1, 0, dist, version)
                for dtype, rounding in every if version == 1 else v2_only:
                    tn.update_([torch.zeros(numel, dtype=dtype)], [1], [0.5], [0], [offset], dist, rounding, None,
                               version)
    finally:
        for name, kernel in kernels.items():
            setattr(tn, name, kernel)
    return kernels, launches


def _launch_constexprs(kernel, kw):
    """The constexprs of a launch: those its keywords name, and the defaults of the parameters it leaves out
    (a version 1 launch passes no VERSION and no table_ptr)."""
    given = {p.name: kw[p.name] for p in kernel.params if p.is_constexpr and p.name in kw}
    defaults = {p.name: p.default for p in kernel.params if p.name not in kw and p.default is not inspect.Parameter.empty}
    return {**defaults, **given}


def _compile(kernel, args, kw, arch):
    """What a launch with these arguments compiles to on a GPU of this capability: pointers aligned
    to 16 bytes (as CUDA allocations are), constexprs from the keywords that name constexpr parameters (and
    the defaults of those not given), tensors passed by keyword as arguments, and the other keywords as
    compile options."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import mangle_type

    constexprs = _launch_constexprs(kernel, kw)
    options = {k: v for k, v in kw.items() if k not in kernel.arg_names}
    values = {**dict(zip(kernel.arg_names, args)), **{k: v for k, v in kw.items() if k in kernel.arg_names}}
    signature = {name: "constexpr" if name in constexprs else mangle_type(values[name]) for name in kernel.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
             if signature[name].startswith("*")}
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                              options=options)
    return compiled.asm


def _target_unusable(arch):
    """Why the installed Triton cannot compile for this target here (None when it can)."""
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def probe(x_ptr):
        tl.store(x_ptr, tl.load(x_ptr) + 1.0)

    try:
        _compile(probe, (torch.zeros(1),), {}, arch)
    except Exception as exc:  # any failure here is the toolchain's, not the project's
        return f"installed triton cannot compile for sm_{arch} here: {type(exc).__name__}: {exc}"[:300]
    return None


def _sass_main_path(cubin: bytes) -> int | None:
    """SASS instructions (NOPs aside) on the kernel's main path: up to the last EXIT before the first RET
    (the IEEE division / square root slow paths are subroutines placed after it), as
    ../shared/tools/aot_check.py counts them. None without the cuobjdump Triton's wheel ships."""
    import tempfile

    from triton import knobs

    tool = knobs.nvidia.cuobjdump.path
    if not tool or not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass)
    first_ret = next((i for i, op in enumerate(ops) if op.startswith("RET")), len(ops))
    end = max((i + 1 for i, op in enumerate(ops[:first_ret]) if op == "EXIT"), default=first_ret)
    return sum(op != "NOP" for op in ops[:end])


def _compile_all():
    kernels, launches = _recorded_launches()
    out = {"kernels": sorted(kernels), "variants": [], "skipped": {}}
    for arch in ARCHS:
        reason = _target_unusable(arch)
        if reason:
            out["skipped"][arch] = reason
            continue
        for name, args, kw in launches:
            asm = _compile(kernels[name], args, kw, arch)
            constexprs = {k: v for k, v in _launch_constexprs(kernels[name], kw).items() if k != "table_ptr"}
            out["variants"].append({"kernel": name, "arch": arch, "constexprs": constexprs,
                                    "ptx": asm["ptx"], "ttir": asm["ttir"],
                                    "sass_main_path": _sass_main_path(asm["cubin"])})
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
    from zokernels.triton import noise as tn

    names = {code: name for name, code in tn.DIST_CODES.items()}
    dtypes = {code: str(dtype).replace("torch.", "") for dtype, code in tn._DTYPE_CODES.items()}
    c = v["constexprs"]
    parts = [v["kernel"], f"v{c['VERSION']}", dtypes.get(c.get("DTYPE"), ""), names[c["DIST"]],
             {True: "stochastic", False: "nearest"}.get(c.get("STOCHASTIC"), ""), "masked" if c["MASKED"] else "full"]
    return "/".join(p for p in parts if p) + f"@sm{v['arch']}"


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
    assert len(gaussian) == 2 * 2 * len(ARCHS)  # (noise + 1 update variant) x (masked, unmasked)
    for v in gaussian:
        ops = set(ptx_opcodes(v["ptx"]))
        assert not {op for op in ops if op.startswith(("div.", "sqrt.", "lg2.", "ex2.", "sin.", "cos."))}, _label(v)


# SASS instructions per element on the main path of the unmasked update (K = 1, sm_90), at most. The issue-rate
# model of ../shared/tools/aot_check.py (H100: 128 instructions per clock per SM, 3.35 TB/s) reaches full HBM
# bandwidth at 80 per element for float32 (8 bytes moved per element) and 40 for bfloat16 (4 bytes). These
# pin what the kernels reach today so that a change adding instructions to the hot path shows here.
SASS_BUDGET = {  # (dtype, dist, rounding, version): instructions per element
    ("float32", "gaussian", "nearest", 1): 80.0,
    ("bfloat16", "gaussian", "nearest", 1): 81.0,
    ("bfloat16", "gaussian", "stochastic", 1): 89.0,
    ("bfloat16", "gaussian", "stochastic", 2): 60.0,  # the one update variant compiled for version 2
}


def test_update_hot_path_stays_within_its_sass_budget(compiled):
    from zokernels.triton import noise as tn

    dtypes = {code: str(dtype).replace("torch.", "") for dtype, code in tn._DTYPE_CODES.items()}
    dists = {code: name for name, code in tn.DIST_CODES.items()}
    elements_per_thread = 4 * tn.BLOCK_G // (32 * 4)  # num_warps: Triton's default 4 (the launches set none)
    found = {}
    for v in compiled["variants"]:
        c = v["constexprs"]
        if v["kernel"] == "_update_kernel" and v["arch"] == 90 and not c["MASKED"]:
            key = (dtypes[c["DTYPE"]], dists[c["DIST"]], "stochastic" if c["STOCHASTIC"] else "nearest", c["VERSION"])
            if key in SASS_BUDGET:
                if v["sass_main_path"] is None:
                    pytest.skip("Triton's wheel ships no cuobjdump here")
                found[key] = v["sass_main_path"] / elements_per_thread
    assert set(found) == set(SASS_BUDGET)
    over = {k: (round(n, 2), SASS_BUDGET[k]) for k, n in found.items() if n > SASS_BUDGET[k]}
    assert not over, f"SASS instructions per element (found, budget): {over}"


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
