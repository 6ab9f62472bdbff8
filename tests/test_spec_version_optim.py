"""The optimizers draw their directions from the noise spec version they were built with (v2 opt-in)."""

import pytest
import torch
from torch import nn

import zokernels
from zokernels.optim import param_key
from zokernels.seeding import derive_seed

from conftest import bits


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1))


def _closure(model):
    x, y = torch.linspace(-1, 1, 24).reshape(4, 6), torch.tensor([[0.5], [-0.2], [0.1], [0.3]])
    return lambda: ((model(x) - y) ** 2).mean()


def _shadow_step_by_hand(model, lr, eps, seed, version):
    """One MeZO step written out with ops.noise of the given version: g = (L(w + eps z) - L(w - eps z)) / 2 eps,
    then w <- round(w - lr g z) as one update_ per parameter (what shadow mode writes)."""
    s = derive_seed(seed, 0, 0)
    named = list(model.named_parameters())
    z = {n: zokernels.noise(p.shape, s, key=param_key(n), spec_version=version) for n, p in named}
    closure = _closure(model)
    losses = []
    with torch.no_grad():
        for sign in (1, -1):
            saved = [p.clone() for _, p in named]
            for n, p in named:
                p.copy_(p + (sign * eps) * z[n])
            losses.append(closure().item())
            for (_, p), w in zip(named, saved):
                p.copy_(w)
        g = (losses[0] - losses[1]) / (2 * eps)
        zokernels.update_([p for _, p in named], [s], [-lr * g], keys=[param_key(n) for n, _ in named],
                          spec_version=version)


@pytest.mark.parametrize("version", [1, 2])
def test_shadow_step_uses_the_chosen_stream(version):
    model, ref = _model(), _model()
    opt = zokernels.ZOSGD(model, lr=0.1, eps=1e-3, mode="shadow", seed=7, spec_version=version)
    opt.step(_closure(model))
    _shadow_step_by_hand(ref, 0.1, 1e-3, 7, version)
    for (n, p), (_, r) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(bits(p), bits(r)), n


def test_versions_draw_different_directions_and_states_do_not_mix():
    a, b = _model(), _model()
    opt1 = zokernels.ZOSGD(a, lr=0.1, mode="inplace", seed=3)
    opt2 = zokernels.ZOSGD(b, lr=0.1, mode="inplace", seed=3, spec_version=2)
    opt1.step(_closure(a))
    opt2.step(_closure(b))
    assert not torch.equal(a[0].weight, b[0].weight)
    state = opt2.state_dict()
    assert state["zo"]["spec_version"] == 2
    with pytest.raises(ValueError, match="spec version 2.*spec_version=2"):
        zokernels.ZOSGD(_model(), spec_version=1).load_state_dict(state)
    zokernels.ZOSGD(_model(), spec_version=2).load_state_dict(state)


@pytest.mark.parametrize("bad", [0, 3, True, "2", None])
def test_unknown_spec_version_is_refused(bad):
    with pytest.raises(ValueError, match="spec_version"):
        zokernels.ZOSGD(_model(), spec_version=bad)
