"""Server-side aggregation rules, as pure integer/float functions (no torch, no RNG state).

Randomness (tie breaks, the DP mechanism) comes from a 64-bit seed through splitmix64, so a run is
reproducible. For DP-FeedSign that seed must be the server's secret: a client that knows it could
undo the mechanism's randomization.
"""

from __future__ import annotations

import math
from typing import Sequence

from zokernels.seeding import derive_seed


def _signs(signs: Sequence[int]) -> list[int]:
    out = list(signs)
    if not out:
        raise ValueError("no votes to aggregate (a round needs at least one client)")
    for s in out:
        if s not in (1, -1):
            raise ValueError(f"a vote must be +1 or -1, got {s!r}")
    return out


def majority_sign(signs: Sequence[int], tie_seed: int) -> int:
    """FeedSign's Sign(sum_k Sign(p_k)) (feedsign.txt eq. 4); a tie, which 1 bit cannot carry as 0,
    goes to the low bit of derive_seed(tie_seed): deterministic and unbiased over steps."""
    total = sum(_signs(signs))
    if total:
        return 1 if total > 0 else -1
    return 1 if derive_seed(tie_seed) & 1 else -1


def dp_sign(signs: Sequence[int], epsilon: float, secret_seed: int) -> int:
    """DP-FeedSign (feedsign.txt Definition 3): +1 with probability p+ / (p+ + p-), p_pm = exp(eps q_pm / 4),
    q_pm = sum_k (1/2 pm s_k). That probability is sigmoid(eps * sum_k s_k / 2)."""
    if not (epsilon >= 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon}")
    total = sum(_signs(signs))
    x = epsilon * total / 2
    p_plus = 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))
    u = (derive_seed(secret_seed) >> 11) * 2.0**-53  # uniform in [0, 1), 53 bits
    return 1 if u < p_plus else -1


def _values(values: Sequence[float]) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError("no projections to aggregate (a round needs at least one client)")
    for v in out:
        if not math.isfinite(v):
            raise ValueError(f"a projection is {v}: refusing to aggregate non-finite values")
    return out


def mean(values: Sequence[float]) -> float:
    """ZO-FedSGD's average of projections (math.fsum: exact, independent of arrival order)."""
    vs = _values(values)
    return math.fsum(vs) / len(vs)


def median(values: Sequence[float]) -> float:
    """Robust aggregation when clients share a seed: the middle value (mean of the middle two)."""
    vs = sorted(_values(values))
    mid = len(vs) // 2
    return vs[mid] if len(vs) % 2 else (vs[mid - 1] + vs[mid]) / 2


def trimmed_mean(values: Sequence[float], trim: float) -> float:
    """Mean after dropping floor(trim * n) values at each end (0 <= trim < 0.5)."""
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    vs = sorted(_values(values))
    k = int(trim * len(vs))
    return math.fsum(vs[k: len(vs) - k]) / (len(vs) - 2 * k)
