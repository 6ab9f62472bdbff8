"""The Triton kernels compiled ahead of time for NVIDIA targets and their SASS counted, with no GPU.

Triton's wheel ships ptxas and cuobjdump, so a launch compiles for sm_80 / sm_90 here and its machine code can
be read. tests/test_triton_aot.py scans what this compiles and caps the instruction counts;
benchmarks/triton_sass.py records them with the modelled H100 bandwidth. Compiling needs Triton's real JIT: call
this in a process without TRITON_INTERPRET=1.

The bandwidth model is ../shared/tools/aot_check.py's (an issue-rate upper bound, not a measurement): the SASS of
the main path (up to the last EXIT before the first RET; the IEEE division and square root slow paths are
subroutines after it) per element, by pipe, held against assumed per-SM rates of an H100 SXM and its HBM.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import tempfile

ARCHS = (80, 90)

# -------------------------------------------------------------------------------------------- launches


def record_launches(wanted) -> tuple[dict, list]:
    """(kernels by name, [(kernel name, positional args, keyword args)]) of the launches the launchers make
    for every (kernel, version, dist, dtype, rounding) that wanted(...) accepts (kernel "noise" or "update";
    dtype and rounding None for noise; gaussian-fast in version 1 only), recorded by calling them on CPU
    tensors with the kernels swapped for recorders. The tensors cover one tile whole and two in part, so both
    the unmasked launch (full tiles) and the masked one (a tensor's partial first and last tiles) are
    recorded."""
    import torch

    from .. import spec
    from . import noise as tn

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
    try:
        for version in spec.SPEC_VERSIONS:
            for dist in tn.DIST_CODES:
                if dist not in spec.PORTABLE_DISTS and version != 1:
                    continue
                if wanted("noise", version, dist, None, None):
                    tn.noise(torch.empty(numel), offset, 1, 0, dist, version)
                for dtype in tn._DTYPE_CODES:
                    for rounding in ("nearest", "stochastic"):
                        if wanted("update", version, dist, dtype, rounding):
                            tn.update_([torch.zeros(numel, dtype=dtype)], [1], [0.5], [0], [offset], dist, rounding,
                                       None, version)
    finally:
        for name, kernel in kernels.items():
            setattr(tn, name, kernel)
    return kernels, launches


def launch_constexprs(kernel, kw) -> dict:
    """The constexprs of a launch: those its keywords name, and the defaults of the parameters it leaves out
    (a version 1 launch passes no VERSION and no table_ptr)."""
    given = {p.name: kw[p.name] for p in kernel.params if p.is_constexpr and p.name in kw}
    defaults = {p.name: p.default for p in kernel.params
                if p.name not in kw and p.default is not inspect.Parameter.empty}
    return {**defaults, **given}


def describe(kernel_name: str, constexprs: dict) -> dict:
    """A launch's variant in words: kernel ("noise", "update"), version, dist, and for the update dtype and
    rounding."""
    from . import noise as tn

    dists = {code: name for name, code in tn.DIST_CODES.items()}
    c = constexprs
    out = {"kernel": kernel_name.strip("_").removesuffix("_kernel"), "version": c["VERSION"], "dist": dists[c["DIST"]]}
    if "DTYPE" in c:
        dtypes = {code: str(dtype).replace("torch.", "") for dtype, code in tn._DTYPE_CODES.items()}
        out.update(dtype=dtypes[c["DTYPE"]], rounding="stochastic" if c["STOCHASTIC"] else "nearest")
    return out


def bytes_per_element(constexprs: dict) -> int:
    """HBM bytes a launch moves per element: the noise writes float32; the update reads and writes the
    parameter dtype."""
    if "DTYPE" not in constexprs:
        return 4
    return 2 * {0: 4, 1: 2, 2: 2}[constexprs["DTYPE"]]


def elements_per_thread(kw: dict) -> int:
    """Elements per thread of a launch with these keyword arguments (Triton's default: 4 warps)."""
    return 4 * kw["BLOCK"] // (32 * kw.get("num_warps", 4))


# ------------------------------------------------------------------------------------------- compiling


def compile_launch(kernel, args, kw, arch: int):
    """What a launch with these arguments compiles to on a GPU of this capability (Triton's CompiledKernel:
    asm["ttir"], asm["ptx"], asm["cubin"]): pointers aligned to 16 bytes (as CUDA allocations are),
    constexprs from the keywords that name constexpr parameters (and the defaults of those not given),
    tensors passed by keyword as arguments, and the other keywords as compile options."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import mangle_type

    constexprs = launch_constexprs(kernel, kw)
    options = {k: v for k, v in kw.items() if k not in kernel.arg_names}
    values = {**dict(zip(kernel.arg_names, args)), **{k: v for k, v in kw.items() if k in kernel.arg_names}}
    signature = {name: "constexpr" if name in constexprs else mangle_type(values[name]) for name in kernel.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
             if signature[name].startswith("*")}
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                          options=options)


def target_unusable(arch: int) -> str | None:
    """Why the installed Triton cannot compile for this target here (None when it can)."""
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def probe(x_ptr):
        tl.store(x_ptr, tl.load(x_ptr) + 1.0)

    try:
        compile_launch(probe, (torch.zeros(1),), {"enable_fp_fusion": False}, arch)
    except Exception as exc:  # any failure here is the toolchain's, not the project's
        return f"installed triton cannot compile for sm_{arch} here: {type(exc).__name__}: {exc}"[:300]
    return None


# ------------------------------------------------------------------------------------------------ SASS


def sass(cubin: bytes) -> str | None:
    """The cubin's resource usage and SASS as cuobjdump prints them; None without the cuobjdump Triton's wheel
    ships."""
    from triton import knobs

    tool = knobs.nvidia.cuobjdump.path
    if not tool or not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, "-res-usage", "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout


def main_path(sass_text: str) -> list[str]:
    """The opcodes (NOPs aside) on the kernel's main path: up to the last EXIT before the first RET."""
    ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass_text)
    first_ret = next((i for i, op in enumerate(ops) if op.startswith("RET")), len(ops))
    end = max((i + 1 for i, op in enumerate(ops[:first_ret]) if op == "EXIT"), default=first_ret)
    return [op for op in ops[:end] if op != "NOP"]


def figures(cubin: bytes, kw: dict, constexprs: dict) -> dict | None:
    """What the unmasked main path of a launch's cubin costs: SASS instructions per element, the same by pipe,
    registers per thread, local-memory (spill) instructions on the main path, and the H100 model's bound and
    fraction of HBM bandwidth. None without cuobjdump."""
    text = sass(cubin)
    if text is None:
        return None
    ops = main_path(text)
    elements = elements_per_thread(kw)
    return {"instructions_per_element": len(ops) / elements,
            "pipes_per_element": {p: n / elements for p, n in sorted(pipe_mix(ops).items())},
            "registers": int(re.search(r"REG:(\d+)", text).group(1)),
            "spill_instructions": sum(op.startswith(("LDL", "STL")) for op in ops),
            "elements_per_thread": elements,
            **h100_model(ops, elements, bytes_per_element(constexprs))}


# -------------------------------------------------------------------------------- the bandwidth model

# aot_check's pipe classes (GH100: FMA-heavy = FP32 + IMAD, FMA-lite = FP32, ALU = integer, logic, compare,
# select, move; XU = MUFU and conversions); every instruction counts toward the issue limit.
_FP32 = ("FFMA", "FMUL", "FADD")
_IMAD = ("IMAD", "IMUL", "IDP")
_XU = ("MUFU", "F2I", "I2F.", "F2F", "FRND", "I2F")
_ALU = ("LOP3", "IADD3", "ISETP", "FSETP", "FSEL", "SEL", "SHF", "LEA", "MOV", "PRMT", "SGXT", "PLOP3", "P2R",
        "R2P", "VIADD", "I2FP", "F2FP", "FCHK", "IABS", "IMNMX", "VIMNMX", "FMNMX", "BMSK", "POPC", "FLO", "BREV",
        "CS2R", "LOP", "ISCADD", "IADD", "SHL", "SHR", "FSET", "ISET", "HADD2", "HMUL2", "HFMA2")
# H100 SXM: SM-cycles per second (67e12 FP32 FLOP/s over 128 FMA lanes x 2), HBM bytes per second, and
# thread-instructions per clock per SM (assumed) of the issue slot and of each pipe.
SM_CYCLES = 67e12 / (2 * 128)
HBM = 3.35e12
RATE = {"issue": 128, "alu": 64, "imad": 64, "fma_pipes": 128, "xu": 16}


def pipe(op: str) -> str:
    if op.startswith(_IMAD):
        return "imad"
    if op.startswith(_FP32):
        return "fp32"
    if op.startswith(("I2FP", "F2FP")):
        return "alu"
    if op.startswith(_XU):
        return "xu"
    if op.startswith("U"):
        return "uniform"
    if op.startswith(_ALU):
        return "alu"
    return "other"  # memory, barriers, branches, S2R, LDC, ...


def pipe_mix(ops: list[str]) -> dict[str, int]:
    mix: dict[str, int] = {}
    for op in ops:
        mix[pipe(op)] = mix.get(pipe(op), 0) + 1
    return mix


def h100_model(ops: list[str], elements: int, bytes_per_elem: int) -> dict:
    """The limit (issue slot or pipe) that bounds a main path of these opcodes covering `elements` per thread,
    and the fraction of H100 HBM bandwidth it leaves (1 where the memory bounds it)."""
    per = {k: v / elements for k, v in pipe_mix(ops).items()}
    cycles = {"issue": len(ops) / elements / RATE["issue"], "alu": per.get("alu", 0) / RATE["alu"],
              "imad": per.get("imad", 0) / RATE["imad"],
              "fma_pipes": (per.get("fp32", 0) + per.get("imad", 0)) / RATE["fma_pipes"],
              "xu": per.get("xu", 0) / RATE["xu"]}
    bound = max(cycles, key=cycles.get)
    return {"bound": bound, "hbm_fraction": min(1.0, SM_CYCLES / cycles[bound] / (HBM / bytes_per_elem))}
