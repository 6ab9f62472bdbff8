"""z depends only on (seed, key, global index, dist): not on tile size, threads, sharding or dtype."""

import pytest
import torch

import zokernels
from zokernels import _cpu

from conftest import DTYPES, PORTABLE_DISTS, available_backends, bits, device_for


@pytest.mark.parametrize("dist", PORTABLE_DISTS)
@pytest.mark.parametrize("offset", [0, 3, 2**31 - 10, 2**32 - 10, 2**62 - 64])
def test_shard_equals_slice_of_whole(backend, dist, offset):
    """noise at offset o + s equals elements s.. of the noise at offset o, for ragged shard boundaries
    (this also crosses 2**31 and 2**32 through the offset argument)."""
    dev = device_for(backend)
    whole = zokernels.noise(40, 5, key=2, offset=offset, dist=dist, device=dev, backend=backend)
    for start, stop in [(0, 1), (1, 6), (6, 7), (7, 23), (23, 40)]:
        part = zokernels.noise(stop - start, 5, key=2, offset=offset + start, dist=dist, device=dev, backend=backend)
        assert torch.equal(bits(part), bits(whole[start:stop])), (start, stop)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_sharded_update_equals_whole(backend, dtype, rounding):
    """Updating shards (with their global offsets) in one call equals updating the whole tensor."""
    dev = device_for(backend)
    w = (torch.randn(1000, generator=torch.Generator().manual_seed(1)) * 0.1).to(dtype).to(dev)
    whole = w.clone()
    zokernels.update_(whole, [3, 4], [0.01, -0.02], keys=7, rounding=rounding, backend=backend)
    cuts = [0, 1, 255, 256, 700, 1000]
    shards = [w[a:b].clone() for a, b in zip(cuts, cuts[1:])]
    zokernels.update_(shards, [3, 4], [0.01, -0.02], keys=[7] * len(shards), offsets=cuts[:-1], rounding=rounding,
                      backend=backend)
    assert torch.equal(bits(torch.cat(shards)), bits(whole))


def test_noise_independent_of_dtype(backend):
    """The same z drives an fp32, bf16 and fp16 update: with w = 0 and c = 1 each result is round(z)."""
    dev = device_for(backend)
    z = zokernels.noise(300, 11, key=4, device=dev, backend=backend)
    for dtype in DTYPES:
        w = torch.zeros(300, dtype=dtype, device=dev)
        zokernels.perturb_(w, 11, 1.0, keys=4, backend=backend)
        assert torch.equal(bits(w), bits(z.to(dtype))), dtype


@pytest.mark.skipif("triton" not in available_backends(), reason="triton backend not available")
@pytest.mark.parametrize("block", [1, 16, 64])
def test_triton_tile_size_invariance(block):
    from zokernels.triton import noise as tn

    dev = device_for("triton")
    ref = zokernels.noise(301, 9, key=1, offset=6, backend="torch")
    out = torch.empty(301, device=dev)
    tn.noise(out, 6, 9, 1, "gaussian", block=block)
    assert torch.equal(bits(out), bits(ref))
    w_ref = torch.linspace(-1, 1, 301).bfloat16()
    w = w_ref.clone().to(dev)
    zokernels.update_(w_ref, [9, 10], [0.1, 0.2], keys=1, offsets=6, rounding="stochastic", backend="torch")
    tn.update_([w], [9, 10], [0.1, 0.2], [1], [6], "gaussian", "stochastic", block=block)
    assert torch.equal(bits(w), bits(w_ref))


@pytest.mark.skipif(not _cpu.available(), reason="C++ extension not built")
@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_cpu_thread_count_invariance(threads):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        z = zokernels.noise(70_001, 3, key=8, offset=1, backend="cpu")
        ws = [torch.linspace(-2, 2, n).half() for n in (50_001, 3, 20_000)]
        zokernels.update_(ws, [1, 2, 3], [0.1, 0.2, -0.3], keys=[1, 2, 3], rounding="stochastic", backend="cpu")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(bits(z), bits(zokernels.noise(70_001, 3, key=8, offset=1, backend="torch")))
    ref = [torch.linspace(-2, 2, n).half() for n in (50_001, 3, 20_000)]
    zokernels.update_(ref, [1, 2, 3], [0.1, 0.2, -0.3], keys=[1, 2, 3], rounding="stochastic", backend="torch")
    for a, b in zip(ws, ref):
        assert torch.equal(bits(a), bits(b))


def test_multi_tensor_call_equals_separate_calls(backend):
    dev = device_for(backend)
    shapes = [(17,), (4, 4), (1,), (300,)] * 3
    ts = [torch.full(s, 0.5, device=dev).to(dt) for s, dt in zip(shapes, DTYPES * 4)]
    sep = [t.clone() for t in ts]
    zokernels.update_(ts, [5, 6], [0.1, -0.1], keys=list(range(len(ts))), backend=backend)
    for i, t in enumerate(sep):
        zokernels.update_(t, [5, 6], [0.1, -0.1], keys=i, backend=backend)
    for a, b in zip(ts, sep):
        assert torch.equal(bits(a), bits(b))


def test_keys_and_seeds_give_different_streams(backend):
    dev = device_for(backend)
    a = zokernels.noise(64, 1, key=0, device=dev, backend=backend)
    assert not torch.equal(a, zokernels.noise(64, 1, key=1, device=dev, backend=backend))
    assert not torch.equal(a, zokernels.noise(64, 2, key=0, device=dev, backend=backend))
    assert not torch.equal(a, zokernels.noise(64, 1 + 2**32, key=0, device=dev, backend=backend))  # high seed word
