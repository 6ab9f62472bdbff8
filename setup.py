"""Builds the C++ CPU backend zokernels._C (pybind11, OpenMP, no torch headers).

Nothing is compiled for the building machine's CPU (no -march=native), so a wheel runs on every CPU
of its architecture. The hot loops (csrc/zo_tiles.cpp) are compiled once per instruction set, the
baseline of the architecture plus AVX2 (with F16C, which every AVX2 CPU has: fp16 conversions), AVX-512
and AVX-512 with BF16 (avx512bf16: its one-instruction float32 -> bfloat16 rounding) variants on x86-64,
and the extension picks the fastest the CPU supports when it is imported
(ZOKERNELS_CPU_ISA=baseline|avx2|avx512|avx512bf16 forces one).
Every variant gives the same bits: flags never include -ffast-math, and -ffp-contract=off forbids
FMA contraction, so each float operation is one IEEE float32 operation on every path.
-fno-trapping-math changes no value (nothing here reads floating-point exception flags); it lets
the compiler evaluate both sides of a float select, which is what vectorizes the Gaussian's loops
without AVX-512 masks (4x faster on AVX2).
The extension is optional: without a working compiler `pip install` still succeeds, `import zokernels`
works, and a call that needs the C++ backend explains how to get it (`make build` insists on it).
"""
import os
import platform

from pybind11.setup_helpers import Pybind11Extension, build_ext, has_flag
from setuptools import setup

TILES = "csrc/zo_tiles.cpp"
# The features each variant is compiled for; csrc/zo_kernels.cpp (VARIANTS) checks the CPU for the same.
AVX512 = ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512cd"]
X86_VARIANTS = {
    "avx2": ["-mavx2", "-mf16c"],
    "avx512": AVX512,
    "avx512bf16": [*AVX512, "-mavx512bf16"],
}
X86 = platform.machine().lower() in ("x86_64", "amd64")


class BuildExt(build_ext):
    """Compiles the tile loops once per instruction set, each into its own object, then the extension."""

    def build_extension(self, ext):
        variants = {"baseline": [], **(X86_VARIANTS if X86 else {})}
        if X86 and not has_flag(self.compiler, "-mavx512bf16"):  # before GCC 10 / clang 9: no such variant,
            del variants["avx512bf16"]  # rather than no extension
        elif X86:
            ext.define_macros.append(("ZO_AVX512BF16", "1"))  # the bindings offer it (csrc/zo_kernels.cpp)
        ext.extra_objects = [
            obj
            for name, flags in variants.items()
            for obj in self.compiler.compile(
                [TILES], output_dir=os.path.join(self.build_temp, name), macros=[("ZO_ISA", name)],
                include_dirs=ext.include_dirs, extra_postargs=[*ext.extra_compile_args, *flags])
        ]
        super().build_extension(ext)


setup(
    ext_modules=[
        Pybind11Extension(
            "zokernels._C",
            ["csrc/zo_kernels.cpp"],
            include_dirs=["csrc"],
            define_macros=[("ZO_X86_VARIANTS", "1")] if X86 else [],
            cxx_std=17,
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"],
            extra_link_args=["-fopenmp"],
            depends=[TILES, "csrc/zo_tiles.h", "csrc/zo_noise.h", "csrc/zo_gaussian_table.h"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
