"""DP-FeedSign (feedsign.txt Definition 3): FeedSign whose broadcast sign comes from the exponential mechanism."""

from __future__ import annotations

import math

from .. import aggregate as agg
from ..seeds import step_seed
from ..wire import Votes
from .base import NON_NEGATIVE, Option, register
from .feedsign import FeedSign

@register
class DPFeedSign(FeedSign):
    """feedsign.txt Definition 3: the broadcast sign is drawn by the exponential mechanism with privacy
    budget epsilon. Its randomness comes from the server's secret, which clients never see: a client that
    knew it could recompute the mechanism's coin and undo the privacy."""

    name = "dp-feedsign"
    options = (Option("dp_epsilon", float, 1.0, "privacy budget per step", valid=NON_NEGATIVE, keyword="epsilon"),)

    def __init__(self, *, lr, run_seed, epsilon: float):
        super().__init__(lr=lr, run_seed=run_seed)
        if not (epsilon >= 0 and math.isfinite(epsilon)):
            raise ValueError(f"dp epsilon must be a finite number >= 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def aggregate(self, step, ups, secret=None):
        if secret is None:
            raise ValueError("DP-FeedSign's mechanism needs the server's private secret (aggregate(..., secret=))")
        return Votes(step, (agg.dp_sign(self._signs(step, ups), self.epsilon, step_seed(secret, step)),))
