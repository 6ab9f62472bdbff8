"""zofed.aggregate: FeedSign majority, DP-FeedSign's exponential mechanism, robust scalar rules."""

import math
import subprocess
import sys

import pytest

from zofed.aggregate import dp_sign, majority_sign, mean, median, trimmed_mean


def test_majority_and_deterministic_unbiased_ties():
    assert majority_sign([1, 1, -1], tie_seed=0) == 1
    assert majority_sign([-1, -1, 1, 1, -1], tie_seed=0) == -1
    ties = [majority_sign([1, -1], tie_seed=s) for s in range(2000)]
    assert ties == [majority_sign([1, -1], tie_seed=s) for s in range(2000)]
    assert abs(sum(ties)) < 5 * math.sqrt(2000)  # +1 and -1 about equally often


def test_one_reversed_client_of_five_cannot_flip_a_clear_majority():
    honest = [1, 1, 1, 1]
    assert majority_sign(honest + [-1], tie_seed=3) == 1


@pytest.mark.parametrize("epsilon,total", [(0.0, 3), (1.0, 1), (1.0, -3), (4.0, 5)])
def test_dp_sign_probability_matches_definition_3(epsilon, total):
    """Over 20000 secret seeds, P(+1) equals p+/(p+ + p-) within 5 standard errors."""
    k = 5
    n_plus = (k + total) // 2
    signs = [1] * n_plus + [-1] * (k - n_plus)
    q_plus = sum(0.5 + s for s in signs)
    q_minus = sum(0.5 - s for s in signs)
    p = math.exp(epsilon * q_plus / 4) / (math.exp(epsilon * q_plus / 4) + math.exp(epsilon * q_minus / 4))
    n = 20000
    freq = sum(dp_sign(signs, epsilon, s) == 1 for s in range(n)) / n
    assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-9


def test_dp_sign_extremes():
    assert all(dp_sign([1] * 5, 1e6, s) == 1 for s in range(100))
    with pytest.raises(ValueError, match="epsilon"):
        dp_sign([1], -1.0, 0)


def test_robust_scalars_resist_an_outlier():
    honest = [0.9, 1.0, 1.1, 1.05]
    assert mean(honest + [1e6]) > 1e5
    assert median(honest + [1e6]) == 1.05
    assert trimmed_mean(honest + [1e6], 0.2) == pytest.approx((1.0 + 1.05 + 1.1) / 3)
    assert median([1.0, 3.0]) == 2.0
    assert mean([0.1] * 10) == pytest.approx(0.1, abs=0)  # fsum: exact


@pytest.mark.parametrize("fn", [lambda v: mean(v), lambda v: median(v), lambda v: trimmed_mean(v, 0.1)])
def test_bad_inputs(fn):
    with pytest.raises(ValueError, match="no projections"):
        fn([])
    with pytest.raises(ValueError, match="non-finite"):
        fn([1.0, float("nan")])
    with pytest.raises(ValueError):
        majority_sign([0], tie_seed=0)
    with pytest.raises(ValueError, match="trim"):
        trimmed_mean([1.0], 0.5)


def test_aggregate_imports_no_torch():
    subprocess.run([sys.executable, "-c", "import sys, zofed.aggregate; assert 'torch' not in sys.modules"],
                   check=True, timeout=120)
