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
from zokernels.offload import add_forward_hooks, storage_of  # noqa: E402

from conftest import bits  # noqa: E402

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


def _dat(folder, name, like):
    """The parameter's values as they are in its offload file now."""
    return torch.from_numpy(np.fromfile(os.path.join(folder, f"{name}.dat"), dtype=np.float32)).view(like.shape)


def test_storage_of_a_disk_weight_is_its_offload_file(checkpoint, tmp_path):
    folder = tmp_path / "offload"
    model = _dispatched(checkpoint, folder)
    fc1 = model.model.decoder.layers[1].fc1
    name = "model.decoder.layers.1.fc1.weight"
    before = _dat(folder, name, fc1.weight).clone()
    stored = storage_of(fc1, "weight", fc1.weight)
    assert torch.equal(bits(stored), bits(before))
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
