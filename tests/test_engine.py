"""The perturbation engine in one process: slots and pieces, launches per (param group, device, dtype), tied
weights, shard offsets against noise of the whole tensor, DTensors on a 1-process gloo mesh (accepted
placements train like plain tensors; the others are refused by name, never a crash), and the public API
zofed's Replica uses. Multi-process sharding: tests/test_sharded.py."""

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

import zokernels
from zokernels import ops
from zokernels.engine import Engine, param_key, shard_parts


def _mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)


def _digest(m):
    return [p.detach().clone() for p in m.parameters()]


def test_pieces_are_the_trainable_parameters_keyed_by_name_at_offset_zero():
    m = _mlp()
    m[0].bias.requires_grad_(False)
    eng = Engine(m)
    assert eng.names == ["0.weight", "2.weight", "2.bias"]
    pieces = eng.pieces()
    assert [(p.key, p.offset, p.slot) for p in pieces] == [(param_key(n), 0, i) for i, n in enumerate(eng.names)]
    assert all(p.tensor.data_ptr() == q.data_ptr() for p, q in zip(pieces, [m[0].weight, m[2].weight, m[2].bias]))


def test_a_tied_weight_is_one_slot_named_by_its_first_name_and_perturbed_in_every_owner():
    torch.manual_seed(0)
    emb, head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    m = nn.Sequential(emb, head)
    eng = Engine(m, shadow=True)
    assert eng.names == ["0.weight"] and len(eng.pieces()) == 1
    x = torch.arange(10)
    w = emb.weight.detach().clone()
    with eng.running("test"):
        got = eng.perturbed(lambda: m(x), seed=5, scale=0.1)
    z = ops.noise(w.shape, 5, key=param_key("0.weight"))
    want = nn.functional.embedding(x, w + 0.1 * z) @ (w + 0.1 * z).t()
    assert torch.equal(got, want)
    assert torch.equal(emb.weight, w)  # shadow mode: the weights were never written


def test_one_update_launch_per_param_group_device_and_dtype(monkeypatch):
    m = _mlp()
    m[2].to(torch.bfloat16)
    calls = []
    real = ops.update_
    monkeypatch.setattr(ops, "update_", lambda ts, *a, **k: calls.append(tuple(str(t.dtype) for t in ts)) or real(ts, *a, **k))
    eng = Engine(m)
    eng.apply([1, 2], [0.1, -0.2])
    assert sorted(calls) == [("torch.bfloat16",) * 2, ("torch.float32",) * 2]
    calls.clear()
    eng = Engine([[("0.weight", m[0].weight)], [("0.bias", m[0].bias), ("2.weight", m[2].weight)]])
    assert eng.update(lambda g: [(3, 0.5)]) == []
    assert sorted(calls) == [("torch.bfloat16",), ("torch.float32",), ("torch.float32",)]


def test_apply_is_bit_identical_to_one_update_per_pair_in_every_dtype():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        a, b = _mlp(dtype), _mlp(dtype)
        Engine(a).apply([11, 12, 13], [1e-2, -3e-3, 5e-3])
        for s, c in [(11, 1e-2), (12, -3e-3), (13, 5e-3)]:
            for n, p in b.named_parameters():
                ops.update_([p.data], [s], [c], keys=[param_key(n)])
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_evaluate_pair_and_projection_equal_the_optimizers():
    m = _mlp()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    closure = lambda: m(x).square().mean()  # noqa: E731
    opt = zokernels.ZOSGD(m, lr=0.0, eps=1e-3, mode="shadow")
    want = opt.evaluate_pair(9, closure), opt.projection(9, closure)
    opt.close()
    start = _digest(m)
    eng = Engine(m, shadow=True)
    assert (eng.evaluate_pair(9, 1e-3, closure), eng.projection(9, 1e-3, closure)) == want
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), start))
    eng.close()
    with pytest.raises(RuntimeError, match="shadow=True"):
        Engine(m).evaluate_pair(9, 1e-3, closure)


def test_a_model_carrying_shadow_hooks_deep_copies_into_an_independent_model():
    m = _mlp()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    opt = zokernels.ZOSGD(m, lr=1e-2, eps=1e-3, mode="shadow")
    twin = copy.deepcopy(m)  # the hooks' engine holds the model's lock: "cannot pickle '_thread.lock'" before
    assert torch.equal(twin(x), m(x))
    # the copy's hooks serve the copy (its own slots, its own lock): inactive while the original steps, ...
    seen = opt.evaluate_pair(3, lambda: (m(x), twin(x)))
    assert not torch.equal(seen[0][0], seen[1][0]) and torch.equal(seen[0][1], seen[1][1])
    assert torch.equal(seen[0][1], m(x))
    # ... and training the copy with its own optimizer (while the original is mid-call) is training the original
    closure = lambda model: (lambda: model(x).square().mean())  # noqa: E731
    twin_opt = zokernels.ZOSGD(twin, lr=1e-2, eps=1e-3, mode="shadow")
    start = _digest(m)
    with opt.engine.running("the original's call"):
        twin_opt.step(closure(twin))
    opt.step(closure(m))
    assert not torch.equal(m[0].weight, start[0])
    assert all(torch.equal(p, q) for p, q in zip(twin.parameters(), m.parameters()))


def test_shard_row_offsets_reproduce_the_whole_tensors_noise():
    """A transcription of the layout: the pieces of a shard, filled with noise at their offsets, equal the
    same slice of the whole tensor's noise."""
    shape, key, seed = (5, 7), 77, 3
    whole = ops.noise(shape, seed, key=key)
    for dim, start, stop in [(0, 2, 4), (0, 4, 5), (0, 5, 5), (1, 3, 6), (1, 6, 7), (1, 0, 0)]:
        want = whole[start:stop] if dim == 0 else whole[:, start:stop]
        got = torch.empty_like(want)
        for part, off in shard_parts(shape, dim, start, got.shape[0]):
            view = got if part is None else got[part]
            view.copy_(ops.noise(view.shape, seed, key=key, offset=off))
        assert torch.equal(got, want), (dim, start, stop)
    # a 3-D weight sharded on dim 1: per leading index, a block of whole trailing rows
    whole = ops.noise((2, 6, 3), seed, key=key)
    got = torch.empty(2, 2, 3)
    for part, off in shard_parts((2, 6, 3), 1, 4, 2):
        got[part].copy_(ops.noise((2, 3), seed, key=key, offset=off))
    assert torch.equal(got, whole[:, 4:6])


def test_other_tensor_subclasses_are_refused_by_name():
    class Sub(torch.Tensor):
        pass

    m = _mlp()
    m[2].bias = nn.Parameter(torch.zeros(3).as_subclass(Sub))
    with pytest.raises(TypeError, match="parameter '2.bias' is a Sub, a torch.Tensor subclass"):
        Engine(m)


# ---------------------------------------------------------------- DTensors on a 1-process gloo mesh


@pytest.fixture(scope="module")
def mesh():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def _distributed(m, mesh, placements):
    from torch.distributed.tensor import distribute_tensor

    for mod in (m[0], m[2]):
        for n, p in list(mod.named_parameters(recurse=False)):
            pl = placements[0] if p.ndim == 2 or len(placements) == 1 else placements[1]
            setattr(mod, n, nn.Parameter(distribute_tensor(p.detach(), mesh, [pl])))
    return m


def _replicated_loss(m, x):
    from torch.distributed.tensor.experimental import implicit_replication

    with implicit_replication():  # the plain input meets DTensor weights
        out = m(x)
    return out.full_tensor().square().mean()


@pytest.mark.parametrize("mode", ["inplace", "shadow"])
def test_dtensor_parameters_train_like_plain_ones(mesh, mode):
    from torch.distributed.tensor import Replicate, Shard

    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    want = _mlp()
    opt = zokernels.ZOSGD(want, lr=1e-2, eps=1e-3, mode=mode, momentum=0.5, seed=3)
    for _ in range(3):
        opt.step(lambda: want(x).square().mean())
    for placements in ([Shard(0)], [Shard(1), Shard(0)], [Replicate()]):
        m = _distributed(_mlp(), mesh, placements)
        opt = zokernels.ZOSGD(m, lr=1e-2, eps=1e-3, mode=mode, momentum=0.5, seed=3)
        for _ in range(3):
            opt.step(lambda: _replicated_loss(m, x))
        opt.close()
        assert all(torch.equal(p.full_tensor(), q) for p, q in zip(m.parameters(), want.parameters())), placements


def test_unsupported_placements_and_meshes_are_refused_by_name(mesh):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Shard, distribute_tensor

    m = _mlp()
    m[0].weight = nn.Parameter(DTensor.from_local(torch.randn(6, 4), mesh, [Partial()]))
    with pytest.raises(ValueError, match=r"parameter .0.weight. is a DTensor with placement Partial\(sum\)"):
        zokernels.ZOSGD(m)
    m = _mlp()
    m[0].weight = nn.Parameter(distribute_tensor(torch.randn(2, 3, 4), mesh, [Shard(2)]))
    with pytest.raises(ValueError, match=r"parameter '0.weight' is a DTensor with placement Shard\(dim=2\)"):
        zokernels.ZOSGD(m, mode="shadow")
    mesh2 = init_device_mesh("cpu", (1, 1))
    m = _mlp()
    m[2].bias = nn.Parameter(distribute_tensor(torch.zeros(3), mesh2, [Shard(0), Shard(0)]))
    with pytest.raises(ValueError, match=r"parameter '2.bias' is a DTensor on a 2-D device mesh"):
        zokernels.ZOAdam(m)


def test_kernels_refuse_a_dtensor_rather_than_crash(mesh):
    from torch.distributed.tensor import Shard, distribute_tensor

    t = distribute_tensor(torch.zeros(4, 3), mesh, [Shard(0)])
    with pytest.raises(TypeError, match="DTensor, a torch.Tensor subclass.*to_local"):
        zokernels.perturb_(t, 1, 0.1, keys=[1])
    with pytest.raises(TypeError, match="DTensor"):
        zokernels.update_([t], [1], [0.1], keys=[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_parameters_on_several_devices_are_one_launch_per_device():
    a, b = _mlp(), _mlp()
    b[2].cuda()
    Engine(a).apply([4, 5], [0.1, -0.05])
    Engine(b).apply([4, 5], [0.1, -0.05])
    assert all(torch.equal(p, q.cpu()) for p, q in zip(a.parameters(), b.parameters()))
