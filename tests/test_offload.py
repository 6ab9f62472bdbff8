"""ZOSGD on a model dispatched by accelerate with CPU and disk offload: bit-identical to the undispatched
run, updates written where the weights live (the offload folder's .dat files), shadow hooks inside
accelerate's, and clear errors for placements that cannot take an update."""

import os

import numpy as np
import pytest
import torch

accelerate = pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")

import zokernels  # noqa: E402
from accelerate.utils.modeling import get_state_dict_offloaded_model  # noqa: E402
from zokernels.offload import OffloadError, add_forward_hooks, storage_of  # noqa: E402

from conftest import bits  # noqa: E402

STEPS = 10
CONFIG = dict(vocab_size=64, hidden_size=16, num_hidden_layers=4, ffn_dim=32, num_attention_heads=2,
              max_position_embeddings=32, word_embed_proj_dim=16)
# Every kind of placement: layers kept on the CPU, layers in the offload folder, and a norm that owns its
# weights directly on disk (its own accelerate hook loads them: a plain forward pre-hook would see meta).
DEVICE_MAP = {"model.decoder.embed_tokens": "cpu", "model.decoder.embed_positions": "cpu",
              "model.decoder.layers.0": "cpu", "model.decoder.layers.1": "disk", "model.decoder.layers.2": "cpu",
              "model.decoder.layers.3": "disk", "model.decoder.final_layer_norm": "disk", "lm_head": "cpu"}


def _config():
    return transformers.OPTConfig(**CONFIG)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("opt") / "ckpt"
    transformers.OPTForCausalLM(_config()).save_pretrained(path)
    return str(path)


def _empty():
    with accelerate.init_empty_weights():
        model = transformers.OPTForCausalLM(_config())
    model.tie_weights()  # before dispatch, so the tied embedding and head stay one parameter
    return model


def _dispatched(checkpoint, folder, **kw):
    return accelerate.load_checkpoint_and_dispatch(_empty(), checkpoint, device_map=DEVICE_MAP,
                                                   offload_folder=str(folder), **kw).eval()


def _train(model, mode, device="cpu"):
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(3)).to(device)
    opt = zokernels.ZOSGD(model, lr=1e-2, eps=1e-3, mode=mode, seed=11)
    losses = [opt.step(lambda: model(input_ids=ids, labels=ids).loss) for _ in range(STEPS)]
    opt.close()
    return losses


def _dat(folder, name, like):
    """The parameter's values as they are in its offload file now (accelerate stores bf16 as int16)."""
    raw = np.fromfile(os.path.join(folder, f"{name}.dat"), dtype=np.int16 if like.dtype == torch.bfloat16 else np.float32)
    return torch.from_numpy(raw).view(like.dtype).view(like.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_storage_of_a_disk_weight_is_its_offload_file(checkpoint, tmp_path, dtype):
    if dtype != torch.float32:  # the offload files keep the checkpoint's dtype
        transformers.OPTForCausalLM.from_pretrained(checkpoint).to(dtype).save_pretrained(tmp_path / "ckpt")
        checkpoint = str(tmp_path / "ckpt")
    folder = tmp_path / "offload"
    model = _dispatched(checkpoint, folder)
    fc1 = model.model.decoder.layers[1].fc1
    name = "model.decoder.layers.1.fc1.weight"
    before = _dat(folder, name, fc1.weight).clone()
    stored = storage_of(fc1, "weight", fc1.weight)
    assert stored.dtype == dtype and torch.equal(bits(stored), bits(before))
    stored.add_(1.0)
    assert torch.equal(bits(_dat(folder, name, before)), bits(before + 1.0))  # written into the file
    assert torch.equal(bits(get_state_dict_offloaded_model(model)[name]), bits(before + 1.0))  # and read back
    assert storage_of(fc1, "weight", fc1.weight) is stored  # one map per file
    kept = model.model.decoder.layers[0].fc1  # "cpu" with the CPU as main device: not offloaded at all
    assert storage_of(kept, "weight", kept.weight) is None


def test_forward_hooks_run_inside_accelerates(checkpoint, tmp_path):
    """Shadow hooks see the loaded weights (a plain pre-hook would see meta) before accelerate drops them."""
    model = _dispatched(checkpoint, tmp_path / "offload")
    norm = model.model.decoder.final_layer_norm
    seen = []
    handles = add_forward_hooks(norm, lambda m, args: seen.append(("pre", m.weight.device.type, args[0].shape)),
                                lambda m, args, out: (seen.append(("post", m.weight.device.type)), out * 0)[1])
    hidden = torch.randn(1, 2, CONFIG["hidden_size"], generator=torch.Generator().manual_seed(0))
    assert torch.equal(norm(hidden), torch.zeros_like(hidden))  # post's output replaced accelerate's
    assert seen == [("pre", "cpu", hidden.shape), ("post", "cpu")] and norm.weight.device.type == "meta"
    for h in handles:
        h.remove()
    assert not torch.equal(norm(hidden), torch.zeros_like(hidden)) and len(seen) == 2


@pytest.mark.parametrize("mode", ["inplace", "shadow"])
def test_dispatched_cpu_and_disk_equal_undispatched_bitwise(checkpoint, tmp_path, mode):
    ref = transformers.OPTForCausalLM.from_pretrained(checkpoint).eval()
    before = {n: p.detach().clone() for n, p in ref.named_parameters()}
    ref_losses = _train(ref, mode)
    folder = tmp_path / "offload"
    model = _dispatched(checkpoint, folder)
    assert model.model.decoder.layers[1].fc1.weight.device.type == "meta"  # really offloaded
    losses = _train(model, mode)
    assert losses == ref_losses
    gathered = get_state_dict_offloaded_model(model)
    for name, p in ref.named_parameters():
        assert not torch.equal(bits(p), bits(before[name])), name  # every weight moved
        assert torch.equal(bits(gathered[name]), bits(p)), name
    on_disk = [n for n in before if n.startswith(("model.decoder.layers.1.", "model.decoder.layers.3.",
                                                  "model.decoder.final_layer_norm."))]
    assert len(on_disk) == 2 * 16 + 2
    for name in on_disk:
        assert torch.equal(bits(_dat(folder, name, before[name])), bits(ref.get_parameter(name))), name


def test_cpu_offload_state_dict_equals_undispatched_bitwise():
    """accelerate.cpu_offload keeps every weight in a CPU state dict (a plain dict behind its hooks)."""
    config = transformers.OPTConfig(**CONFIG, tie_word_embeddings=False)
    torch.manual_seed(0)
    ref = transformers.OPTForCausalLM(config).eval()
    model = transformers.OPTForCausalLM(config).eval()
    model.load_state_dict(ref.state_dict())
    model = accelerate.cpu_offload(model, execution_device="cpu")
    assert model.lm_head.weight.device.type == "meta"
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(3))
    for m in (ref, model):
        opt = zokernels.ZOSGD(m, lr=1e-2, mode="shadow", seed=1)
        for _ in range(2):
            opt.step(lambda: m(input_ids=ids, labels=ids).loss)
    gathered = get_state_dict_offloaded_model(model)
    for name, p in ref.named_parameters():
        assert torch.equal(bits(gathered[name]), bits(p)), name


def test_shadow_hooks_are_removed_with_the_optimizer(checkpoint, tmp_path):
    model = _dispatched(checkpoint, tmp_path / "offload")
    hook = model.model.decoder.final_layer_norm._hf_hook
    opt = zokernels.ZOSGD(model, lr=1e-2, mode="shadow")
    assert "pre_forward" in vars(hook) and "post_forward" in vars(hook)
    opt.close()
    assert "pre_forward" not in vars(hook) and "post_forward" not in vars(hook)
    model(input_ids=torch.zeros(1, 4, dtype=torch.long))  # accelerate's own hooks still work
    assert model.model.decoder.final_layer_norm.weight.device.type == "meta"


@pytest.mark.parametrize("mode", ["inplace", "shadow"])
def test_from_pretrained_offload_folder_is_refused(checkpoint, tmp_path, mode):
    """from_pretrained(offload_folder=...) maps the checkpoint's own read-only safetensors."""
    model = transformers.OPTForCausalLM.from_pretrained(checkpoint, device_map=DEVICE_MAP,
                                                        offload_folder=str(tmp_path / "offload"))
    with pytest.raises(OffloadError, match=r"read only.*load_checkpoint_and_dispatch") as err:
        zokernels.ZOSGD(model, mode=mode)
    assert "model.safetensors" in str(err.value)


def test_missing_offload_file_is_named(checkpoint, tmp_path):
    folder = tmp_path / "offload"
    model = _dispatched(checkpoint, folder)
    os.remove(folder / "model.decoder.layers.1.fc1.weight.dat")
    with pytest.raises(OffloadError, match=r"model\.decoder\.layers\.1\.fc1\.weight.*cannot be opened for writing"):
        zokernels.ZOSGD(model)


def test_offload_in_another_dtype_is_refused(checkpoint, tmp_path):
    """dtype= casts the weights at every load: the float32 files are not the bfloat16 weights the forward uses."""
    model = _dispatched(checkpoint, tmp_path / "offload", dtype=torch.bfloat16)
    with pytest.raises(OffloadError, match=r"torch.bfloat16 .* stores it offloaded as torch.float32.*without dtype="):
        zokernels.ZOSGD(model)


@pytest.mark.parametrize("embedding, head", [("cpu", "disk"), ("disk", "disk")])
def test_offloaded_tied_weight_is_refused(embedding, head, tmp_path):
    """dispatch_model writes a tied weight once per holder (and may untie them): an update would miss a copy."""
    torch.manual_seed(0)
    model = accelerate.dispatch_model(transformers.OPTForCausalLM(_config()),
                                      dict(DEVICE_MAP, **{"model.decoder.embed_tokens": embedding, "lm_head": head}),
                                      offload_dir=str(tmp_path / "offload"))
    with pytest.raises(OffloadError, match=r"'(lm_head|model\.decoder\.embed_tokens)\.weight' is a tied weight"):
        zokernels.ZOSGD(model)


def test_preloaded_block_is_refused(checkpoint, tmp_path):
    """preload_module_classes puts the hook on the enclosing layer: its submodules' weights have no home we can see."""
    model = _dispatched(checkpoint, tmp_path / "offload", preload_module_classes=["OPTDecoderLayer"])
    with pytest.raises(OffloadError, match=r"meta device.*preload_module_classes"):
        zokernels.ZOSGD(model)


def test_unloaded_meta_model_is_refused():
    with pytest.raises(OffloadError, match=r"meta device.*load the weights first"):
        zokernels.ZOSGD(_empty())


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("mode", ["inplace", "shadow"])
def test_gpu_device_map_with_cpu_and_disk_offload(checkpoint, tmp_path, mode):
    """Naive model parallel over the GPUs (MeZO's OPT-13B..66B setup), one layer offloaded to CPU RAM (a
    CPU state dict: the update runs on the CPU backend) and one to disk, against the same model on one GPU."""
    last = torch.cuda.device_count() - 1
    device_map = dict(DEVICE_MAP, **{"model.decoder.embed_tokens": 0, "model.decoder.embed_positions": 0,
                                     "model.decoder.layers.0": 0, "model.decoder.layers.2": "cpu",
                                     "model.decoder.final_layer_norm": last, "lm_head": 0})
    ref = transformers.OPTForCausalLM.from_pretrained(checkpoint).eval().cuda()
    ref_losses = _train(ref, mode, "cuda")
    model = accelerate.load_checkpoint_and_dispatch(_empty(), checkpoint, device_map=device_map,
                                                    offload_folder=str(tmp_path / "offload")).eval()
    assert model.model.decoder.layers[2].fc1.weight.device.type == "meta"  # "cpu" is offloaded beside a GPU
    assert _train(model, mode, "cuda") == ref_losses
    gathered = get_state_dict_offloaded_model(model)
    for name, p in ref.named_parameters():
        assert torch.equal(bits(gathered[name]), bits(p)), name
