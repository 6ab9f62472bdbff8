"""All backends available here agree bit for bit, for every dist x dtype x rounding, on odd shapes."""

import pytest
import torch

import zokernels

from conftest import DTYPES, PORTABLE_DISTS, available_backends, bits, device_for

OTHERS = [b for b in available_backends() if b != "torch"]
# odd shapes (ragged Philox groups and tiles), a 0-d scalar, and one over 64K elements split in shards
SHAPES = [(), (1,), (3,), (5, 7), (33, 31), (2, 3, 129)]


def _weights(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.5
    if w.numel() > 4:
        w.view(-1)[::5] *= 1e-6  # fp16-subnormal magnitudes exercise that rounding path
    return w.to(dtype)


@pytest.mark.skipif(not OTHERS, reason="only the torch backend is available")
@pytest.mark.parametrize("other", OTHERS)
@pytest.mark.parametrize("dist", PORTABLE_DISTS)
@pytest.mark.parametrize("offset", [0, 1, 2**31 - 3, 2**32 - 2])
def test_noise_agrees(other, dist, offset):
    for shape in [(1,), (7,), (4, 130)]:
        ref = zokernels.noise(shape, 99, key=3, offset=offset, dist=dist, backend="torch")
        got = zokernels.noise(shape, 99, key=3, offset=offset, dist=dist, device=device_for(other), backend=other)
        assert torch.equal(bits(got), bits(ref)), (shape, offset)


@pytest.mark.skipif(not OTHERS, reason="only the torch backend is available")
@pytest.mark.parametrize("other", OTHERS)
@pytest.mark.parametrize("dist", PORTABLE_DISTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_update_agrees(other, dist, dtype, rounding):
    tensors = [_weights(s, dtype, i) for i, s in enumerate(SHAPES)]
    keys = list(range(10, 10 + len(tensors)))
    offsets = [0, 5, 2**32 - 3, 1, 2, 3]
    seeds, coeffs = [2**64 - 1, 0, 12345], [3e-3, -1e-2, 0.4]
    ref = [t.clone() for t in tensors]
    got = [t.clone().to(device_for(other)) for t in tensors]
    zokernels.update_(ref, seeds, coeffs, keys=keys, offsets=offsets, dist=dist, rounding=rounding, backend="torch")
    zokernels.update_(got, seeds, coeffs, keys=keys, offsets=offsets, dist=dist, rounding=rounding, backend=other)
    for r, g, s in zip(ref, got, SHAPES):
        assert torch.equal(bits(g), bits(r)), s
    assert any(not torch.equal(bits(r), bits(t)) for r, t in zip(ref, tensors)), "update changed nothing"


@pytest.mark.skipif(not OTHERS, reason="only the torch backend is available")
@pytest.mark.parametrize("other", OTHERS)
def test_special_values_agree(other):
    """inf, NaN, signed zeros, the fp16 overflow edge and subnormals round the same everywhere."""
    vals = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 65504.0, -65519.0, 65520.0, 6e-8, -3e-8, 1e-40,
            3.0e38, 2**-14, 2**-24, 2**-25]
    for dtype in DTYPES:
        for rounding in ("nearest", "stochastic"):
            base = torch.tensor(vals * 3, dtype=torch.float32).to(dtype)
            ref, got = base.clone(), base.clone().to(device_for(other))
            kw = dict(keys=[1], dist="gaussian", rounding=rounding)
            for t, name in ((ref, "torch"), (got, other)):  # inf/NaN inputs stay so: every backend reports them
                with pytest.raises(zokernels.NonFiniteError):
                    zokernels.update_([t], [7, 8], [1e-7, 5.0], backend=name, **kw)
            r, g = ref.float(), got.float().cpu()
            assert torch.equal(torch.isnan(r), torch.isnan(g)), (dtype, rounding)
            keep = ~torch.isnan(r)
            assert torch.equal(bits(ref)[keep], bits(got)[keep]), (dtype, rounding)
