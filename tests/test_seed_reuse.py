"""update_ computes the noise of a seed that comes back later in its list once per tile and reuses it
(csrc/zo_tiles.h, SeedUse): in-place ZO-SGD restores and updates along one z, and fuse_steps puts the next
step's seed in between. Reuse must give the bits of applying the pairs one call at a time, in order,
whatever the pattern: adjacent and interleaved repeats, more recurring seeds than kept buffers (2), a seed
used three times, on every instruction-set variant, dtype, dist and rounding."""

import pytest
import torch

from zokernels import _cpu

from conftest import bits

pytestmark = pytest.mark.skipif(not _cpu.available(), reason="C++ extension not built")

PATTERNS = [
    [5, 5],  # in-place restore + update
    [5, 9, 5],  # fuse_steps: restore of t, +eps of t+1, update of t
    [5, 9, 7, 5, 9, 7, 5],  # three recurring seeds, two buffers; 5 three times
    [5, 9, 9, 5, 11, 11, 11, 9],
]
SIZES = [1, 3, 511, 1029]  # inside one tile, a ragged tile boundary, several tiles
COEFFS = [1e-2, -3e-3, 2e4, 0.5, -1.0, 7e-5, 3.0, -0.25]


def _weights(dtype):
    g = torch.Generator().manual_seed(4)
    return [(torch.randn(n, generator=g) * 10.0 ** (i % 3 - 1)).to(dtype) for i, n in enumerate(SIZES)]


def _update(c, ws, seeds, coeffs, dist, dtype, rounding):
    c.update([w.data_ptr() for w in ws], [w.numel() for w in ws], [3] * len(ws), list(range(len(ws))),
             [_cpu.DTYPE_CODES[dtype]] * len(ws), seeds, coeffs, _cpu.DIST_CODES[dist], rounding, 2)


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_repeated_seeds_give_the_bits_of_one_call_per_pair(isa_restored, pattern):
    c = isa_restored
    coeffs = COEFFS[: len(pattern)]
    for isa in c.isas():
        c.set_isa(isa)
        for dtype in _cpu.DTYPE_CODES:
            for dist in _cpu.DIST_CODES:
                for rounding in (0, 1):
                    together, one_by_one = _weights(dtype), _weights(dtype)
                    _update(c, together, pattern, coeffs, dist, dtype, rounding)
                    for s, co in zip(pattern, coeffs):
                        _update(c, one_by_one, [s], [co], dist, dtype, rounding)
                    for a, b in zip(together, one_by_one):
                        assert torch.equal(bits(a), bits(b)), (isa, dtype, dist, rounding)
