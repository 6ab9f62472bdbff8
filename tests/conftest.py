"""Shared fixtures. Triton runs in its interpreter on CPU tensors unless a CUDA GPU is present;
the variable must be set before triton is first imported."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import zokernels  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
PORTABLE_DISTS = ["gaussian", "rademacher", "uniform"]


def available_backends() -> list[str]:
    return zokernels.backends()


def device_for(backend: str) -> str:
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bit patterns, for exact comparisons (NaN-safe, -0.0 distinct from 0.0)."""
    return t.contiguous().view({4: torch.int32, 2: torch.int16}[t.element_size()]).cpu()


@pytest.fixture(params=available_backends())
def backend(request):
    return request.param


def pytest_report_header(config):
    return f"zokernels backends: {available_backends()}"


@pytest.fixture
def isa_restored():
    """The C++ extension, with its ISA variant put back after a test that switches it (set_isa)."""
    from zokernels import _cpu

    c = _cpu.require()
    before = c.isa()
    yield c
    c.set_isa(before)
