"""Every C++ variant against the torch reference where the Philox counter's low word wraps inside a vector of
counters: the tile loops build a vector's counters in registers (csrc/zo_noise.h, philox_elements) and take
another path when the low words of its lanes would cross 2**32 (group index 2**32, element index 2**34)."""

import pytest
import torch

import zokernels
from zokernels import _cpu

from conftest import bits

pytestmark = pytest.mark.skipif(not _cpu.available(), reason="C++ extension not built")
WRAP = 2**34 - 70  # the groups of the first tile cross 2**32 in its second vector of counters on every ISA


@pytest.mark.parametrize("version", [1, 2])
def test_noise_and_rounding_bits_across_the_counter_wrap_equal_the_reference(isa_restored, version):
    c = isa_restored
    want = {dist: zokernels.noise((600,), 2**64 - 3, key=5, offset=WRAP + 2, dist=dist, backend="torch",
                                  spec_version=version) for dist in _cpu.DIST_CODES}
    w0 = (torch.randn(600, generator=torch.Generator().manual_seed(0)) * 1e-3).to(torch.bfloat16)
    want_w = w0.clone()
    zokernels.update_([want_w], [9], [1e-4], keys=[5], offsets=[WRAP], rounding="stochastic", backend="torch",
                      spec_version=version)
    for isa in c.isas():
        c.set_isa(isa)
        for dist, ref in want.items():
            got = zokernels.noise((600,), 2**64 - 3, key=5, offset=WRAP + 2, dist=dist, backend="cpu",
                                  spec_version=version)
            assert torch.equal(bits(got), bits(ref)), (isa, dist)
        w = w0.clone()
        zokernels.update_([w], [9], [1e-4], keys=[5], offsets=[WRAP], rounding="stochastic", backend="cpu",
                          spec_version=version)
        assert torch.equal(bits(w), bits(want_w)), isa
