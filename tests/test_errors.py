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


@pytest.mark.parametrize("backend", [None, "torch", "cpu"])
def test_gaussian_fast_on_cpu_says_it_is_cuda_only(monkeypatch, backend):
    """On a CPU tensor (no Triton interpreter) the message is about the dist, not about Triton's needs."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("ZOKERNELS_BACKEND", raising=False)
    expected = r"dist='gaussian-fast' is an approximate stream that exists only on CUDA devices.*use dist='gaussian'"
    with pytest.raises(ValueError, match=expected):
        zokernels.noise(3, 1, dist="gaussian-fast", backend=backend)
    _raises(ValueError, expected, zokernels.perturb_, [torch.ones(3)], 1, 0.1, keys=[0], dist="gaussian-fast",
            backend=backend)


def test_same_key_with_overlapping_ranges_is_refused():
    """Two tensors with one key would get the same noise where their element ranges overlap."""
    a, b, c = torch.ones(4), torch.ones(6), torch.ones(3)
    _raises(ValueError, r"tensors\[0\] and tensors\[2\] both have key 7 .* \[0, 4\) and \[0, 3\)", zokernels.perturb_,
            [a, b, c], 1, 0.1, keys=[7, 8, 7])
    _raises(ValueError, r"tensors\[0\] and tensors\[1\] both have key 7 .* \[5, 9\) and \[2, 8\)", zokernels.update_,
            [a, b], [1], [0.1], keys=[7, 7], offsets=[5, 2])


def test_same_key_with_disjoint_ranges_is_one_tensor_in_shards():
    whole = torch.zeros(10)
    zokernels.perturb_(whole, 3, 1.0, keys=5)
    shards = [torch.zeros(4), torch.zeros(0), torch.zeros(6)]
    zokernels.perturb_(shards, 3, 1.0, keys=[5, 5, 5], offsets=[0, 4, 4])
    assert torch.equal(torch.cat(shards), whole)


class _Subclass(torch.Tensor):
    pass


class _NoStorage(torch.Tensor):
    def data_ptr(self):
        return 0


@pytest.mark.parametrize("make", [
    lambda: torch.Tensor._make_subclass(_Subclass, torch.zeros(4)),
    lambda: torch.Tensor._make_subclass(_NoStorage, torch.zeros(4)),
    lambda: torch.nn.Parameter(torch.Tensor._make_subclass(_Subclass, torch.zeros(4))),
], ids=["subclass", "data_ptr-0", "parameter-of-subclass"])
def test_tensor_subclasses_are_refused(make):
    bad = make()
    _raises(TypeError, r"tensors\[1\] is a _(Subclass|NoStorage), a torch.Tensor subclass.*to_local", zokernels.perturb_,
            [torch.ones(3), bad], 1, 0.1, keys=[0, 1])
    _raises(TypeError, r"sources\[0\] is a _", zokernels.perturb_, [torch.ones(4)], 1, 0.1, keys=[0], sources=[bad])


def test_fake_tensors_are_refused():
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake = FakeTensorMode().from_tensor(torch.zeros(4))
    with pytest.raises(TypeError, match=r"tensors\[0\] is a FakeTensor, a torch.Tensor subclass"):
        zokernels.perturb_([fake], 1, 0.1, keys=[0])


def test_parameters_are_plain_enough():
    p = torch.nn.Parameter(torch.zeros(5))
    zokernels.perturb_([p], 2, 1.0, keys=[0])
    assert torch.equal(p.detach(), zokernels.noise(5, 2))


DTENSOR = """
import os, tempfile, torch, torch.distributed as dist, zokernels
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
store = dist.FileStore(os.path.join(tempfile.mkdtemp(), "store"), 1)
dist.init_process_group("gloo", store=store, rank=0, world_size=1)
d = distribute_tensor(torch.zeros(8), init_device_mesh("cpu", (1,)), [Shard(0)])
for t in (d, torch.nn.Parameter(d)):
    try:
        zokernels.perturb_([t], 1, 0.1, keys=[0])
    except TypeError as e:
        print("TypeError:", e)
zokernels.perturb_([d.to_local()], 1, 0.1, keys=[0])  # the local shard is a plain tensor
print(torch.equal(d.to_local(), zokernels.noise(8, 1, dist="gaussian") * torch.tensor(0.1)))
dist.destroy_process_group()
"""


def test_dtensor_gets_a_type_error_not_a_crash():
    """Before, data_ptr() of a DTensor was 0 and the C++ loops wrote through it: SIGSEGV."""
    env = {k: v for k, v in os.environ.items() if k != "ZOKERNELS_BACKEND"}
    out = subprocess.run([sys.executable, "-c", DTENSOR], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stdout
    assert all(line.startswith("TypeError: tensors[0] is a DTensor, a torch.Tensor subclass") for line in lines[:2])
    assert lines[2] == "True"


def test_every_argument_is_named():
    w = [torch.ones(3)]
    _raises(TypeError, "tensors must be a tensor or a sequence of tensors, got int", zokernels.perturb_, 5, 1, 0.1,
            keys=[0])
    _raises(TypeError, "seeds must be a sequence, got int", zokernels.update_, w, 5, [0.1], keys=[0])
    _raises(TypeError, "coeffs must be a sequence, got float", zokernels.update_, w, [5], 0.1, keys=[0])
    _raises(TypeError, r"^seed must be an integer", zokernels.perturb_, w, 1.0, 0.1, keys=[0])
    _raises(TypeError, r"^scale must be a real number", zokernels.perturb_, w, 1, "x", keys=[0])
    _raises(TypeError, r"coeffs\[1\] must be a real number", zokernels.update_, w, [1, 2], [0.1, None], keys=[0])
    _raises(TypeError, r"sources\[0\] has dtype torch.int32", zokernels.perturb_, w, 1, 0.1, keys=[0],
            sources=[torch.ones(3, dtype=torch.int32)])
    with pytest.raises(ValueError, match=r"shape\[1\] = -1 is out of range"):
        zokernels.noise((3, -1), 1)
    with pytest.raises(TypeError, match="shape must be a sequence"):
        zokernels.noise(None, 1)


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
