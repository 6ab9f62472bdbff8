"""zokernels: fused, bit-portable seeded-noise kernels for zeroth-order fine-tuning.

The noise contract (docs/noise.md, constants in zokernels.spec): z for element i of tensor `key`
under `seed` is a pure function of (seed, key, i, dist, SPEC_VERSION), identical bit for bit on the
C++ CPU, Triton and pure-torch backends.

`zokernels.spec` and `zokernels.seeding` import no torch, so torch-free code (zofed's parameter
server) can use them; the ops and optimizers load torch on first use.
"""

from .spec import SPEC_VERSION

_LAZY = {
    "backends": "ops", "noise": "ops", "perturb_": "ops", "update_": "ops", "NonFiniteError": "ops",
    "ZOSGD": "optim", "ZOAdam": "optim", "zo_param_groups": "optim", "Engine": "engine", "param_key": "engine",
}

__all__ = ["SPEC_VERSION", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'zokernels' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
