"""The seed schedule: pure integer hashing of (run seed, step, client, perturbation index).

No torch RNG anywhere: the parameter server, every client and an orbit replay derive the same
64-bit seeds from the same integers (splitmix64 chaining, zokernels.seeding).
"""

from __future__ import annotations

from zokernels.seeding import derive_seed

SHARED = 2**32 - 1  # the "client" of a seed every client shares (FeedSign's per-step direction)


def step_seed(run_seed: int, step: int, client: int = SHARED, index: int = 0) -> int:
    """The seed of perturbation `index` at `step`, for `client` (or SHARED for one seed all use)."""
    for name, value, top in (("run_seed", run_seed, 2**64 - 1), ("step", step, 2**63 - 1),
                             ("client", client, 2**32 - 1), ("index", index, 2**32 - 1)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            raise ValueError(f"{name} must be an integer in [0, {top}], got {value!r}")
    return derive_seed(run_seed, step, client, index)


POOL = 2**64 - 1  # the domain word of pool seeds, so they never equal a 4-part step seed by construction


def pool_seed(run_seed: int, index: int) -> int:
    """Seed `index` of a FedKSeed-style pool of candidates fixed for the whole run."""
    return derive_seed(run_seed, POOL, index)


def unit(*parts: int) -> float:
    """A uniform number in [0, 1) (53 bits) hashed from integers: client sampling, dropouts, latencies,
    tie breaks. The same everywhere, and independent of any generator's state."""
    return (derive_seed(*parts) >> 11) * 2.0**-53
