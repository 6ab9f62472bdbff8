"""FeedSign (feedsign.txt eq. 2-4): one shared seed per step, one bit up and one bit down."""

from __future__ import annotations

from .. import aggregate as agg
from ..seeds import SHARED, step_seed
from ..wire import Votes
from .base import _TIE, Steps, Strategy, _one, register

@register
class FeedSign(Strategy):
    """feedsign.txt eq. 2-4: one shared seed per step, each client votes sign(p_k) (1 bit), the server
    broadcasts the majority sign (1 bit), every replica steps w -= lr * sign * z."""

    name = "feedsign"
    default_lr = 4e-3  # tuned on the vader task: the size of each signed step along z

    def up(self, step, client, projection, byzantine=False):
        sign = 1 if projection >= 0 else -1  # a zero projection (flat loss) votes +1, as sign() >= 0 would
        return Votes(step, (-sign if byzantine else sign,))  # a Byzantine client always reverses

    def reply_shape(self):
        return Votes, 1

    def check(self, step, client, msg):
        m = _one(msg, Votes, step, f"client {client}")
        if m.count != 1:
            raise ValueError(f"client {client} sent {m.count} votes for one step")
        return m.signs[0]

    def _signs(self, step, ups):
        return [self.check(step, c, m) for c, m in sorted(ups.items())]

    def aggregate(self, step, ups, secret=None):
        return Votes(step, (agg.majority_sign(self._signs(step, ups), step_seed(self.run_seed, step, SHARED, _TIE)),))

    def ops(self, step, down):
        m = _one(down, Votes, step, "broadcast")
        if m.count != 1:
            raise ValueError(f"a FeedSign broadcast carries one sign, got {m.count}")
        return [("update", (self.seed_for(step, SHARED),), (-self.lr * m.signs[0],))]

    def history(self, first_step, downs):
        return Votes(first_step, [d.signs[0] for d in downs])

    def steps_of(self, history):
        if not isinstance(history, Votes):
            raise ValueError(f"a FeedSign history is a Votes message, got {type(history).__name__}")
        signs, first = history.signs, history.first_step
        return Steps(len(signs), lambda i: Votes(first + i, (signs[i],)))
