"""Statistical checks of spec version 2's streams (docs/noise.md), fixed seeds, stated tolerances, on the C++
backend (the torch reference is too slow for 10**7 samples; test_spec_v2.py shows every backend gives the
same bits).

N = 10**7 samples: tolerances are about 5 standard errors (mean 5/sqrt(N) ~ 0.0016, variance
5*sqrt(2/N) ~ 0.0022, skewness 5*sqrt(6/N), kurtosis 5*sqrt(24/N) ~ 0.0077, correlations 5/sqrt(N) ~
0.0016), Kolmogorov-Smirnov below its 1% critical value 1.63/sqrt(N). Tail frequencies at 3 and 4 sigma
must be within 5% of the normal's: 5% is 5 standard errors of the 4-sigma count only at about 1.6 * 10**8
samples, so the tails are counted over 16 * 10**7 elements (in slices, through offsets).
"""

import math

import pytest
import torch

import zokernels

pytestmark = pytest.mark.skipif("cpu" not in zokernels.backends(), reason="C++ extension not built")

N = 10**7
SE = 1 / math.sqrt(N)


def _z(seed, key=0, dist="gaussian", offset=0, n=N):
    return zokernels.noise(n, seed, key=key, offset=offset, dist=dist, backend="cpu", spec_version=2).double()


def _moments(z):
    m = z.mean()
    c = z - m
    var = (c**2).mean()
    return m.item(), var.item(), ((c**3).mean() / var**1.5).item(), ((c**4).mean() / var**2).item()


@pytest.mark.parametrize("dist,kurtosis", [("gaussian", 3.0), ("uniform", 1.8), ("rademacher", 1.0)])
def test_moments(dist, kurtosis):
    mean, var, skew, kurt = _moments(_z(2**63 + 5, dist=dist))
    assert abs(mean) < 5 * SE
    assert abs(var - 1) < 5 * math.sqrt(2) * SE
    assert abs(skew) < 5 * math.sqrt(6) * SE
    # a Rademacher variable's kurtosis is 1 exactly, with no sampling error at all when its variance is 1
    assert abs(kurt - kurtosis) < 5 * math.sqrt(24) * SE


def test_gaussian_kolmogorov_smirnov():
    z = _z(7).sort().values
    cdf = 0.5 * torch.erfc(-z / math.sqrt(2))
    i = torch.arange(1, N + 1, dtype=torch.float64)
    d = torch.maximum(i / N - cdf, cdf - (i - 1) / N).max().item()
    assert d < 1.63 * SE


def test_gaussian_tails_within_5_percent_of_the_normal():
    slices = 16
    counts = {3.0: 0, 4.0: 0}
    largest = 0.0
    for s in range(slices):
        a = zokernels.noise(N, 11, key=2, offset=s * N, backend="cpu", spec_version=2).abs()
        largest = max(largest, a.max().item())
        for x in counts:
            counts[x] += int((a > x).sum())
    for x, count in counts.items():
        expected = math.erfc(x / math.sqrt(2)) * slices * N  # P(|Z| > x) for a standard normal
        assert abs(count / expected - 1) < 0.05, (x, count, expected)
    # the table reaches the normal quantile of 2**-25: |z| up to about 5.42
    assert 5.3 < largest < 5.43


@pytest.mark.parametrize("dist", ["gaussian", "uniform", "rademacher"])
def test_independence_across_seeds_keys_and_neighbours(dist):
    a = _z(1, key=0, dist=dist)
    others = {"seed": _z(2, key=0, dist=dist), "key": _z(1, key=1, dist=dist), "seed_hi": _z(1 + 2**32, dist=dist)}
    for what, b in others.items():
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 5 * SE, what
        if dist != "rademacher":  # its squares are all 1
            assert abs(torch.corrcoef(torch.stack([a**2, b**2]))[0, 1].item()) < 5 * SE, what
    # lags 1-3: other words of one Philox call; 4: the next group (for Rademacher v2, the next bit of the same
    # word); 32 and 128: the same bit of the next word / counter
    for lag in (1, 2, 3, 4, 32, 128):
        x, y = a[:-lag], a[lag:]
        assert abs(torch.corrcoef(torch.stack([x, y]))[0, 1].item()) < 5 * SE, lag
        if dist != "rademacher":
            assert abs(torch.corrcoef(torch.stack([x**2, y**2]))[0, 1].item()) < 5 * SE, lag
