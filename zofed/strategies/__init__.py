"""Federated ZO strategies, one file each, and their registry (base.STRATEGIES): what a client sends, how the
server aggregates, what every replica applies. Torch-free. See base.py for the interface; a new strategy is
one file whose class is decorated with @register and imported here.
"""

from .base import STRATEGIES, Steps, Strategy, make, register
from .broadcasts import Broadcasts
from .dp_feedsign import DPFeedSign
from .fedkseed import FedKSeed
from .feedsign import FeedSign
from .zo_fedsgd import ZOFedSGD

__all__ = ["STRATEGIES", "Broadcasts", "DPFeedSign", "FedKSeed", "FeedSign", "Steps", "Strategy", "ZOFedSGD", "make",
           "register"]
