"""zokernels: fused, bit-portable seeded-noise kernels for zeroth-order fine-tuning.

The noise contract (docs/noise.md, constants in zokernels.spec): z for element i of tensor `key`
under `seed` is a pure function of (seed, key, i, dist, SPEC_VERSION), identical bit for bit on the
C++ CPU, Triton and pure-torch backends.
"""

from .ops import backends, noise, perturb_, update_
from .optim import ZOSGD, ZOAdam, param_key, zo_param_groups
from .spec import SPEC_VERSION

__all__ = ["SPEC_VERSION", "ZOAdam", "ZOSGD", "backends", "noise", "param_key", "perturb_", "update_",
           "zo_param_groups"]
__version__ = "0.1.0"
