"""ZOSGD / ZOAdam: equivalence with a plain MeZO reference, passes and memory, exact restore in low
precision, stochastic rounding, keys, errors."""

import math

import pytest
import torch
from torch import nn

import zokernels
from zokernels.optim import normalize_name, param_key
from zokernels.seeding import derive_seed

from conftest import bits


def _mlp(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.LayerNorm(16), nn.Linear(16, 1)).to(dtype)


def _data(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=g)
    return x.to(dtype), (x[:, :1] * 2 - x[:, 1:2]).to(dtype)


def _closure(model, x, y):
    return lambda: nn.functional.mse_loss(model(x).float(), y.float())


def mezo_reference(model, x, y, steps, lr, eps, seed):
    """MeZO's ZO-SGD written plainly with our noise: materialize z, four passes, fp32."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    loss = _closure(model, x, y)
    projections = []
    with torch.no_grad():
        for t in range(steps):
            s = derive_seed(seed, t, 0)
            zs = [zokernels.noise(p.shape, s, key=param_key(n)) for n, p in named]
            for (_, p), z in zip(named, zs):
                p.add_(eps * z)
            lp = loss().item()
            for (_, p), z in zip(named, zs):
                p.add_(-2 * eps * z)
            lm = loss().item()
            for (_, p), z in zip(named, zs):
                p.add_(eps * z)
            g = (lp - lm) / (2 * eps)
            for (_, p), z in zip(named, zs):
                p.add_(-lr * g * z)
            projections.append(g)
    return projections


@pytest.mark.parametrize("mode", ["inplace", "shadow"])
def test_matches_mezo_reference_fp32(mode):
    x, y = _data()
    ref, ours = _mlp(), _mlp()
    ref_proj = mezo_reference(ref, x, y, steps=20, lr=1e-2, eps=1e-3, seed=5)
    opt = zokernels.ZOSGD(ours, lr=1e-2, eps=1e-3, mode=mode, seed=5)
    got = []
    for _ in range(20):
        opt.step(_closure(ours, x, y))
        got.append(opt.last_projections[0])
    # Same seeds and z; the fused arithmetic rounds differently. A projection is a loss difference over
    # 2 eps, so float32 loss rounding (~1e-7 relative) shows up as ~1e-4..1e-3 in g.
    assert got == pytest.approx(ref_proj, rel=1e-3, abs=2e-3)
    # The weights then differ by at most lr * sum_t |dg_t| * max|z| (the spec Gaussian is below 5.8),
    # plus float32 rounding of the updates themselves.
    bound = 1e-2 * sum(abs(a - b) for a, b in zip(got, ref_proj)) * 5.8 + 1e-6
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert (a - b).abs().max().item() <= bound
    assert opt.last_seeds == [derive_seed(5, 19, 0)]


def test_first_inplace_projection_is_bit_identical_to_reference():
    """Step 0 of in-place mode computes w + eps z and then - 2 eps z exactly as the reference does."""
    x, y = _data()
    ref, ours = _mlp(), _mlp()
    ref_proj = mezo_reference(ref, x, y, steps=1, lr=0.0, eps=1e-3, seed=9)
    opt = zokernels.ZOSGD(ours, lr=0.0, eps=1e-3, seed=9)
    opt.step(_closure(ours, x, y))
    assert opt.last_projections == ref_proj


@pytest.mark.parametrize("mode,q,fuse,one_sided,expected", [
    ("inplace", 1, False, False, 3), ("inplace", 1, True, False, 2), ("inplace", 3, False, False, 7),
    ("inplace", 1, False, True, 2), ("shadow", 1, False, False, 1), ("shadow", 4, False, False, 1),
])
def test_weight_write_passes(mode, q, fuse, one_sided, expected):
    x, y = _data()
    model = _mlp()
    opt = zokernels.ZOSGD(model, lr=1e-3, mode=mode, q=q, fuse_steps=fuse, one_sided=one_sided)
    for _ in range(3):
        opt.step(_closure(model, x, y))
    assert opt.stats["weight_write_passes"] == expected
    assert opt.stats["forwards"] == q * (1 if one_sided else 2) + (1 if one_sided else 0)


def test_fused_steps_equal_unfused_after_flush():
    x, y = _data()
    a, b = _mlp(), _mlp()
    oa = zokernels.ZOSGD(a, lr=1e-2, seed=3)
    ob = zokernels.ZOSGD(b, lr=1e-2, seed=3, fuse_steps=True)
    dg = 0.0
    for _ in range(10):
        oa.step(_closure(a, x, y))
        ob.step(_closure(b, x, y))
        assert oa.last_projections == pytest.approx(ob.last_projections, rel=1e-3, abs=2e-3)
        dg += abs(oa.last_projections[0] - ob.last_projections[0])
    ob.flush()
    # fused writes round in another order; the drift is bounded as in the MeZO equivalence test
    for p, q in zip(a.parameters(), b.parameters()):
        assert (p - q).abs().max().item() <= 1e-2 * dg * 5.8 + 1e-6


def test_shadow_memory_is_the_largest_module():
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = zokernels.ZOSGD(model, mode="shadow")
    opt.step(lambda: model(torch.randn(2, 8)).sum())
    largest = max(sum(p.numel() * p.element_size() for p in m.parameters(recurse=False)) for m in model.modules())
    assert opt.stats["peak_temp_bytes"] == largest
    inplace = zokernels.ZOSGD(model)
    inplace.step(lambda: model(torch.randn(2, 8)).sum())
    assert inplace.stats["peak_temp_bytes"] == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_shadow_restores_exactly_in_low_precision(dtype):
    """lr=0, 50 steps: shadow weights are bit-identical to the start; in-place MeZO arithmetic drifts."""
    x, y = _data(dtype)
    for mode, exact in (("shadow", True), ("inplace", False)):
        model = _mlp(dtype)
        start = [p.detach().clone() for p in model.parameters()]
        opt = zokernels.ZOSGD(model, lr=0.0, eps=1e-2, mode=mode)
        for _ in range(50):
            opt.step(_closure(model, x, y))
        same = all(torch.equal(bits(p.detach()), bits(s)) for p, s in zip(model.parameters(), start))
        assert same is exact, mode


def test_stochastic_rounding_keeps_small_updates_in_bf16():
    """64 updates of 1/8 bf16 ulp each (Rademacher z): nearest rounding loses every one; stochastic
    rounding tracks the float32 truth without bias. Per element the truth moves ~1 ulp and SR adds
    ~2.6 ulp of noise, so over 4096 elements the regression slope of drift on truth has a standard
    error ~0.04 and the mean error ~0.04 ulp; the bounds below are 5 standard errors."""
    ulp = 2**-7  # bf16 spacing in [1, 2)
    w0 = torch.full((4096,), 1.5)
    seeds, coeffs = list(range(64)), [ulp / 8] * 64
    truth = w0.clone()
    zokernels.update_(truth, seeds, coeffs, keys=param_key("weight"), dist="rademacher")
    want = (truth - w0) / ulp
    for rounding in ("nearest", "stochastic"):
        model = nn.Linear(4096, 1, bias=False)
        with torch.no_grad():
            model.weight.copy_(w0.view(1, -1))
        model = model.bfloat16()
        opt = zokernels.ZOSGD(model.named_parameters(), dist="rademacher", rounding=rounding)
        for s, c in zip(seeds, coeffs):
            opt.apply_updates([s], [c])
        drift = (model.weight.detach().float().view(-1) - w0) / ulp
        if rounding == "nearest":
            assert torch.count_nonzero(drift) == 0
        else:
            slope = ((drift - drift.mean()) * (want - want.mean())).sum() / ((want - want.mean()) ** 2).sum()
            assert abs(slope.item() - 1) < 0.2
            assert abs((drift - want).mean().item()) < 0.2


def test_trains_only_requires_grad_parameters():
    model = _mlp()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    x, y = _data()
    opt = zokernels.ZOSGD(model, lr=1e-2, mode="shadow")
    for _ in range(3):
        opt.step(_closure(model, x, y))
    assert torch.equal(model[0].weight, frozen)
    assert not torch.equal(model[3].weight, _mlp()[3].weight)


def test_keys_ignore_wrapper_prefixes():
    assert normalize_name("module._orig_mod.layers.0._fsdp_wrapped_module.weight") == "layers.0.weight"
    assert param_key("module.encoder.weight") == param_key("encoder.weight")
    assert param_key("encoder.weight") != param_key("encoder.bias")
    assert 0 <= param_key("x") < 2**32


def test_per_group_eps_scales_perturbation_and_estimate():
    """A group with eps_g = 2 eps is perturbed twice as far as the others, in both modes."""
    x, y = _data()
    for mode in ("inplace", "shadow"):
        model = _mlp()
        groups = [{"params": [(n, p) for n, p in model.named_parameters() if n.startswith("0.")], "eps": 2e-3},
                  {"params": [(n, p) for n, p in model.named_parameters() if not n.startswith("0.")]}]
        opt = zokernels.ZOSGD(groups, lr=0.0, eps=1e-3, mode=mode, module=model)
        w0 = model[0].weight.detach().clone()
        seen = []  # the weight the first Linear computes with (shadow swaps it in only during its forward)
        model[0].register_forward_pre_hook(lambda mod, args: seen.append(mod.weight.detach().clone()))
        opt.step(_closure(model, x, y))
        z = zokernels.noise(w0.shape, opt.last_seeds[0], key=param_key("0.weight"))
        assert torch.allclose(seen[0] - w0, 2e-3 * z, atol=1e-6), mode  # perturbed by the group's eps
    # the update of that group estimates its gradient as (L+ - L-) / (2 eps_g) z = proj * eps / eps_g * z
    model = _mlp()
    groups = [{"params": [(n, p) for n, p in model.named_parameters() if n.startswith("0.")], "eps": 2e-3},
              {"params": [(n, p) for n, p in model.named_parameters() if not n.startswith("0.")]}]
    opt = zokernels.ZOSGD(groups, lr=1e-2, eps=1e-3, mode="shadow", module=model)
    w0 = model[0].weight.detach().clone()
    opt.step(_closure(model, x, y))
    z = zokernels.noise(w0.shape, opt.last_seeds[0], key=param_key("0.weight"))
    assert torch.allclose(model[0].weight.detach() - w0, -1e-2 * opt.last_projections[0] * 0.5 * z, atol=1e-7)
    with pytest.raises(ValueError, match="eps must be positive"):
        zokernels.ZOSGD([{"params": list(model.named_parameters()), "eps": 0.0}])


def test_param_groups_and_weight_decay_helper():
    model = _mlp()
    groups = zokernels.zo_param_groups(model, weight_decay=0.1)
    decay_names = {n for n, _ in groups[0]["params"]}
    assert decay_names == {"0.weight", "3.weight"}  # biases and the LayerNorm weight are exempt
    opt = zokernels.ZOSGD(groups, lr=1e-2)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    x, y = _data()
    opt.step(_closure(model, x, y))
    assert opt.stats["weight_write_passes"] == 4  # +eps, -2eps, decay, restore+update


def test_sign_and_momentum_and_adam_descend():
    x, y = _data()
    for make in (lambda m: zokernels.ZOSGD(m, lr=5e-3, sign=True, mode="shadow"),
                 lambda m: zokernels.ZOSGD(m, lr=5e-4, momentum=0.9),
                 lambda m: zokernels.ZOAdam(m, lr=1e-2, mode="shadow"),
                 lambda m: zokernels.ZOSGD(m, lr=1e-2, q=4, one_sided=True, dist="rademacher")):
        model = _mlp()
        opt = make(model)
        start = _closure(model, x, y)().item()
        for _ in range(200):
            opt.step(_closure(model, x, y))
        assert _closure(model, x, y)().item() < 0.7 * start, opt


def test_projection_and_apply_updates_are_the_step():
    """projection(seed) + apply_updates([seed], [-lr g]) reproduces step() in shadow mode exactly."""
    x, y = _data()
    a, b = _mlp(), _mlp()
    oa = zokernels.ZOSGD(a, lr=1e-2, mode="shadow", seed=4)
    ob = zokernels.ZOSGD(b, lr=1e-2, mode="shadow", seed=4)
    oa.step(_closure(a, x, y))
    s = derive_seed(4, 0, 0)
    g = ob.projection(s, _closure(b, x, y))
    assert g == oa.last_projections[0]
    ob.apply_updates([s], [-1e-2 * g])
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("mode", ["inplace", "shadow"])
def test_nan_loss_raises_and_restores(mode):
    model = _mlp()
    start = [p.detach().clone() for p in model.parameters()]
    opt = zokernels.ZOSGD(model, lr=1e-2, mode=mode)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        opt.step(lambda: torch.tensor(float("nan")))
    for p, s in zip(model.parameters(), start):
        if mode == "shadow":
            assert torch.equal(p, s)
        else:
            assert torch.allclose(p, s, atol=1e-6)
    assert all(type(p) is nn.Parameter for p in model.parameters())


def test_exception_in_forward_leaves_shadow_parameters_in_place():
    model = _mlp()
    params = list(model.parameters())
    opt = zokernels.ZOSGD(model, mode="shadow")

    def boom():
        model(torch.randn(2, 6))
        raise RuntimeError("data loader died")

    with pytest.raises(RuntimeError, match="data loader died"):
        opt.step(boom)
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]


def test_tied_weights_get_one_key_and_one_update():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    opt = zokernels.ZOSGD(model, lr=1e-2, mode="shadow")
    assert len(opt.param_groups[0]["params"]) == 1
    before = emb.weight.detach().clone()
    opt.step(lambda: model(torch.tensor([1, 2, 3])).logsumexp(-1).mean())
    z = zokernels.noise(before.shape, opt.last_seeds[0], key=param_key("0.weight"))
    expected = before + torch.tensor(-1e-2 * opt.last_projections[0], dtype=torch.float32) * z
    assert torch.equal(emb.weight.detach(), expected)


def test_state_dict_round_trip():
    x, y = _data()
    a = _mlp()
    oa = zokernels.ZOSGD(a, lr=1e-2, seed=11)
    for _ in range(3):
        oa.step(_closure(a, x, y))
    sd = oa.state_dict()
    ob = zokernels.ZOSGD(_mlp(), lr=1e-2)
    ob.load_state_dict(sd)
    assert ob.step_count == 3 and ob.seed == 11
    with pytest.raises(ValueError, match="spec version"):
        ob.load_state_dict({k: v for k, v in sd.items() if k != "zo"})


@pytest.mark.parametrize("kw,match", [
    (dict(mode="nope"), "mode"), (dict(eps=0.0), "eps"), (dict(lr=float("nan")), "lr"), (dict(q=0), "q must be an integer >= 1"),
    (dict(dist="gaussian-fast"), "dist"), (dict(momentum=1.0), "momentum"),
    (dict(mode="shadow", fuse_steps=True), "fuse_steps"),
])
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        zokernels.ZOSGD(_mlp(), **kw)


def test_bad_params():
    with pytest.raises(TypeError, match="parameter names"):
        zokernels.ZOSGD(_mlp().parameters())
    with pytest.raises(ValueError, match="shadow"):
        zokernels.ZOSGD(_mlp().named_parameters(), mode="shadow")
    frozen = _mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        zokernels.ZOSGD(frozen)
    with pytest.raises(ValueError, match="closure"):
        zokernels.ZOSGD(_mlp()).step(None)


def test_seeds_are_pure_integer_hashing():
    assert derive_seed(0, 0, 0) == derive_seed(0, 0, 0)
    assert len({derive_seed(1, t, j) for t in range(100) for j in range(4)}) == 400
    assert all(0 <= derive_seed(2**64 - 1, t) < 2**64 for t in range(10))
    with pytest.raises(ValueError):
        derive_seed(-1)
    assert math.isfinite(float(derive_seed(3)))


def test_shadow_loss_equals_a_fully_perturbed_copy_with_gathered_embedding_rows():
    """Shadow mode perturbs only the looked-up rows of an nn.Embedding (with their global offsets); the
    loss it sees equals the loss of a model whose every weight was perturbed in full."""
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(1000, 8, padding_idx=0), nn.Linear(8, 3))
    ids = torch.tensor([[0, 5, 999, 5], [17, 3, 3, 0]])
    loss_fn = lambda m: m(ids).logsumexp(-1).mean()  # noqa: E731
    reference = copy.deepcopy(model)
    opt = zokernels.ZOSGD(model, lr=0.0, eps=1e-2, mode="shadow", seed=2)
    loss = opt.step(lambda: loss_fn(model))
    s = derive_seed(2, 0, 0)
    with torch.no_grad():
        for n, p in reference.named_parameters():
            zokernels.perturb_(p, s, 1e-2, keys=param_key(n))
    assert loss == loss_fn(reference).item()
    # only the 5 distinct rows were copied, not the 1000-row table
    assert opt.stats["peak_temp_bytes"] < 1000 * 8 * 4 // 10
    assert model[0].padding_idx == 0 and model[0].weight.shape == (1000, 8)
