"""`zofed orbit info|replay`: a bad orbit is one line on stderr (never a traceback), sizes are capped, and replay
writes a safetensors file a user loads into their own model, with metadata and ordinary permissions."""

import json
import os
import stat
import struct
import zlib

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import fedtoy  # noqa: F401  (registers the "toy" task)
from zofed import orbit as orbits
from zofed import sim, tasks, wire
from zofed.cli import main
from zofed.client import weights_sha256
from zokernels import spec


def _zofed(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _tampered(path, config_text):
    compressed = zlib.compress(config_text.encode())
    head = orbits._HEAD.pack(orbits.MAGIC, orbits.FORMAT_VERSION, spec.SPEC_VERSION, b"\xab" * 32, b"\xcd" * 32,
                             len(compressed))
    body = head + compressed + wire.encode(wire.Votes(0, (1,) * 10))
    path.write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    return str(path)


CONFIG = dict(strategy="feedsign", strategy_options={}, lr=0.002, eps=0.001, dist="gaussian", run_seed=0, steps=10,
              task="toy", task_options={})


@pytest.mark.parametrize("text, says", [
    ("[" * 30_000 + "]" * 30_000, "nests deeper than a run config"),
    (json.dumps(CONFIG).replace('"lr": 0.002', '"lr": 1' + "0" * 400), "'lr' must be a number"),
    (json.dumps(dict(CONFIG, strategy="dp-feedsign")).replace('{}', '{"epsilon": 1' + "0" * 400 + "}", 1),
     "'strategy_options' must be"),
])
@pytest.mark.parametrize("command", ["info", "replay"])
def test_bad_orbits_are_one_line_on_stderr(tmp_path, capsys, text, says, command):
    orbit = _tampered(tmp_path / "orbit", text)
    extra = ["--out", str(tmp_path / "w.safetensors")] if command == "replay" else []
    code, out, err = _zofed(capsys, "orbit", command, orbit, *extra)
    assert code == 2 and out == "" and err.startswith("zofed: error: corrupt orbit") and says in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["orbit"]


def test_max_bytes_caps_what_is_read(tmp_path, capsys):
    orbit = _tampered(tmp_path / "orbit", json.dumps(CONFIG))
    size = os.path.getsize(orbit)
    code, out, err = _zofed(capsys, "orbit", "info", orbit, "--max-bytes", str(size - 1))
    assert code == 2 and f"larger than the limit of {size - 1} bytes" in err and "--max-bytes" in err
    code, out, err = _zofed(capsys, "orbit", "info", orbit, "--max-bytes", str(size))
    assert code == 0 and json.loads(out)["steps"] == 10
    for bad in ("0", "-5", "1.5", "lots"):
        with pytest.raises(SystemExit) as exc:
            main(["orbit", "info", orbit, "--max-bytes", bad])
        assert exc.value.code == 2 and "--max-bytes" in capsys.readouterr().err


@pytest.fixture(scope="module")
def toy_orbit(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary = sim.run(tasks.build("toy"), sim.SimConfig(clients=2, steps=6, lr=0.05, eval_every=6), out=str(out),
                      progress=False)
    return out / "orbit", summary


@pytest.fixture
def umask_002():
    old = os.umask(0o002)
    yield
    os.umask(old)


def test_replay_into_a_missing_folder_writes_loadable_weights_with_metadata(tmp_path, capsys, toy_orbit, umask_002):
    orbit, summary = toy_orbit
    out = tmp_path / "new" / "folder" / "toy.safetensors"
    code, stdout, err = _zofed(capsys, "orbit", "replay", str(orbit), "--out", str(out))
    assert code == 0 and stdout.strip() == summary["model_sha256"]  # stdout: the sha256 alone, for scripts
    assert f"final weights sha256 {summary['model_sha256']} verified" in err and str(out) in err
    assert stat.S_IMODE(out.stat().st_mode) == 0o664  # 0666 minus the umask, like any file the user creates
    assert sorted(os.listdir(out.parent)) == ["toy.safetensors"]  # no temporary file left
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta == dict(format="pt", spec_version=str(spec.SPEC_VERSION), base_sha256=summary["base_sha256"],
                        final_sha256=summary["model_sha256"], strategy="feedsign", steps="6", task="toy",
                        task_options=json.dumps(dict(hidden=8, n=240, classes=3), sort_keys=True))
    model = tasks.build("toy").model
    model.load_state_dict(load_file(str(out)))  # strict: the keys are the model's own
    assert weights_sha256(model) == summary["model_sha256"]


def test_replay_refuses_a_folder_as_out_and_leaves_nothing(tmp_path, capsys, toy_orbit):
    folder = tmp_path / "weights"
    folder.mkdir()
    code, out, err = _zofed(capsys, "orbit", "replay", str(toy_orbit[0]), "--out", str(folder))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"{folder} is a folder: name the file to write" in err and "finetuned.safetensors" in err
    assert os.listdir(folder) == [] and sorted(os.listdir(tmp_path)) == ["weights"]
    blocked = tmp_path / "file"
    blocked.write_text("")
    code, out, err = _zofed(capsys, "orbit", "replay", str(toy_orbit[0]), "--out", str(blocked / "w.safetensors"))
    assert code == 2 and err.startswith("zofed: error: ") and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["file", "weights"]


def test_replayed_vader_weights_load_into_transformers_and_peft(tmp_path, capsys):
    """The README's recipe: the file's encoder keys are peft's PeftModel names (load_state_dict strict, or
    set_peft_model_state_dict), the head's are head.weight/head.bias."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import AutoModel

    from zofed.client import Replica
    from zofed.tasks import vader

    task = tasks.build("vader")
    base = weights_sha256(task.model)
    feedsign = orbits.make_strategy(dict(CONFIG, task="vader"))
    history = wire.Votes(0, (1, -1, 1))
    replica = Replica(task.model, eps=1e-3)
    replica.apply(op for down in feedsign.steps_of(history) for op in feedsign.ops(down.first_step, down))
    replica.close()
    config = dict(CONFIG, steps=3, task="vader", task_options=task.options)
    orbits.save(tmp_path / "orbit", orbits.Orbit(config, base, weights_sha256(task.model), history))
    out = tmp_path / "finetuned.safetensors"
    assert _zofed(capsys, "orbit", "replay", str(tmp_path / "orbit"), "--out", str(out))[0] == 0

    state = load_file(str(out))
    head = {k.removeprefix("head."): state.pop(k) for k in ("head.weight", "head.bias")}
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0)
    model = get_peft_model(AutoModel.from_pretrained(vader.model_path()), lora)
    model.load_state_dict(state)  # strict: every key is the PeftModel's own
    for name, t in model.state_dict().items():
        assert torch.equal(t, task.model.encoder.state_dict()[name]), name
    assert torch.equal(head["weight"], task.model.head.weight) and torch.equal(head["bias"], task.model.head.bias)
    adapters = get_peft_model(AutoModel.from_pretrained(vader.model_path()), lora)
    set_peft_model_state_dict(adapters, state)
    assert all(torch.equal(t, model.state_dict()[k]) for k, t in adapters.state_dict().items())
    classifier = vader.SentenceClassifier(model)  # the task's own head on top, for its predictions
    classifier.head.load_state_dict(head)
    assert weights_sha256(classifier) == weights_sha256(task.model)
