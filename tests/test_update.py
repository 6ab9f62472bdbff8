"""update_ semantics: the fp32 arithmetic of the contract, equality with sequential perturb_,
unbiased reproducible stochastic rounding, and edge cases."""

import pytest
import torch

import zokernels

from conftest import DTYPES, bits, device_for


def test_fp32_arithmetic_is_the_contract(backend):
    """w + float32(c) * z, each op rounded once in float32 (no FMA), is what an fp32 update computes."""
    dev = device_for(backend)
    w = torch.randn(999, generator=torch.Generator().manual_seed(0)).to(dev)
    c = 0.1234567891234  # not a float32: the contract rounds it first
    z = zokernels.noise(999, 42, key=3, device=dev, backend=backend)
    expected = w + torch.tensor(c, dtype=torch.float32, device=dev) * z
    zokernels.perturb_(w, 42, c, keys=3, backend=backend)
    assert torch.equal(bits(w), bits(expected))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
def test_update_equals_sequential_perturb(backend, dtype, rounding, dist):
    dev = device_for(backend)
    k = 16
    seeds = [1000 + 7 * i for i in range(k)]
    coeffs = [(-1) ** i * 10.0 ** -(i % 5) for i in range(k)]
    w0 = [torch.randn(s, generator=torch.Generator().manual_seed(i)).to(dtype).to(dev)
          for i, s in enumerate([(300,), (3, 5), (1,)])]
    fused = [w.clone() for w in w0]
    zokernels.update_(fused, seeds, coeffs, keys=[4, 5, 6], dist=dist, rounding=rounding, backend=backend)
    seq = [w.clone() for w in w0]
    for s, c in zip(seeds, coeffs):
        zokernels.perturb_(seq, s, c, keys=[4, 5, 6], dist=dist, rounding=rounding, backend=backend)
    for a, b in zip(fused, seq):
        assert torch.equal(bits(a), bits(b))


@pytest.mark.parametrize("dtype,w0,ulp", [(torch.bfloat16, 1.5, 2**-7), (torch.float16, 1.5, 2**-10),
                                           (torch.float16, 0.0, 2**-24)], ids=["bf16", "fp16", "fp16-subnormal"])
def test_stochastic_rounding_is_unbiased(dtype, w0, ulp):
    """Adding 0.3 ulp: nearest always loses it; stochastic rounding keeps it in expectation.

    w0 sits mid-binade so the ulp is the same on both sides. Rademacher z makes s = w0 +/- 0.3 ulp exactly. Over 2**16 elements x 8 seeds the fraction rounded
    away from w0 must be 0.3 within 5 standard errors (5 * sqrt(0.21 / 524288) ~ 0.0032).
    """
    n, seeds = 2**16, range(8)
    moved, total, nearest_moved = 0, 0, 0
    for seed in seeds:
        w = torch.full((n,), w0, dtype=dtype)
        zokernels.perturb_(w, seed, 0.3 * ulp, keys=0, dist="rademacher", rounding="stochastic")
        moved += (w.float() != w0).sum().item()
        total += n
        v = torch.full((n,), w0, dtype=dtype)
        zokernels.perturb_(v, seed, 0.3 * ulp, keys=0, dist="rademacher", rounding="nearest")
        nearest_moved += (v.float() != w0).sum().item()
    assert abs(moved / total - 0.3) < 5 * (0.21 / total) ** 0.5
    assert nearest_moved == 0
    # the mean update equals the exact one: moved elements went exactly one ulp in z's direction
    w = torch.full((n,), w0, dtype=dtype)
    zokernels.perturb_(w, 0, 0.3 * ulp, keys=0, dist="rademacher", rounding="stochastic")
    z = zokernels.noise(n, 0, key=0, dist="rademacher")
    step = (w.float() - w0) / ulp
    assert set(step.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.all(step * z >= 0)


def test_stochastic_rounding_is_reproducible():
    a = torch.linspace(-1, 1, 5000).bfloat16()
    b = a.clone()
    for w in (a, b):
        zokernels.perturb_(w, 9, 1e-3, keys=1, rounding="stochastic")
    assert torch.equal(bits(a), bits(b))


def test_empty_and_zero_sized(backend):
    dev = device_for(backend)
    e = torch.empty(0, device=dev)
    assert zokernels.perturb_(e, 1, 1.0, keys=0, backend=backend) is e
    zokernels.update_([], [1], [1.0], keys=[], backend=backend)
    zokernels.update_(torch.ones(3, device=dev), [], [], keys=0, backend=backend)
    assert zokernels.noise((0, 5), 1, device=dev, backend=backend).shape == (0, 5)


def test_returns_its_argument_and_shape(backend):
    dev = device_for(backend)
    ws = [torch.zeros(2, 3, device=dev)]
    assert zokernels.update_(ws, [1], [1.0], keys=[0], backend=backend) is ws
    z = zokernels.noise((2, 3), 1, device=dev, backend=backend)
    assert z.shape == (2, 3) and z.dtype == torch.float32
    assert torch.equal(ws[0], z)


def test_requires_grad_parameters_update_in_place():
    p = torch.nn.Parameter(torch.zeros(10))
    zokernels.perturb_([p], 3, 1.0, keys=[0])
    assert torch.equal(p.detach(), zokernels.noise(10, 3))
    assert p.requires_grad and p.grad is None


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_sources_make_a_perturbed_copy_in_one_pass(backend, dtype, rounding):
    """update_(dst, ..., sources=src) equals copying src to dst and updating dst in place; src is untouched."""
    dev = device_for(backend)
    src = [torch.randn(s, generator=torch.Generator().manual_seed(i)).to(dtype).to(dev)
           for i, s in enumerate([(301,), (4, 7), (1,)])]
    keep = [s.clone() for s in src]
    dst = [torch.empty_like(s) for s in src]
    zokernels.update_(dst, [5, 6], [0.1, -0.01], keys=[1, 2, 3], offsets=[0, 9, 2**32 - 1], sources=src,
                      rounding=rounding, backend=backend)
    ref = [s.clone() for s in src]
    zokernels.update_(ref, [5, 6], [0.1, -0.01], keys=[1, 2, 3], offsets=[0, 9, 2**32 - 1], rounding=rounding,
                      backend=backend)
    for d, r, s, k in zip(dst, ref, src, keep):
        assert torch.equal(bits(d), bits(r))
        assert torch.equal(bits(s), bits(k))
    # no seeds: a plain copy
    out = [torch.zeros_like(s) for s in src]
    zokernels.update_(out, [], [], keys=[1, 2, 3], sources=src, backend=backend)
    assert all(torch.equal(bits(o), bits(s)) for o, s in zip(out, src))


def test_sources_checks():
    with pytest.raises(ValueError, match="sources\\[0\\] is \\(3,\\)"):
        zokernels.perturb_([torch.zeros(4)], 1, 0.1, keys=[0], sources=[torch.zeros(3)])
    with pytest.raises(ValueError, match="1 sources for 2 tensors"):
        zokernels.perturb_([torch.zeros(4), torch.zeros(4)], 1, 0.1, keys=[0, 1], sources=[torch.zeros(4)])
    buf = torch.zeros(8)
    with pytest.raises(ValueError, match="overlaps"):
        zokernels.perturb_([buf[:4], buf[4:]], 1, 0.1, keys=[0, 1], sources=[buf[4:], buf[:4]])
    with pytest.raises(ValueError, match="partly overlaps"):
        zokernels.perturb_([buf[:4]], 1, 0.1, keys=[0], sources=[buf[2:6]])
    same = torch.ones(4)
    zokernels.perturb_([same], 1, 0.1, keys=[0], sources=[same])  # its own source: in place
    assert not torch.equal(same, torch.ones(4))
