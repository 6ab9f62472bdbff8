"""zofed.seeds: the schedule is pure integer hashing, torch-free, and distinct where it must be."""

import subprocess
import sys

import pytest

from zofed.seeds import SHARED, step_seed
from zokernels.seeding import derive_seed, splitmix64


def test_splitmix64_known_values():
    # splitmix64 from state 0: the first outputs of the reference generator (Vigna's splitmix64.c)
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    assert splitmix64(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4


def test_schedule_is_deterministic_and_distinct():
    seeds = {step_seed(7, t, c, j) for t in range(50) for c in (0, 1, 2, SHARED) for j in range(3)}
    assert len(seeds) == 50 * 4 * 3
    assert step_seed(7, 3, 1, 0) == step_seed(7, 3, 1, 0) == derive_seed(7, 3, 1, 0)
    assert step_seed(7, 3) != step_seed(8, 3)
    assert all(0 <= s < 2**64 for s in seeds)


@pytest.mark.parametrize("kw", [dict(run_seed=-1), dict(step=-1), dict(client=2**32), dict(index=-2),
                                dict(step=1.0), dict(run_seed=True), dict(run_seed=2**64)])
def test_bad_schedule_inputs(kw):
    args = dict(run_seed=1, step=0, client=0, index=0)
    args.update(kw)
    with pytest.raises(ValueError, match=next(iter(kw))):
        step_seed(**args)


def test_seeds_and_spec_import_no_torch():
    code = ("import sys, zofed.seeds, zokernels, zokernels.spec, zokernels.seeding; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
