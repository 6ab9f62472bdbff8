"""Statistical checks of the three portable distributions, with fixed seeds and stated tolerances.

N = 2**20 samples; tolerances are about 5 standard errors (mean 5/sqrt(N) ~ 0.005, variance
5*sqrt(2/N) ~ 0.007, kurtosis 5*sqrt(24/N) ~ 0.024, correlations 5/sqrt(N) ~ 0.005).
"""

import math

import pytest
import torch

import zokernels

N = 2**20
SE = 1 / math.sqrt(N)


def _z(seed, key=0, dist="gaussian", offset=0):
    return zokernels.noise(N, seed, key=key, offset=offset, dist=dist).double()


def _moments(z):
    m = z.mean()
    c = z - m
    var = (c**2).mean()
    return m.item(), var.item(), ((c**3).mean() / var**1.5).item(), ((c**4).mean() / var**2).item()


@pytest.mark.parametrize("dist,kurtosis", [("gaussian", 3.0), ("uniform", 1.8), ("rademacher", 1.0)])
@pytest.mark.parametrize("seed", [0, 2**63 + 5])
def test_moments(dist, kurtosis, seed):
    mean, var, skew, kurt = _moments(_z(seed, dist=dist))
    assert abs(mean) < 5 * SE
    assert abs(var - 1) < 5 * math.sqrt(2) * SE
    assert abs(skew) < 5 * math.sqrt(6) * SE
    assert abs(kurt - kurtosis) < 5 * math.sqrt(24) * SE


def test_gaussian_cdf():
    """Kolmogorov-Smirnov distance to the standard normal CDF below the 1% critical value 1.63/sqrt(N)."""
    z = _z(7).sort().values
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    i = torch.arange(1, N + 1, dtype=torch.float64)
    d = torch.maximum(i / N - cdf, cdf - (i - 1) / N).max().item()
    assert d < 1.63 * SE
    assert abs((z.abs() > 1.959964).double().mean().item() - 0.05) < 5 * math.sqrt(0.05 * 0.95) * SE


@pytest.mark.parametrize("dist", ["gaussian", "uniform", "rademacher"])
def test_independence_across_seeds_keys_and_lanes(dist):
    a = _z(1, key=0, dist=dist)
    others = {"seed": _z(2, key=0, dist=dist), "key": _z(1, key=1, dist=dist), "seed_hi": _z(1 + 2**32, dist=dist)}
    for what, b in others.items():
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 5 * SE, what
        if dist != "rademacher":  # its squares are all 1
            assert abs(torch.corrcoef(torch.stack([a**2, b**2]))[0, 1].item()) < 5 * SE, what
    # neighbours share a Philox call (lanes) or a Box-Muller pair: no linear or square correlation
    for lag in (1, 2, 3, 4):
        x, y = a[:-lag], a[lag:]
        assert abs(torch.corrcoef(torch.stack([x, y]))[0, 1].item()) < 5 * SE, lag
        if dist != "rademacher":
            assert abs(torch.corrcoef(torch.stack([x**2, y**2]))[0, 1].item()) < 5 * SE, lag


def test_gaussian_support():
    """The spec Gaussian is bounded by sqrt(-2 ln 2**-24) ~ 5.77 and attains both signs of large values."""
    z = _z(3)
    assert z.abs().max().item() <= math.sqrt(-2 * math.log(2**-24)) + 1e-6
    assert z.max().item() > 4.0 and z.min().item() < -4.0
