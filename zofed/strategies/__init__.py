"""Federated ZO strategies, one file each, and their registry (base.STRATEGIES, base.ROUNDS): what a client sends,
how the server aggregates, what every replica applies. Torch-free. See base.py for the interface; a new strategy is
one file whose class is decorated with @register (a round algorithm's file calls register_round), imported here.
"""

from .base import (NON_NEGATIVE, POSITIVE, POSITIVE_INT, ROUNDS, STRATEGIES, CheckedConfig, Option, Round,
                   RoundAlgorithm, Steps, Strategy, expect_upload, field_error, make, register, register_round,
                   run_label)
from .dp_feedsign import DPFeedSign
from .fedkseed import FedKSeed
from .fedmezo import FedMeZO, FedMeZOConfig
from .feedsign import FeedSign
from .zo_fedsgd import ZOFedSGD
from .zowarmup import ZOWarmUp, ZOWarmUpConfig

__all__ = ["NON_NEGATIVE", "POSITIVE", "POSITIVE_INT", "ROUNDS", "STRATEGIES", "CheckedConfig",
           "DPFeedSign", "FedKSeed", "FedMeZO", "FedMeZOConfig", "FeedSign", "Option", "Round", "RoundAlgorithm",
           "Steps", "Strategy", "ZOFedSGD", "ZOWarmUp", "ZOWarmUpConfig", "expect_upload", "field_error", "make",
           "register", "register_round", "run_label"]
