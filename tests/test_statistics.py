"""Statistical checks of the three portable distributions of each noise spec version (docs/noise.md), fixed seeds,
stated tolerances.

Version 1 on N = 2**20 samples from the default backend; version 2 on N = 10**7 from the C++ backend (the torch
reference is too slow for 10**7 samples; test_spec_v2.py shows every backend gives the same bits). Tolerances
are about 5 standard errors of the version's N (mean 5/sqrt(N), variance 5*sqrt(2/N), skewness 5*sqrt(6/N),
kurtosis 5*sqrt(24/N), correlations 5/sqrt(N): 0.005 ... 0.024 at 2**20, 0.0016 ... 0.0077 at 10**7),
Kolmogorov-Smirnov below its 1% critical value 1.63/sqrt(N). Version 2's Gaussian tail frequencies at 3 and
4 sigma must be within 5% of the normal's: 5% is 5 standard errors of the 4-sigma count only at about
1.6 * 10**8 samples, so the tails are counted over 16 * 10**7 elements (in slices, through offsets).
"""

import dataclasses
import math

import pytest
import torch

import zokernels


@dataclasses.dataclass(frozen=True)
class Stream:
    n: int
    backend: str | None  # None: the default backend
    gaussian_bound: float  # the largest |z| the spec's Gaussian can give


STREAMS = {
    # Box-Muller on 24-bit uniforms: bounded by sqrt(-2 ln 2**-24) ~ 5.77
    1: Stream(n=2**20, backend=None, gaussian_bound=math.sqrt(-2 * math.log(2**-24)) + 1e-6),
    # the polynomial inverse CDF reaches the normal quantile of 2**-25: |z| up to about 5.42
    2: Stream(n=10**7, backend="cpu", gaussian_bound=5.43),
}
NEEDS_CPU = pytest.mark.skipif("cpu" not in zokernels.backends(), reason="C++ extension not built")
VERSIONS = [1, pytest.param(2, marks=NEEDS_CPU)]


def _z(version, seed, key=0, dist="gaussian", offset=0):
    s = STREAMS[version]
    return zokernels.noise(s.n, seed, key=key, offset=offset, dist=dist, backend=s.backend,
                           spec_version=version).double()


def _se(version):
    return 1 / math.sqrt(STREAMS[version].n)


def _moments(z):
    m = z.mean()
    c = z - m
    var = (c**2).mean()
    return m.item(), var.item(), ((c**3).mean() / var**1.5).item(), ((c**4).mean() / var**2).item()


@pytest.mark.parametrize("dist,kurtosis", [("gaussian", 3.0), ("uniform", 1.8), ("rademacher", 1.0)])
@pytest.mark.parametrize("version,seed", [(1, 0), (1, 2**63 + 5), pytest.param(2, 2**63 + 5, marks=NEEDS_CPU)])
def test_moments(version, seed, dist, kurtosis):
    se = _se(version)
    mean, var, skew, kurt = _moments(_z(version, seed, dist=dist))
    assert abs(mean) < 5 * se
    assert abs(var - 1) < 5 * math.sqrt(2) * se
    assert abs(skew) < 5 * math.sqrt(6) * se
    # a Rademacher variable's kurtosis is 1 exactly, with no sampling error at all when its variance is 1
    assert abs(kurt - kurtosis) < 5 * math.sqrt(24) * se


@pytest.mark.parametrize("version", VERSIONS)
def test_gaussian_kolmogorov_smirnov(version):
    """The KS distance to the standard normal CDF, and the two-sided 5% tail frequency."""
    n, se = STREAMS[version].n, _se(version)
    z = _z(version, 7).sort().values
    cdf = 0.5 * torch.erfc(-z / math.sqrt(2))  # erfc keeps its precision in the lower tail
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()
    assert d < 1.63 * se
    assert abs((z.abs() > 1.959964).double().mean().item() - 0.05) < 5 * math.sqrt(0.05 * 0.95) * se


@pytest.mark.parametrize("version", VERSIONS)
def test_gaussian_support(version):
    """Bounded by the spec's largest value, and both signs of large values attained."""
    z = _z(version, 3)
    assert z.abs().max().item() <= STREAMS[version].gaussian_bound
    assert z.max().item() > 4.0 and z.min().item() < -4.0


@NEEDS_CPU
def test_v2_gaussian_tails_within_5_percent_of_the_normal():
    n, slices = STREAMS[2].n, 16
    counts = {3.0: 0, 4.0: 0}
    largest = 0.0
    for s in range(slices):
        a = _z(2, 11, key=2, offset=s * n).abs()
        largest = max(largest, a.max().item())
        for x in counts:
            counts[x] += int((a > x).sum())
    for x, count in counts.items():
        expected = math.erfc(x / math.sqrt(2)) * slices * n  # P(|Z| > x) for a standard normal
        assert abs(count / expected - 1) < 0.05, (x, count, expected)
    assert 5.3 < largest < STREAMS[2].gaussian_bound


@pytest.mark.parametrize("dist", ["gaussian", "uniform", "rademacher"])
@pytest.mark.parametrize("version", VERSIONS)
def test_independence_across_seeds_keys_and_neighbours(version, dist):
    se = _se(version)
    a = _z(version, 1, key=0, dist=dist)
    others = {"seed": _z(version, 2, key=0, dist=dist), "key": _z(version, 1, key=1, dist=dist),
              "seed_hi": _z(version, 1 + 2**32, dist=dist)}
    for what, b in others.items():
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 5 * se, what
        if dist != "rademacher":  # its squares are all 1
            assert abs(torch.corrcoef(torch.stack([a**2, b**2]))[0, 1].item()) < 5 * se, what
    # lags 1-3: other words of one Philox call (and, in version 1, a Box-Muller pair); 4: the next group (for
    # Rademacher v2, the next bit of the same word); 32 and 128: the same bit of the next word / counter
    for lag in (1, 2, 3, 4, 32, 128):
        x, y = a[:-lag], a[lag:]
        assert abs(torch.corrcoef(torch.stack([x, y]))[0, 1].item()) < 5 * se, lag
        if dist != "rademacher":
            assert abs(torch.corrcoef(torch.stack([x**2, y**2]))[0, 1].item()) < 5 * se, lag
