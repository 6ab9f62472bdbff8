"""Every backend reproduces the committed golden vectors bit for bit; the C++ constants equal spec.py.

A change to the stream fails here: bump spec.SPEC_VERSION and regenerate (tests/golden/generate.py).
"""

import json
import pathlib

import pytest
import torch

import zokernels
from zokernels import _cpu, spec

from conftest import bits, device_for
from golden.generate import UPDATE_COEFFS, UPDATE_KEY, UPDATE_OFFSET, UPDATE_SEEDS, initial_weights

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / f"noise_v{spec.SPEC_VERSION}.json").read_text())


def _hex(t: torch.Tensor) -> str:
    width = t.element_size() * 2
    mask = (1 << (8 * t.element_size())) - 1
    return " ".join(f"{int(v) & mask:0{width}x}" for v in bits(t).reshape(-1))


def test_golden_file_matches_spec_version():
    assert GOLDEN["spec_version"] == spec.SPEC_VERSION == zokernels.SPEC_VERSION


@pytest.mark.parametrize("case", GOLDEN["noise"], ids=lambda c: f"{c['dist']}-s{c['seed']}-o{c['offset']}")
def test_noise_golden(backend, case):
    n = len(case["bits"].split())
    z = zokernels.noise(n, case["seed"], key=case["key"], offset=case["offset"], dist=case["dist"],
                        device=device_for(backend), backend=backend)
    assert _hex(z) == case["bits"]


@pytest.mark.parametrize("case", GOLDEN["update"], ids=lambda c: f"{c['dist']}-{c['dtype']}-{c['rounding']}")
def test_update_golden(backend, case):
    w = initial_weights().to(getattr(torch, case["dtype"])).to(device_for(backend))
    zokernels.update_(w, UPDATE_SEEDS, UPDATE_COEFFS, keys=UPDATE_KEY, offsets=UPDATE_OFFSET, dist=case["dist"],
                      rounding=case["rounding"], backend=backend)
    assert _hex(w) == case["bits"]


@pytest.mark.skipif(not _cpu.available(), reason="C++ extension not built")
def test_cpp_constants_equal_spec():
    c = _cpu.require().spec_constants()
    assert c["SPEC_VERSION"] == spec.SPEC_VERSION
    for name in ("PHILOX_KEY_A", "PHILOX_KEY_B", "PHILOX_ROUND_A", "PHILOX_ROUND_B", "PHILOX_ROUNDS", "TAG_NOISE",
                 "TAG_ROUNDING"):
        assert c[name] == getattr(spec, name), name
    assert c["F32_BITS"] == spec.F32_BITS
