"""Bad input gets a clear error naming the problem, and leaves the tensors untouched."""

import os
import subprocess
import sys

import pytest
import torch

import zokernels

W = torch.zeros(4)


def _raises(exc, match, fn, *args, **kw):
    before = [t.clone() for t in args[0]] if args and isinstance(args[0], list) else None
    with pytest.raises(exc, match=match):
        fn(*args, **kw)
    if before is not None:
        for a, b in zip(args[0], before):
            if a.device.type != "meta" and a.layout == torch.strided:
                assert torch.equal(a, b), "a failed call modified a tensor"


@pytest.mark.parametrize("bad,exc,match", [
    (torch.zeros(4, 4).t(), ValueError, "not contiguous"),
    (torch.zeros(4, device="meta"), ValueError, "meta tensor"),
    (torch.zeros(4, dtype=torch.int32), TypeError, "dtype torch.int32"),
    (torch.zeros(4, dtype=torch.float64), TypeError, "dtype torch.float64"),
    (torch.zeros(4).to_sparse(), TypeError, "layout"),
], ids=["noncontiguous", "meta", "int", "float64", "sparse"])
def test_bad_tensors(bad, exc, match):
    _raises(exc, match, zokernels.perturb_, [torch.ones(3), bad], 1, 0.1, keys=[0, 1])


@pytest.mark.parametrize("seed,exc,match", [
    (-1, ValueError, "seed.*out of range"), (2**64, ValueError, "seed.*out of range"),
    (1.5, TypeError, "seed.*integer"), (True, TypeError, "seed.*integer"), ("7", TypeError, "seed.*integer"),
])
def test_bad_seeds(seed, exc, match):
    _raises(exc, match, zokernels.perturb_, [torch.ones(3)], seed, 0.1, keys=[0])
    _raises(exc, match, zokernels.noise, 3, seed)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_coefficients(scale):
    _raises(ValueError, "non-finite", zokernels.perturb_, [torch.ones(3)], 1, scale, keys=[0])
    _raises(ValueError, "non-finite", zokernels.update_, [torch.ones(3)], [1, 2], [0.1, scale], keys=[0])


def test_mismatched_lengths():
    _raises(ValueError, "2 keys for 1 tensors", zokernels.perturb_, [torch.ones(3)], 1, 0.1, keys=[0, 1])
    _raises(ValueError, "2 seeds but 1 coeffs", zokernels.update_, [torch.ones(3)], [1, 2], [0.1], keys=[0])
    _raises(ValueError, "1 offsets for 2 tensors", zokernels.perturb_, [torch.ones(3), torch.ones(2)], 1, 0.1,
            keys=[0, 1], offsets=[0])
    with pytest.raises(TypeError, match="keys"):
        zokernels.perturb_([torch.ones(3)], 1, 0.1)  # keys is required


def test_out_of_range_keys_and_offsets():
    _raises(ValueError, r"keys\[0\].*out of range", zokernels.perturb_, [torch.ones(3)], 1, 0.1, keys=[2**32])
    _raises(ValueError, r"offsets\[0\].*out of range", zokernels.perturb_, [torch.ones(3)], 1, 0.1, keys=[0],
            offsets=[-1])
    _raises(ValueError, "2\\*\\*62", zokernels.perturb_, [torch.ones(3)], 1, 0.1, keys=[0], offsets=[2**62 - 1])
    with pytest.raises(ValueError, match="key.*out of range"):
        zokernels.noise(3, 1, key=-1)


def test_unknown_names():
    _raises(ValueError, "unknown dist 'normal'", zokernels.perturb_, [torch.ones(3)], 1, 0.1, keys=[0], dist="normal")
    _raises(ValueError, "unknown rounding", zokernels.perturb_, [torch.ones(3)], 1, 0.1, keys=[0], rounding="up")
    _raises(ValueError, "unknown backend 'gpu'", zokernels.perturb_, [torch.ones(3)], 1, 0.1, keys=[0], backend="gpu")
    with pytest.raises(ValueError, match="gaussian-fast.*triton"):
        zokernels.noise(3, 1, dist="gaussian-fast", backend="torch")


def test_overlapping_tensors_are_refused():
    base = torch.ones(10)
    _raises(ValueError, "overlap in memory", zokernels.perturb_, [base[:6], base[4:]], 1, 0.1, keys=[0, 1])
    _raises(ValueError, "overlap in memory", zokernels.perturb_, [base, base], 1, 0.1, keys=[0, 1])


def test_backend_env_override(monkeypatch):
    monkeypatch.setenv("ZOKERNELS_BACKEND", "nope")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        zokernels.noise(3, 1)
    monkeypatch.setenv("ZOKERNELS_BACKEND", "torch")
    assert torch.equal(zokernels.noise(3, 1), zokernels.noise(3, 1, backend="torch"))


def test_missing_extension_fails_only_when_called():
    """With zokernels._C unimportable, import works, torch backend works, a CPU-kernel op explains itself."""
    code = (
        "import sys; sys.modules['zokernels._C'] = None\n"
        "import torch, zokernels\n"
        "assert 'cpu' not in zokernels.backends(), zokernels.backends()\n"
        "zokernels.perturb_([torch.ones(3)], 1, 0.1, keys=[0], backend='torch')\n"
        "try:\n"
        "    zokernels.perturb_([torch.ones(3)], 1, 0.1, keys=[0])\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ZOKERNELS_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "C++ CPU backend" in out.stdout and "make build" in out.stdout and "backend='torch'" in out.stdout
