"""Overflow never passes silently: a coefficient that is not finite in float32 is refused before any write;
a pass that leaves inf/NaN in a tensor (found inside the kernel's own pass) raises NonFiniteError, which
says truthfully that the pass was applied and which tensors now hold inf/NaN."""

import pytest
import torch

import zokernels
from zokernels import NonFiniteError

from conftest import bits, device_for

# float32(c) is inf exactly from here on: the midpoint between FLT_MAX and 2**128 rounds to even, which is 2**128.
F32_OVERFLOW = 2.0**128 - 2.0**103
FLT_MAX = torch.finfo(torch.float32).max


def test_the_overflow_boundary_is_where_float32_rounding_gives_inf():
    just_below = torch.nextafter(torch.tensor(F32_OVERFLOW, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))
    assert torch.tensor(F32_OVERFLOW).float().isinf()  # the refused side
    assert torch.tensor(just_below.item()).float().item() == FLT_MAX  # the accepted side rounds to FLT_MAX
    assert just_below.item() > FLT_MAX


@pytest.mark.parametrize("coeff", [1e39, -1e39, F32_OVERFLOW, -F32_OVERFLOW, 1e308])
def test_coefficients_that_overflow_float32_are_refused(coeff):
    w = torch.ones(5)
    with pytest.raises(ValueError, match=r"coeffs\[1\] = .* overflows float32"):
        zokernels.update_(w, [1, 2], [0.1, coeff], keys=0)
    with pytest.raises(ValueError, match=r"scale = .* overflows float32"):
        zokernels.perturb_(w, 1, coeff, keys=0)
    assert torch.equal(w, torch.ones(5))


def test_coefficients_just_below_the_boundary_are_float32_max(backend):
    """A coefficient that rounds to FLT_MAX is finite: 0 + FLT_MAX * (+-1) is exactly +-FLT_MAX, no error."""
    dev = device_for(backend)
    below = torch.nextafter(torch.tensor(F32_OVERFLOW, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))
    w = torch.zeros(9, device=dev)
    zokernels.perturb_(w, 4, below.item(), keys=0, dist="rademacher", backend=backend)
    z = zokernels.noise(9, 4, dist="rademacher")
    assert torch.equal(w.cpu(), z * FLT_MAX)


def _overflowing(dev):
    """tensors[0] and [2] overflow (fp16 max 65504, float32 near FLT_MAX), tensors[1] stays finite."""
    return [torch.full((6,), 60000.0, dtype=torch.float16, device=dev), torch.zeros(3, 2, device=dev),
            torch.full((2, 2), 3e38, device=dev)]


@pytest.mark.parametrize("sources", [False, True], ids=["in-place", "sources"])
def test_a_pass_that_writes_inf_raises_after_applying_it(backend, sources):
    dev = device_for(backend)
    ws, coeffs = _overflowing(dev), [1e4, 3e38]
    srcs = [w.clone() for w in ws] if sources else None
    out = [torch.empty_like(w) for w in ws] if sources else ws
    expected = [w.clone() for w in ws]
    zokernels.update_(expected[1:2], [5, 6], coeffs, keys=[1], dist="rademacher", backend="torch")
    with pytest.raises(NonFiniteError) as info:
        zokernels.update_(out, [5, 6], coeffs, keys=[0, 1, 2], dist="rademacher", sources=srcs, backend=backend)
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert err.indices == [0, 2]
    msg = str(err)
    assert "tensors[0] (6,) torch.float16" in msg and "tensors[2] (2, 2) torch.float32" in msg
    assert "tensors[1]" not in msg
    assert "was applied" in msg and "inf/NaN" in msg
    if sources:
        assert "sources are untouched" in msg
        assert all(torch.equal(bits(s), bits(w)) for s, w in zip(srcs, ws))
    assert not torch.isfinite(out[0]).all() and not torch.isfinite(out[2]).all()
    assert torch.equal(bits(out[1]), bits(expected[1]))  # the finite tensor got its update


def test_backends_agree_on_the_flags_and_the_written_bits(backend):
    """Every backend writes the same (partly infinite) bits and reports the same tensors."""
    dev = device_for(backend)
    ref, ws = _overflowing("cpu"), _overflowing(dev)
    with pytest.raises(NonFiniteError) as a:
        zokernels.update_(ref, [9, 10], [2e4, 2e38], keys=[0, 1, 2], backend="torch")
    with pytest.raises(NonFiniteError) as b:
        zokernels.update_(ws, [9, 10], [2e4, 2e38], keys=[0, 1, 2], backend=backend)
    assert a.value.indices == b.value.indices == [0, 2]
    for x, y in zip(ref, ws):
        assert torch.equal(bits(x), bits(y.cpu()))


def test_non_finite_input_is_reported(backend):
    """A NaN already in the weights survives the pass, so the tensor still holds one afterwards: reported."""
    dev = device_for(backend)
    w = torch.ones(1000, dtype=torch.bfloat16, device=dev)
    w[777] = float("nan")
    with pytest.raises(NonFiniteError, match=r"tensors\[1\]"):
        zokernels.perturb_([torch.ones(3, device=dev), w], 1, 1e-3, keys=[0, 1], backend=backend)


def test_finite_results_raise_nothing(backend):
    dev = device_for(backend)
    w = torch.full((600,), 65000.0, dtype=torch.float16, device=dev)  # near fp16's max, but stays finite
    zokernels.perturb_(w, 3, 1.0, keys=0, dist="rademacher", backend=backend)
    assert torch.isfinite(w).all()
