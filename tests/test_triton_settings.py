"""Launch settings a GPU needs for bit-exactness, checked on the launchers (no GPU needed), and the
same kernels on a real GPU (marked gpu; skipped where no CUDA device exists)."""

import json
import pathlib

import pytest
import torch

import zokernels
from zokernels import spec

from conftest import bits

tn = pytest.importorskip("zokernels.triton.noise")

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / f"noise_v{spec.SPEC_VERSION}.json").read_text())


class _Recorder:
    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append(kw)


@pytest.mark.parametrize("launch", ["noise", "update"])
def test_every_launch_disables_fp_fusion_and_ftz(monkeypatch, launch):
    """No FMA contraction, and libdevice without flush-to-zero (its floor would flush subnormals);
    tests/test_triton_aot.py checks the PTX these options give."""
    rec = _Recorder()
    monkeypatch.setattr(tn, "_noise_kernel", rec)
    monkeypatch.setattr(tn, "_update_kernel", rec)
    if launch == "noise":
        tn.noise(torch.empty(10), 0, 1, 0, "gaussian")
    else:
        tn.update_([torch.ones(10), torch.ones(3).half(), torch.ones(2).bfloat16()], [1], [0.1], [0, 1, 2], [0, 0, 0],
                   "gaussian", "nearest")
    assert rec.calls and all(kw["enable_fp_fusion"] is False and kw["enable_reflect_ftz"] is False
                             for kw in rec.calls)
    if launch == "update":
        assert sorted(kw["DTYPE"] for kw in rec.calls) == [0, 1, 2]  # one launch per dtype, not per tensor


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("case", GOLDEN["noise"], ids=lambda c: f"{c['dist']}-s{c['seed']}-o{c['offset']}")
def test_gpu_noise_matches_golden(case):
    n = len(case["bits"].split())
    z = zokernels.noise(n, case["seed"], key=case["key"], offset=case["offset"], dist=case["dist"], device="cuda")
    got = " ".join(f"{int(v) & 0xFFFFFFFF:08x}" for v in bits(z))
    assert got == case["bits"]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_gpu_large_update_matches_cpu(dtype, rounding):
    w = (torch.randn(3_000_001, generator=torch.Generator().manual_seed(0)) * 0.02).to(dtype)
    g = w.cuda()
    seeds, coeffs = [1, 2**64 - 2, 3], [1e-3, -2e-3, 5e-4]
    zokernels.update_(w, seeds, coeffs, keys=9, offsets=2**32 - 7, rounding=rounding)
    zokernels.update_(g, seeds, coeffs, keys=9, offsets=2**32 - 7, rounding=rounding)
    assert torch.equal(bits(g), bits(w))


@pytest.mark.gpu
@gpu
def test_gpu_noise_past_2_to_the_33_elements_matches_cpu():
    """One launch over more than 2^33 elements (program ids past 2^23 at 1024 elements each), where a
    32-bit program_id * BLOCK wrapped: its last elements, across the 2^33 boundary, must equal the
    same elements that the CPU backend draws cheaply at an offset."""
    n, tail = 2**33 + 4096, 8192
    if torch.cuda.mem_get_info()[0] < 4 * n + 2**30:
        pytest.skip("needs 33 GiB of free GPU memory")
    z = zokernels.noise(n, 7, key=3, device="cuda")
    got = z[-tail:].cpu()
    del z
    assert torch.equal(bits(got), bits(zokernels.noise(tail, 7, key=3, offset=n - tail, device="cpu")))


@pytest.mark.gpu
@gpu
def test_gpu_ptx_has_no_fma_and_uses_rn_div_sqrt():
    out = torch.empty(1024, device="cuda")
    args = torch.tensor([1024, 0, 1, 0, 0, 1], dtype=torch.int64, device="cuda")  # numel offset seed key tile stride
    compiled = tn._noise_kernel[(1,)](out, args, DIST=tn.DIST_CODES["gaussian"], BLOCK=tn.BLOCK_G,
                                      enable_fp_fusion=False, enable_reflect_ftz=False)
    assert torch.equal(bits(out), bits(zokernels.noise(1024, 1, backend="torch")))
    ptx = compiled.asm["ptx"]
    assert "fma.rn.f32" not in ptx
    assert "div.rn.f32" in ptx and "sqrt.rn.f32" in ptx


@pytest.mark.gpu
@gpu
def test_gpu_gaussian_fast_is_roughly_normal():
    z = zokernels.noise(2**20, 5, dist="gaussian-fast", device="cuda").double()
    assert abs(z.mean().item()) < 0.01 and abs(z.var().item() - 1) < 0.01
