"""Noise spec version 2 (docs/noise.md): opt-in, the default untouched, its table reproducible from the committed
script, its Rademacher layout as documented, and every backend bit-identical to the torch reference on ragged
shapes, offsets across counter boundaries, every dtype and rounding. (Golden vectors: test_golden.py;
Philox4x32-7 known answers: test_philox.py; statistics: test_statistics.py.)"""

import pathlib

import pytest
import torch

import zokernels
from zokernels import make_gaussian_table, reference, spec

from conftest import DTYPES, PORTABLE_DISTS, available_backends, bits, device_for

ROOT = pathlib.Path(__file__).parents[1]
OTHERS = [b for b in available_backends() if b != "torch"]


def test_coefficients_are_what_the_committed_script_generates():
    rows = make_gaussian_table.coeffs()
    assert list(spec.GAUSSIAN_V2_COEFFS) == rows and len(rows) == 24 and {len(r) for r in rows} == {6}
    assert (ROOT / "csrc" / "zo_gaussian_table.h").read_text() == make_gaussian_table.header(rows)
    # the float32 polynomials stay within 1e-5 of the normal quantile over every octave
    assert make_gaussian_table.max_error(samples_per_octave=64) < 1e-5


def test_default_is_version_1_and_version_2_differs():
    for dist in PORTABLE_DISTS:
        v1 = zokernels.noise(64, 5, key=1, dist=dist)
        assert torch.equal(bits(v1), bits(zokernels.noise(64, 5, key=1, dist=dist, spec_version=1)))
        assert not torch.equal(bits(v1), bits(zokernels.noise(64, 5, key=1, dist=dist, spec_version=2)))


@pytest.mark.parametrize("bad", [0, 3, True, 2.0, "2", None])
def test_unknown_spec_version_is_refused(bad):
    with pytest.raises(ValueError, match="spec_version"):
        zokernels.noise(4, 1, spec_version=bad)
    with pytest.raises(ValueError, match="spec_version"):
        zokernels.perturb_(torch.zeros(4), 1, 0.1, keys=0, spec_version=bad)


def test_gaussian_fast_has_no_version_2():
    with pytest.raises(ValueError, match="gaussian-fast.*no spec version 2"):
        zokernels.noise(4, 1, dist="gaussian-fast", spec_version=2)


def test_rademacher_layout_is_32_signs_per_word():
    """Element i: counter i // 128, word i % 4, bit (i // 4) % 32, from Philox4x32-7 directly."""
    seed, key, offset, n = 2**64 - 9, 3, 2**32 * 128 - 200, 600  # crosses a 2**32 boundary of the counter index
    z = zokernels.noise(n, seed, key=key, offset=offset, dist="rademacher", spec_version=2, backend="torch")
    i = torch.arange(offset, offset + n)
    c = i // 128
    words = torch.stack(reference.philox(seed, c & 0xFFFFFFFF, c >> 32, torch.full_like(c, key),
                                         torch.full_like(c, spec.TAG_NOISE), rounds=7), dim=1)
    bit = (words[torch.arange(n), i % 4] >> ((i // 4) % 32)) & 1
    assert torch.equal(z, torch.where(bit == 1, -1.0, 1.0))


@pytest.mark.skipif(not OTHERS, reason="only the torch backend is available")
@pytest.mark.parametrize("other", OTHERS)
@pytest.mark.parametrize("dist", PORTABLE_DISTS)
@pytest.mark.parametrize("offset", [0, 1, 127, 129, 2**37 - 5])
def test_noise_agrees(other, dist, offset):
    for n in (1, 7, 130, 1300):
        ref = zokernels.noise(n, 99, key=3, offset=offset, dist=dist, backend="torch", spec_version=2)
        got = zokernels.noise(n, 99, key=3, offset=offset, dist=dist, device=device_for(other), backend=other,
                              spec_version=2)
        assert torch.equal(bits(got), bits(ref)), (n, offset)


SHAPES = [(), (3,), (5, 7), (33, 31), (2, 3, 129)]


@pytest.mark.skipif(not OTHERS, reason="only the torch backend is available")
@pytest.mark.parametrize("other", OTHERS)
@pytest.mark.parametrize("dist", PORTABLE_DISTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_update_agrees(other, dist, dtype, rounding):
    g = torch.Generator().manual_seed(0)
    tensors = [(torch.randn(s, generator=g) * 0.5).to(dtype) for s in SHAPES]
    keys, offsets = list(range(10, 10 + len(tensors))), [0, 5, 2**32 - 3, 127, 2**37 + 1]
    seeds, coeffs = [2**64 - 1, 0, 12345], [3e-3, -1e-2, 0.4]
    ref = [t.clone() for t in tensors]
    got = [t.clone().to(device_for(other)) for t in tensors]
    kw = dict(keys=keys, offsets=offsets, dist=dist, rounding=rounding, spec_version=2)
    zokernels.update_(ref, seeds, coeffs, backend="torch", **kw)
    zokernels.update_(got, seeds, coeffs, backend=other, **kw)
    for r, t, s in zip(ref, got, SHAPES):
        assert torch.equal(bits(t), bits(r)), s
    v1 = [t.clone() for t in tensors]
    zokernels.update_(v1, seeds, coeffs, backend="torch", **{**kw, "spec_version": 1})
    assert any(not torch.equal(bits(a), bits(b)) for a, b in zip(ref, v1)), "v2 update equals v1's"


@pytest.mark.skipif("cpu" not in available_backends(), reason="C++ extension not built")
def test_extension_refuses_unknown_versions():
    from zokernels import _cpu

    out = torch.empty(4)
    with pytest.raises(ValueError, match="unknown spec version"):
        _cpu.require().noise(out.data_ptr(), 4, 0, 1, 0, 0, 1, version=3)
