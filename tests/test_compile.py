"""The ops are torch.library custom ops with fake implementations: torch.compile traces them whole."""

import pytest
import torch

import zokernels


def test_compiled_update_matches_eager():
    def step(ws, seed):
        zokernels.perturb_(ws, seed, 1e-3, keys=[0, 1])
        zokernels.update_(ws, [seed, seed + 1], [-2e-3, 5e-4], keys=[0, 1], rounding="stochastic")
        return ws[0].sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    a = [torch.randn(33, generator=torch.Generator().manual_seed(0)), torch.ones(5).bfloat16()]
    b = [t.clone() for t in a]
    compiled(a, 7)
    step(b, 7)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_compiled_noise_matches_eager():
    compiled = torch.compile(lambda: zokernels.noise((3, 5), 11, key=2, offset=9) * 2, fullgraph=True,
                             backend="aot_eager")
    assert torch.equal(compiled(), zokernels.noise((3, 5), 11, key=2, offset=9) * 2)


def test_ops_are_registered_with_schemas():
    assert "Tensor(a0!)[] tensors" in str(torch.ops.zokernels.update_.default._schema)
    assert torch.ops.zokernels.noise.default._schema.returns[0].type.kind() == "TensorType"


def test_compiled_update_raises_non_finite_error():
    """The check runs inside the op, so a compiled graph raises the same error as eager code."""
    compiled = torch.compile(lambda ws: zokernels.perturb_(ws, 1, 1e5, keys=[0, 1]), fullgraph=True,
                             backend="aot_eager")
    ws = [torch.ones(3), torch.full((700,), 60000.0, dtype=torch.float16)]
    with pytest.raises(zokernels.NonFiniteError, match=r"tensors\[1\] \(700,\) torch.float16") as info:
        compiled(ws)
    assert info.value.indices == [1]
