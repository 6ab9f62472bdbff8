"""The `zofed` console script end to end on the real task (pretrained MiniLM, VADER lexicon)."""

import json
import pathlib
import subprocess
import sys

import pytest

ZOFED = pathlib.Path(sys.executable).with_name("zofed")  # installed by `make build` (pip install -e .)


def _zofed(*args, check=True):
    assert ZOFED.exists(), "the zofed console script is missing: run `make build`"
    return subprocess.run([str(ZOFED), *args], capture_output=True, text=True, check=check, timeout=1200)


@pytest.mark.slow
def test_default_feedsign_run_gains_replays_and_counts_one_bit(tmp_path):
    out = tmp_path / "run"
    proc = _zofed("run", "--strategy", "feedsign", "--task", "vader", "--model", "minilm", "--out", str(out),
                  "--no-progress")
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 400  # the default budget
    assert s["final_accuracy"] - s["initial_accuracy"] >= 0.05, s
    assert s["payload_bits_up_per_client_per_step"] == 1 and s["payload_bits_down_per_client_per_step"] == 1
    for c in s["clients"]:  # read from the encoded frames: one 1-bit vote up, one 1-bit broadcast down per step
        assert c["up"]["payload_bits"] == c["down"]["payload_bits"] == c["up"]["messages"] == 400
    assert s["bytes_up_per_client"] == 400 * 25
    assert s["model_sha256"] in proc.stdout
    assert {p.name for p in out.iterdir()} >= {"metrics.jsonl", "orbit", "summary.json", "loss_accuracy.png",
                                               "accuracy_bytes.png"}
    assert s["orbit_bytes"] == (out / "orbit").stat().st_size < 400
    info = json.loads(_zofed("orbit", "info", str(out / "orbit")).stdout)
    assert info["steps"] == 400 and info["final_sha256"] == s["model_sha256"]
    weights = tmp_path / "w.safetensors"
    replay = _zofed("orbit", "replay", str(out / "orbit"), "--out", str(weights))
    assert replay.stdout.strip() == s["model_sha256"]
    from safetensors.torch import load_file

    assert any("lora_A" in k for k in load_file(str(weights)))


def test_cli_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "orbit"
    bad.write_bytes(b"ZFOB" + b"\x01" * 40)
    proc = _zofed("orbit", "info", str(bad), check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("zofed: error: ") and "orbit" in proc.stderr
    proc = _zofed("orbit", "replay", str(tmp_path / "missing"), "--out", str(tmp_path / "w"), check=False)
    assert proc.returncode == 2 and "No such file" in proc.stderr
    proc = _zofed("run", "--steps", "0", "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and "'steps' must be a positive integer" in proc.stderr
    proc = _zofed("run", "--dropout", "1.5", "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and "'dropout'" in proc.stderr
