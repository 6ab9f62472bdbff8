"""A portable build (ZOKERNELS_PORTABLE=1: no -march=native, so no AVX-512 Philox path and other
vector widths) gives the same bits as the native build and the golden vectors."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import zokernels
from zokernels import _cpu

from conftest import bits

ROOT = pathlib.Path(__file__).parents[1]


@pytest.mark.slow
@pytest.mark.skipif(not _cpu.available(), reason="C++ extension not built")
def test_portable_build_matches_native(tmp_path):
    env = dict(os.environ, ZOKERNELS_PORTABLE="1")
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
                    "--build-temp", str(tmp_path / "tmp")], cwd=ROOT, env=env, check=True, capture_output=True,
                   timeout=900)
    so = next((tmp_path / "lib" / "zokernels").glob("_C*.so"))
    spec = importlib.util.spec_from_file_location("_C", so)
    portable = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(portable)
    native = _cpu.require()
    assert portable.spec_constants() == native.spec_constants()

    for dist, code in _cpu.DIST_CODES.items():
        for offset in (0, 3, 2**32 - 7):
            a, b = torch.empty(10_007), torch.empty(10_007)
            native.noise(a.data_ptr(), a.numel(), offset, 2**64 - 3, 11, code, 2)
            portable.noise(b.data_ptr(), b.numel(), offset, 2**64 - 3, 11, code, 2)
            assert torch.equal(bits(a), bits(b)), (dist, offset)
    for dtype, code in _cpu.DTYPE_CODES.items():
        for rounding in (0, 1):
            w = (torch.randn(5003, generator=torch.Generator().manual_seed(3)) * 1e-3).to(dtype)
            v = w.clone()
            args = ([w.numel()], [1], [4], [code], [5, 6, 7], [0.1, -1e-4, 3e-3], 0, rounding, 2)
            native.update([w.data_ptr()], *args)
            portable.update([v.data_ptr()], *args)
            assert torch.equal(bits(w), bits(v)), (dtype, rounding)
    assert torch.equal(bits(zokernels.noise(64, 1, backend="torch")), bits(zokernels.noise(64, 1)))
