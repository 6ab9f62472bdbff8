"""The Triton update kernel reports, per tensor, whether its own pass left a non-finite value in it
(no second pass over memory), without changing a bit of what it writes. Small tensors: these run in
Triton's interpreter on CPU."""

import pytest
import torch

from zokernels import reference

from conftest import bits

tn = pytest.importorskip("zokernels.triton.noise")

# (weights, coefficient) that overflow the dtype wherever z > 0.55 (fp16) or 1.03; the spec Gaussian
# is bounded by 5.8, so weights of -2 and 0.5 stay finite in bf16 and fp32 under either coefficient
OVERFLOWING = {torch.float16: (60000.0, 1e4), torch.bfloat16: (3.3e38, 1e37), torch.float32: (3.3e38, 1e37)}


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _triton_and_reference(tensors, seeds, coeffs, keys, offsets, dist, rounding, sources=None):
    """Triton's flags and results, and the reference results on copies (bit patterns)."""
    expected = [t.clone().cpu() for t in tensors]
    for i, t in enumerate(expected):
        src = None if sources is None else sources[i].cpu()
        reference.update_(t, seeds, coeffs, keys[i], offsets[i], dist, rounding, src)
    flags = tn.update_(tensors, seeds, coeffs, keys, offsets, dist, rounding, sources)
    assert len(flags) == len(tensors)
    assert all(torch.equal(bits(t), bits(e)) for t, e in zip(tensors, expected))
    return [bool(f) for f in (flags.tolist() if torch.is_tensor(flags) else flags)]


@pytest.mark.parametrize("dtype", list(OVERFLOWING), ids=str)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_overflow_is_flagged_for_that_tensor_only(dtype, rounding):
    w0, c = OVERFLOWING[dtype]
    dev = _device()
    hot = torch.full((300,), w0, dtype=dtype, device=dev)
    cool = [torch.full((50,), 0.5, device=dev), torch.full((7,), -2.0, dtype=torch.bfloat16, device=dev)]
    # a tensor of the overflowing one's dtype shares its launch: the flags are per tensor, not per launch
    tensors = [cool[0], hot, cool[1]]
    flags = _triton_and_reference(tensors, [11], [c], [1, 2, 3], [0, 5, 0], "gaussian", rounding)
    assert not torch.isfinite(hot).all()
    assert flags == [False, True, False]


def test_finite_results_give_all_zero_flags():
    dev = _device()
    tensors = [torch.linspace(-1, 1, 1500, device=dev), torch.ones(3, dtype=torch.bfloat16, device=dev),
               torch.zeros(0, device=dev)]
    flags = _triton_and_reference(tensors, [1, 2, 3], [1e-3, -2e-3, 5e-4], [0, 1, 2], [0, 2**40 + 1, 0],
                                  "gaussian", "stochastic")
    assert flags == [False, False, False]


def test_non_finite_read_from_a_source_is_flagged():
    dev = _device()
    src = torch.tensor([1.0, float("nan"), 2.0], device=dev)
    tensors = [torch.zeros(3, device=dev), torch.zeros(3, device=dev)]
    flags = _triton_and_reference(tensors, [4], [0.1], [0, 1], [0, 0], "rademacher", "nearest",
                                  sources=[src, torch.ones(3, device=dev)])
    assert flags == [True, False]


def test_lanes_outside_the_tensor_are_not_counted():
    """A tile's lanes outside the tensor compute w = 0 + c*z too; with c near the float32 maximum many
    of them overflow, and none of that may reach the flag when the tensor's own elements are finite."""
    dev = _device()
    c = 3.3e38
    seed = next(s for s in range(1, 100) if bool((reference.noise(2, s, 0, 1, "uniform", "cpu").abs() < 1).all()))
    tile = reference.noise(4 * tn.BLOCK_G, seed, 0, 0, "uniform", "cpu")
    assert not torch.isfinite(torch.tensor(c, dtype=torch.float32) * tile).all()  # the masked lanes overflow
    flags = _triton_and_reference([torch.zeros(2, device=dev)], [seed], [c], [0], [1], "uniform", "nearest")
    assert flags == [False]


def test_no_seeds_and_no_tensors():
    assert list(tn.update_([], [1], [0.1], [], [], "gaussian", "nearest")) == []
    flags = tn.update_([torch.full((2,), float("inf"), device=_device())], [], [], [0], [0], "gaussian", "nearest")
    assert [bool(f) for f in flags] == [False]  # nothing was written


@pytest.mark.parametrize("dtype", list(OVERFLOWING), ids=str)
def test_a_non_finite_value_anywhere_in_a_full_tile_is_flagged(dtype):
    """Full tiles of the default size take the unmasked launch, where a thread's flag covers every group it
    holds (groups g, g + 32 * NUM_WARPS, ...): an infinity in any element of any of them flags its tensor only."""
    dev = _device()
    n = 2 * 4 * tn.BLOCK_G
    for index in (0, 5, 4 * 130 + 3, n - 1):  # groups 0, 1, 130 (not a thread's first), the last
        src = torch.full((n,), 0.5, dtype=dtype, device=dev)
        src[index] = float("inf")
        tensors = [torch.zeros(n, dtype=dtype, device=dev), torch.zeros(n, dtype=dtype, device=dev)]
        flags = _triton_and_reference(tensors, [3], [0.25], [0, 1], [0, 0], "rademacher", "nearest",
                                      sources=[src, torch.ones(n, dtype=dtype, device=dev)])
        assert flags == [True, False], index
