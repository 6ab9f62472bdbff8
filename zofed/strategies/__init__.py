"""Federated ZO strategies, one file each, and their registry (base.STRATEGIES): what a client sends, how the
server aggregates, what every replica applies. Torch-free. See base.py for the interface; a new strategy is
one file whose class is decorated with @register and imported here; round algorithms register_round.
"""

from .base import (NON_NEGATIVE, POSITIVE, POSITIVE_INT, ROUNDS, STRATEGIES, Option, RoundAlgorithm, Steps, Strategy,
                   field_error, make, register, register_round, run_label)
from .broadcasts import Broadcasts
from .dp_feedsign import DPFeedSign
from .fedkseed import FedKSeed
from .feedsign import FeedSign
from .zo_fedsgd import ZOFedSGD

__all__ = ["NON_NEGATIVE", "POSITIVE", "POSITIVE_INT", "ROUNDS", "STRATEGIES", "Broadcasts", "DPFeedSign", "FedKSeed",
           "FeedSign", "Option", "RoundAlgorithm", "Steps", "Strategy", "ZOFedSGD", "field_error", "make", "register",
           "register_round", "run_label"]
