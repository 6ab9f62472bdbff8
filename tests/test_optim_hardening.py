"""ZOSGD / ZOAdam against MeZO with weight decay, the default decay exemptions, eval-mode forwards,
threads, overflow, and argument errors named at construction."""

import threading

import pytest
import torch
from torch import nn

import zokernels
from zokernels.optim import param_key


class OPTStyle(nn.Module):
    """Parameter names as in Hugging Face OPT (MeZO's models): biases and *_layer_norm are exempt from decay."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(6, 16)
        self.self_attn_layer_norm = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 1)
        self.to(dtype)

    def forward(self, x):
        return self.fc2(self.self_attn_layer_norm(torch.tanh(self.fc1(x))))


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=g)
    return x, x[:, :1] * 2 - x[:, 1:2]


def _closure(model, x, y):
    return lambda: nn.functional.mse_loss(model(x.to(next(model.parameters()).dtype)).float(), y)


def mezo_zo_update(named, g, seed, lr, weight_decay):
    """MeZO's zo_update (large_models/trainer.py), transcribed with our noise in place of torch.normal:
    w <- w - lr * (g z + wd w), no decay for names containing bias / layer_norm / layernorm."""
    for name, param in named:
        z = zokernels.noise(param.shape, seed, key=param_key(name))
        if "bias" not in name and "layer_norm" not in name and "layernorm" not in name:
            param.data = param.data - lr * (g * z + weight_decay * param.data)
        else:
            param.data = param.data - lr * (g * z)


LR, WD, EPS = 1e-2, 0.5, 1e-2  # a wrong decay (of w - eps z) is off by lr*wd*eps*z = 5e-5 z per step


@pytest.mark.parametrize("mode,fuse", [("inplace", False), ("inplace", True), ("shadow", False)])
def test_weight_decay_matches_mezo_update(mode, fuse):
    x, y = _data()
    ours, ref = OPTStyle(), OPTStyle()
    named = list(ref.named_parameters())
    opt = zokernels.ZOSGD(ours, lr=LR, eps=EPS, weight_decay=WD, mode=mode, fuse_steps=fuse, seed=2)
    for _ in range(10):
        opt.step(_closure(ours, x, y))
        mezo_zo_update(named, opt.last_projections[0], opt.last_seeds[0], LR, WD)
    opt.flush()
    # Same g and z: what is left is float32 rounding (the in-place perturbations round three times per step).
    for (n, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert (a - b).abs().max().item() < 2e-6, n


def _plain_momentum(named, g, seed, lr, wd, state, momentum=0.9):
    """ZO-SGD-MMT with decoupled decay of the restored weights: w *= 1 - lr wd; m = mu m - g z; w += lr m."""
    for name, p in named:
        z = zokernels.noise(p.shape, seed, key=param_key(name))
        if "bias" not in name and "layer_norm" not in name:
            p.data = p.data * (1 - lr * wd)
        state[name] = momentum * state.get(name, torch.zeros_like(p)) - g * z
        p.data = p.data + lr * state[name]


def _plain_adamw(named, g, seed, lr, wd, state, t, b1=0.9, b2=0.999, adam_eps=1e-8):
    """AdamW on d = -g z with decoupled decay of the restored weights."""
    for name, p in named:
        d = -g * zokernels.noise(p.shape, seed, key=param_key(name))
        if "bias" not in name and "layer_norm" not in name:
            p.data = p.data * (1 - lr * wd)
        m, v = state.get(name, (torch.zeros_like(p), torch.zeros_like(p)))
        m, v = b1 * m + (1 - b1) * d, b2 * v + (1 - b2) * d * d
        state[name] = (m, v)
        p.data = p.data + lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + adam_eps)


@pytest.mark.parametrize("mode", ["inplace", "shadow"])
@pytest.mark.parametrize("kind", ["momentum", "adam"])
def test_momentum_and_adam_decay_the_restored_weights(mode, kind):
    x, y = _data()
    ours, ref = OPTStyle(), OPTStyle()
    named, state = list(ref.named_parameters()), {}
    if kind == "momentum":
        opt = zokernels.ZOSGD(ours, lr=LR, eps=EPS, weight_decay=WD, mode=mode, momentum=0.9, seed=2)
    else:
        opt = zokernels.ZOAdam(ours, lr=1e-3, eps=EPS, weight_decay=WD, mode=mode, seed=2)
    for t in range(1, 11):
        opt.step(_closure(ours, x, y))
        g, s = opt.last_projections[0], opt.last_seeds[0]
        if kind == "momentum":
            _plain_momentum(named, g, s, LR, WD, state)
        else:
            _plain_adamw(named, g, s, 1e-3, WD, state, t)
    for (n, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert (a - b).abs().max().item() < 2e-6, n


class Mixed(nn.Module):
    """Names from several families: OPT (layer_norm), BERT (LayerNorm), LLaMA (an RMSNorm class named 'norm'),
    and an unnamed nn.LayerNorm inside nn.Sequential."""

    class RMSNorm(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(n))

        def forward(self, x):
            return x * self.weight

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.final_layer_norm = nn.LayerNorm(4)
        self.LayerNorm = nn.LayerNorm(4)
        self.norm = self.RMSNorm(4)
        self.seq = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))

    def forward(self, x):
        return self.seq(self.norm(self.LayerNorm(self.final_layer_norm(self.proj(x)))))


def test_default_weight_decay_exempts_biases_and_norms():
    model = Mixed()
    expected = {"proj.weight", "seq.0.weight"}
    opt = zokernels.ZOSGD(model, lr=1e-3, weight_decay=0.1)
    decayed = {n for g in opt.param_groups if g["weight_decay"] for n in g["names"]}
    assert decayed == expected
    assert {n for n, _ in zokernels.zo_param_groups(model, 0.1)[0]["params"]} == expected
    # bare named parameters: no modules to look at, so MeZO's name rule alone (any case)
    opt = zokernels.ZOSGD(model.named_parameters(), lr=1e-3, weight_decay=0.1)
    decayed = {n for g in opt.param_groups if g["weight_decay"] for n in g["names"]}
    assert decayed == {"proj.weight", "seq.0.weight", "norm.weight", "seq.1.weight"}
    # explicit groups decay as they say
    opt = zokernels.ZOSGD([{"params": list(model.named_parameters()), "weight_decay": 0.1}], lr=1e-3)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.1


@pytest.mark.parametrize("make", [
    lambda m: zokernels.ZOSGD(m, lr=1e-3, mode="shadow"),
    lambda m: zokernels.ZOSGD(m, lr=1e-3, mode="inplace", fuse_steps=True),
    lambda m: zokernels.ZOAdam(m, lr=1e-3),
])
def test_forwards_run_in_eval_mode_and_training_flags_come_back(make):
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 1), nn.Dropout(0.5))
    model.train()
    model[3].eval()  # a submodule the user keeps in eval mode stays so
    x, y = _data()
    seen = []

    def closure():
        seen.append([m.training for m in model.modules()])
        return nn.functional.mse_loss(model(x), y)

    opt = make(model)
    for _ in range(3):
        opt.step(closure)
    assert seen and not any(any(flags) for flags in seen)
    assert [m.training for m in model.modules()] == [True, True, True, True, False]
    # no dropout: the same weights give the same loss twice, so one-step projections are reproducible
    a = opt.projection(123, closure)
    assert a == opt.projection(123, closure) or opt.mode == "inplace"


def test_train_mode_model_no_longer_diverges():
    """The reviewer's case: dropout on during the forwards made ZO-SGD diverge; now it trains as in eval mode."""
    torch.manual_seed(0)
    x = torch.randn(256, 6)
    y = x[:, :1] * 2 - x[:, 1:2]

    def run(train):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(6, 32), nn.Dropout(0.3), nn.Tanh(), nn.Linear(32, 1))
        model.train(train)
        opt = zokernels.ZOSGD(model, lr=5e-3, mode="shadow", seed=0)
        for _ in range(100):
            opt.step(lambda: nn.functional.mse_loss(model(x), y))
        model.eval()
        return nn.functional.mse_loss(model(x), y).item()

    assert run(True) == run(False)


def test_two_threads_stepping_one_optimizer_get_an_error_not_corruption():
    model = OPTStyle()
    params = [id(p) for p in model.parameters()]
    x, y = _data()
    opt = zokernels.ZOSGD(model, lr=1e-3, mode="shadow")
    other = zokernels.ZOSGD(model, lr=1e-3, mode="shadow")
    inside, release, errors = threading.Event(), threading.Event(), []

    def slow_closure():
        inside.set()
        release.wait(30)
        return nn.functional.mse_loss(model(x), y)

    t = threading.Thread(target=lambda: opt.step(slow_closure))
    t.start()
    try:
        assert inside.wait(30)
        for call in (lambda: opt.step(_closure(model, x, y)), lambda: other.step(_closure(model, x, y)),
                     lambda: opt.apply_updates([1], [0.1])):
            with pytest.raises(RuntimeError, match="one ZO call at a time|already running") as info:
                call()
            errors.append(str(info.value))
    finally:
        release.set()
        t.join(30)
    assert opt.step_count == 1 and other.step_count == 0
    assert [id(p) for p in model.parameters()] == params
    assert all(type(p) is nn.Parameter for p in model.parameters())
    assert "another ZO optimizer" in errors[1]


def test_loss_must_be_a_scalar():
    model = OPTStyle()
    start = [p.detach().clone() for p in model.parameters()]
    x, _ = _data()
    opt = zokernels.ZOSGD(model, lr=1e-3)
    with pytest.raises(TypeError, match="returned NoneType.*missing `return`"):
        opt.step(lambda: None)
    with pytest.raises(ValueError, match=r"scalar loss.*shape \(64, 1\)"):
        opt.step(lambda: model(x))
    for p, s in zip(model.parameters(), start):
        assert torch.allclose(p, s, atol=1e-6)


def test_bad_parameters_and_seed_are_named_at_construction():
    model = OPTStyle()
    model.fc1.weight = nn.Parameter(torch.randn(6, 16).t())
    with pytest.raises(ValueError, match="parameter 'fc1.weight' is not contiguous"):
        zokernels.ZOSGD(model)
    with pytest.raises(ValueError, match=r"seed = -1 is out of range"):
        zokernels.ZOSGD(OPTStyle(), seed=-1)
    with pytest.raises(TypeError, match="'fc2.weight' has dtype torch.float64"):
        m = OPTStyle()
        m.fc2.double()
        zokernels.ZOSGD(m)

    class Sub(torch.Tensor):
        pass

    m = OPTStyle()
    m.fc2.bias = nn.Parameter(torch.zeros(1).as_subclass(Sub))
    with pytest.raises(TypeError, match="parameter 'fc2.bias' is a Sub, a torch.Tensor subclass"):
        zokernels.ZOSGD(m)


@pytest.mark.parametrize("kw,match", [
    (dict(lr=1e39), "lr must be finite in float32"), (dict(eps=1e39), "eps must be finite in float32"),
    (dict(weight_decay=-0.1), "weight_decay must be non-negative"),
])
def test_hyperparameters_must_be_finite_in_float32(kw, match):
    with pytest.raises(ValueError, match=match):
        zokernels.ZOSGD(OPTStyle(), **kw)


def test_zoadam_refuses_a_zero_adam_eps():
    with pytest.raises(ValueError, match="adam_eps must be a positive"):
        zokernels.ZOAdam(OPTStyle(), adam_eps=0.0)


@pytest.mark.parametrize("mode", ["inplace", "shadow"])
def test_an_update_coefficient_beyond_float32_is_refused_before_writing(mode):
    model = OPTStyle()
    start = [p.detach().clone() for p in model.parameters()]
    x, y = _data()
    opt = zokernels.ZOSGD(model, lr=1e30, eps=1e-3, mode=mode)
    with pytest.raises(FloatingPointError, match="finite in float32.*weights were restored"):
        opt.step(lambda: model(x).sum() * 1e12)
    for p, s in zip(model.parameters(), start):
        assert torch.equal(p, s) if mode == "shadow" else torch.allclose(p, s, atol=1e-6)


@pytest.mark.parametrize("mode", ["inplace", "shadow"])
def test_fp16_update_overflow_is_reported_truthfully(mode):
    model = OPTStyle(torch.float16)
    x, y = _data()
    opt = zokernels.ZOSGD(model, lr=1e5, eps=1e-3, mode=mode)
    with pytest.raises(zokernels.NonFiniteError, match="non-finite.*cannot be restored") as info:
        opt.step(_closure(model, x, y))
    assert "'fc1.weight' (torch.float16)" in str(info.value)
    assert not torch.isfinite(model.fc1.weight).all()  # what the message says


def test_fp16_perturbation_overflow_in_place_does_not_claim_a_restore():
    model = OPTStyle(torch.float16)
    with torch.no_grad():
        model.fc2.weight.fill_(65000.0)
    x, y = _data()
    opt = zokernels.ZOSGD(model, lr=1e-3, eps=1e3)
    with pytest.raises(zokernels.NonFiniteError) as info:
        opt.step(_closure(model, x, y))
    message = str(info.value)
    assert "+eps perturbation" in message and "'fc2.weight'" in message and "cannot be restored" in message
    assert "were restored" not in message


def test_fp16_perturbation_overflow_in_shadow_mode_leaves_the_weights():
    model = OPTStyle(torch.float16)
    with torch.no_grad():
        model.fc2.weight.fill_(65000.0)
    start = [p.detach().clone() for p in model.parameters()]
    x, y = _data()
    opt = zokernels.ZOSGD(model, lr=1e-3, eps=1e3, mode="shadow")
    with pytest.raises(zokernels.NonFiniteError, match="perturbed copy.*'fc2.weight'.*weights themselves are unchanged"):
        opt.step(_closure(model, x, y))
    assert all(torch.equal(p, s) for p, s in zip(model.parameters(), start))
    assert all(type(p) is nn.Parameter for p in model.parameters())
