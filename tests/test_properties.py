"""Property-based checks (hypothesis) of the contract over random seeds, keys, offsets and sizes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import zokernels
from zokernels import spec

from conftest import DTYPES, bits

HAS_CPU = "cpu" in zokernels.backends()
seeds = st.integers(0, spec.SEED_MAX)
keys = st.integers(0, spec.KEY_MAX)
offsets = st.one_of(st.integers(0, 64), st.integers(2**31 - 64, 2**31 + 64), st.integers(2**32 - 64, 2**32 + 64),
                    st.integers(0, spec.INDEX_LIMIT - 1000))
dists = st.sampled_from(["gaussian", "rademacher", "uniform"])


@pytest.mark.skipif(not HAS_CPU, reason="C++ extension not built")
@settings(max_examples=300, deadline=None, derandomize=True)
@given(seed=seeds, key=keys, offset=offsets, n=st.integers(0, 300), dist=dists)
def test_cpu_noise_equals_reference(seed, key, offset, n, dist):
    a = zokernels.noise(n, seed, key=key, offset=offset, dist=dist, backend="cpu")
    b = zokernels.noise(n, seed, key=key, offset=offset, dist=dist, backend="torch")
    assert torch.equal(bits(a), bits(b))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(seed=seeds, key=keys, offset=offsets, n=st.integers(1, 200), cut=st.integers(0, 200), dist=dists)
def test_any_split_reproduces_the_whole(seed, key, offset, n, cut, dist):
    cut = min(cut, n)
    whole = zokernels.noise(n, seed, key=key, offset=offset, dist=dist)
    head = zokernels.noise(cut, seed, key=key, offset=offset, dist=dist)
    tail = zokernels.noise(n - cut, seed, key=key, offset=offset + cut, dist=dist)
    assert torch.equal(bits(torch.cat([head, tail])), bits(whole))


@pytest.mark.skipif(not HAS_CPU, reason="C++ extension not built")
@settings(max_examples=200, deadline=None, derandomize=True)
@given(seed_list=st.lists(seeds, min_size=1, max_size=5), coeff=st.floats(-10, 10, allow_nan=False, width=32),
       dtype=st.sampled_from(DTYPES), rounding=st.sampled_from(["nearest", "stochastic"]), n=st.integers(1, 100),
       offset=offsets, scale_exp=st.integers(-30, 10))
def test_cpu_update_equals_reference(seed_list, coeff, dtype, rounding, n, offset, scale_exp):
    w = (torch.linspace(-1, 1, n) * 2.0**scale_exp).to(dtype)
    a, b = w.clone(), w.clone()
    coeffs = [coeff * 2.0**scale_exp] * len(seed_list)
    zokernels.update_(a, seed_list, coeffs, keys=3, offsets=offset, rounding=rounding, backend="cpu")
    zokernels.update_(b, seed_list, coeffs, keys=3, offsets=offset, rounding=rounding, backend="torch")
    assert torch.equal(bits(a), bits(b))
