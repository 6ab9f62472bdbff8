"""Shared fixtures. Triton runs in its interpreter on CPU tensors unless a CUDA GPU is present;
the variable must be set before triton is first imported."""

import os
import pathlib
import signal
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import zokernels  # noqa: E402
from zofed.transports.children import free_port  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
PORTABLE_DISTS = ["gaussian", "rademacher", "uniform"]


def available_backends() -> list[str]:
    return zokernels.backends()


def device_for(backend: str) -> str:
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def torchrun(script, out: pathlib.Path, *args: str, nproc: int = 2, env: dict | None = None,
             timeout: float = 600) -> str:
    """Run `script` on nproc gloo processes (nproc=1: plain python) on 127.0.0.1, one thread each, its output
    in out/log.txt; kill its whole process group whatever happens, also after a clean exit (what the script
    started and left running). Returns the log; fails with its tail."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port())] if nproc > 1 else [sys.executable]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path), **(env or {}))
    with open(out / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd + [str(script), *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # the group is empty: nothing was left behind
                pass
            proc.wait()
    text = (out / "log.txt").read_text()
    assert code == 0, text[-3000:]
    return text


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
