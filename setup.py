"""Builds the C++ CPU backend zokernels._C (pybind11, OpenMP, no torch headers).

ZOKERNELS_PORTABLE=1 builds for a generic x86-64/aarch64 CPU instead of the building machine.
The extension is optional: without a working compiler `pip install` still succeeds, `import zokernels`
works, and a call that needs the C++ backend explains how to get it (`make build` insists on it).
Flags never include -ffast-math: the noise contract needs IEEE float32 behaviour and no FMA
contraction (-ffp-contract=off), so every build gives the same bits.
"""
import os

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup

compile_args = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"]
if os.environ.get("ZOKERNELS_PORTABLE", "0") != "1":
    compile_args.append("-march=native")

setup(
    ext_modules=[
        Pybind11Extension(
            "zokernels._C",
            ["csrc/zo_kernels.cpp"],
            include_dirs=["csrc"],
            cxx_std=17,
            extra_compile_args=compile_args,
            extra_link_args=["-fopenmp"],
            depends=["csrc/zo_noise.h"],
            optional=True,
        )
    ],
)
