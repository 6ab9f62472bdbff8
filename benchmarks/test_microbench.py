"""pytest-benchmark microbenchmarks (`make bench`); under `make test` each runs once as a smoke test.

Compare within one run: the zokernels groups against the `mezo` group at the same size.
"""

import pytest
import torch

import zokernels

N = 1 << 20
TENSORS = 8


def _params(dtype):
    return [torch.randn(N // TENSORS).to(dtype) for _ in range(TENSORS)]


def _mezo(params, seed):
    torch.manual_seed(seed)
    for p in params:
        p.add_(torch.normal(0, 1, p.shape, dtype=p.dtype), alpha=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_mezo_loop(benchmark, dtype):
    benchmark.group = f"perturb 1M {dtype}"
    benchmark(_mezo, _params(dtype), 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
def test_perturb_cpu(benchmark, dtype, dist):
    if "cpu" not in zokernels.backends():
        pytest.skip("C++ extension not built")
    benchmark.group = f"perturb 1M {dtype}"
    ps = _params(dtype)
    benchmark(zokernels.perturb_, ps, 1, 1e-3, keys=list(range(TENSORS)), dist=dist, backend="cpu")


def test_update_k16_cpu(benchmark):
    if "cpu" not in zokernels.backends():
        pytest.skip("C++ extension not built")
    benchmark.group = "update K=16, 1M float32"
    ps = _params(torch.float32)
    benchmark(zokernels.update_, ps, list(range(16)), [1e-4] * 16, keys=list(range(TENSORS)), backend="cpu")


def test_perturb_torch_reference_64k(benchmark):
    benchmark.group = "torch reference 64K float32"
    w = torch.randn(1 << 16)
    benchmark(zokernels.perturb_, w, 1, 1e-3, keys=0, backend="torch")
