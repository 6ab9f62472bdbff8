"""zokernels.plan: exact weight bytes from a meta-device model, the layout over GPUs, what fits, the CLI."""

import json
import subprocess
import sys

import pytest

transformers = pytest.importorskip("transformers")
import torch  # noqa: E402

from zokernels import plan  # noqa: E402


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = plan.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_opt13b_zo_fits_one_80gb_gpu_and_adamw_does_not(capsys):
    code, out, _ = _run(capsys, "opt-13b", "--gpus", "1", "--gpu-memory", "80GiB", "--dtype", "bf16", "--json")
    r = json.loads(out)
    assert code == 0
    assert r["total_param_count"] == 12_853_473_280  # OPT-13B as transformers builds it (tied LM head once)
    assert r["devices"][0]["weights_bytes"] == pytest.approx(25.7e9, rel=2e-3)
    assert r["fits"]["zo"] and r["fits"]["zo_modes"]["shadow"]
    assert not r["fits"]["adamw_naive"] and not r["fits"]["adamw_fsdp"]
    assert r["devices"][0]["total_bytes"] < 80 * 2**30 < r["devices"][0]["adamw_naive_bytes"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cfg = transformers.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=6, num_attention_heads=4,
                                 vocab_size=100, max_position_embeddings=64, word_embed_proj_dim=32)
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(cfg.to_json_string())
    torch.manual_seed(0)
    return path, transformers.OPTForCausalLM(cfg)


@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_weights_and_layout_match_the_real_model(small, capsys, gpus):
    path, model = small
    code, out, _ = _run(capsys, str(path), "--gpus", str(gpus), "--dtype", "fp32", "--batch", "2", "--seq", "8",
                        "--json")
    r = json.loads(out)
    unique = {id(p): p for p in model.parameters()}.values()  # the tied LM head counts once
    assert r["total_param_count"] == sum(p.numel() for p in unique)
    assert sum(d["weights_bytes"] for d in r["devices"]) == 4 * r["total_param_count"]
    assert len(r["devices"]) == gpus
    largest_module = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    assert max(d["zo_temp_bytes"]["shadow"] for d in r["devices"]) == 4 * largest_module
    assert r["devices"][0]["zo_temp_bytes"]["inplace"] == 0
    if gpus > 1:  # spread: no GPU holds much more than its share
        assert max(d["weights_bytes"] for d in r["devices"]) < 0.75 * 4 * r["total_param_count"]


@pytest.mark.parametrize("argv,match", [
    (["no-such-model"], "no config file 'no-such-model'.*shipped: opt-1.3b"),
    (["opt-1.3b", "--gpu-memory", "80 parsecs"], "cannot read '80 parsecs' as a size"),
    (["opt-1.3b", "--gpus", "0"], "must be positive"),
])
def test_bad_input_is_one_line(capsys, argv, match):
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and __import__("re").search(match, err)


def test_sizes():
    assert plan.parse_bytes("80GiB") == 80 * 2**30
    assert plan.parse_bytes("40GB") == 40 * 10**9
    assert plan.parse_bytes("1.5e3") == 1500


def test_module_cli_prints_json_with_the_documented_keys():
    proc = subprocess.run([sys.executable, "-m", "zokernels.plan", "opt-1.3b", "--gpus", "2", "--json"],
                          capture_output=True, text=True, timeout=300)
    r = json.loads(proc.stdout)
    assert {"devices", "fits", "total_param_count"} <= set(r)
    assert all({"weights_bytes", "total_bytes"} <= set(d) for d in r["devices"])


def test_a_closed_pipe_is_not_a_traceback():
    """`python -m zokernels.plan ... | head -1`: the reader goes away before the table is printed."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "zokernels.plan", "opt-1.3b"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # long before the plan is printed: building the model on meta takes a while
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
