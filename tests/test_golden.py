"""Every backend reproduces the committed golden vectors of every spec version bit for bit; the C++ constants
equal spec.py.

A change to a stream fails here: streams never change; a new one is a new spec version (spec.SPEC_VERSIONS,
tests/golden/generate.py).
"""

import json
import pathlib

import pytest
import torch

import zokernels
from zokernels import _cpu, spec

from conftest import bits, device_for
from golden.generate import UPDATE_COEFFS, UPDATE_KEY, UPDATE_OFFSET, UPDATE_SEEDS, initial_weights

GOLDEN = {v: json.loads((pathlib.Path(__file__).parent / "golden" / f"noise_v{v}.json").read_text())
          for v in spec.SPEC_VERSIONS}
NOISE_CASES = [(v, case) for v in spec.SPEC_VERSIONS for case in GOLDEN[v]["noise"]]
UPDATE_CASES = [(v, case) for v in spec.SPEC_VERSIONS for case in GOLDEN[v]["update"]]


def _hex(t: torch.Tensor) -> str:
    width = t.element_size() * 2
    mask = (1 << (8 * t.element_size())) - 1
    return " ".join(f"{int(v) & mask:0{width}x}" for v in bits(t).reshape(-1))


def test_golden_files_match_spec_versions():
    assert spec.SPEC_VERSION == zokernels.SPEC_VERSION == 1  # the default stream never changes
    assert [GOLDEN[v]["spec_version"] for v in spec.SPEC_VERSIONS] == list(spec.SPEC_VERSIONS) == [1, 2]


def _ids(vc):
    v, c = vc
    return f"v{v}-{c['dist']}-" + (f"s{c['seed']}-o{c['offset']}" if "seed" in c else f"{c['dtype']}-{c['rounding']}")


@pytest.mark.parametrize("version,case", NOISE_CASES, ids=[_ids(vc) for vc in NOISE_CASES])
def test_noise_golden(backend, version, case):
    n = len(case["bits"].split())
    kw = {} if version == 1 else {"spec_version": version}  # version 1 is what callers get by default
    z = zokernels.noise(n, case["seed"], key=case["key"], offset=case["offset"], dist=case["dist"],
                        device=device_for(backend), backend=backend, **kw)
    assert _hex(z) == case["bits"]


@pytest.mark.parametrize("version,case", UPDATE_CASES, ids=[_ids(vc) for vc in UPDATE_CASES])
def test_update_golden(backend, version, case):
    w = initial_weights().to(getattr(torch, case["dtype"])).to(device_for(backend))
    kw = {} if version == 1 else {"spec_version": version}
    zokernels.update_(w, UPDATE_SEEDS, UPDATE_COEFFS, keys=UPDATE_KEY, offsets=UPDATE_OFFSET, dist=case["dist"],
                      rounding=case["rounding"], backend=backend, **kw)
    assert _hex(w) == case["bits"]


@pytest.mark.skipif(not _cpu.available(), reason="C++ extension not built")
def test_cpp_constants_equal_spec():
    c = _cpu.require().spec_constants()
    assert c["SPEC_VERSION"] == spec.SPEC_VERSION
    for name in ("PHILOX_KEY_A", "PHILOX_KEY_B", "PHILOX_ROUND_A", "PHILOX_ROUND_B", "PHILOX_ROUNDS", "TAG_NOISE",
                 "TAG_ROUNDING", "PHILOX_ROUNDS_V2", "RADEMACHER_V2_ELEMENTS", "GAUSSIAN_V2_BIAS"):
        assert c[name] == getattr(spec, name), name
    assert c["F32_BITS"] == spec.F32_BITS
    assert [tuple(row) for row in c["GAUSSIAN_V2_COEFFS"]] == list(spec.GAUSSIAN_V2_COEFFS)
