"""The `zofed` console script end to end on the real task (pretrained MiniLM, VADER lexicon)."""

import json
import pathlib
import signal
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


def _parse(*argv):
    from zofed.cli import _parser, _run_options

    return _run_options(_parser().parse_args(["run", *argv]))


def test_config_file_then_flags(tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('strategy = "zo-fedsgd"\nsteps = 50\npool-size = 8\nout = "runs/x"\ndirichlet = 0.5\n')
    o = _parse("--config", str(cfg), "--steps", "70")
    assert o["strategy"] == "zo-fedsgd" and o["steps"] == 70 and o["pool_size"] == 8 and o["dirichlet"] == 0.5
    assert o["out"] == "runs/x" and o["task"] == "vader" and "lr" not in o  # lr: the strategy's default
    assert _parse("--out", "d")["out"] == "d"


@pytest.mark.parametrize("text,match", [
    ('lrr = 0.1\nout = "d"\n', "unknown field 'lrr'"),
    ('lr = "fast"\nout = "d"\n', "config field 'lr' must be a number"),
    ('steps = 0\nout = "d"\n', "config field 'steps' must be a positive integer"),
    ('dirichlet = -1.0\nout = "d"\n', "config field 'dirichlet' must be a positive finite number"),
    ('strategy = "fedavg"\nout = "d"\n', "config field 'strategy' must be one of"),
    ('lora_rank = "four"\nout = "d"\n', "config field 'lora_rank' has the wrong type"),
    ('steps = 10\n', "config field 'out' required"),
    ('steps = [1\n', "not valid TOML"),
])
def test_bad_config_gets_one_clear_line(tmp_path, text, match):
    cfg = tmp_path / "exp.toml"
    cfg.write_text(text)
    proc = _zofed("run", "--config", str(cfg), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zofed: error: ") and match in lines[0], proc.stderr


def test_plot_overlays_runs(tmp_path):
    import fedtoy  # noqa: F401
    from zofed import sim, tasks

    for name, strategy in (("a", "feedsign"), ("b", "zo-fedsgd")):
        sim.run(tasks.build("toy"), sim.SimConfig(strategy=strategy, clients=3, steps=10, lr=0.05, eval_every=5),
                out=str(tmp_path / name), progress=False)
    png = tmp_path / "cmp.png"
    proc = _zofed("plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(png))
    assert proc.stdout.strip() == str(png) and png.read_bytes()[:4] == b"\x89PNG"
    proc = _zofed("plot", str(tmp_path), "--out", str(png), check=False)
    assert proc.returncode == 2 and "not a finished zofed run folder" in proc.stderr


def test_round_strategies_take_their_own_fields(tmp_path):
    o = _parse("--strategy", "zowarmup", "--high-fraction", "0.3", "--high-res-only", "--out", "d")
    assert o["task"] == "digits" and o["high_fraction"] == 0.3 and o["high_res_only"] is True
    assert _parse("--strategy", "fedmezo", "--encoding", "dense", "--out", "d")["task"] == "vader"
    with pytest.raises(ValueError, match="'steps' does not apply to strategy 'zowarmup'"):
        _parse("--strategy", "zowarmup", "--steps", "3", "--out", "d")
    with pytest.raises(ValueError, match="'local_steps' does not apply to strategy 'feedsign'"):
        _parse("--local-steps", "3", "--out", "d")
    proc = _zofed("run", "--strategy", "fedmezo", "--encoding", "sparse", "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and "config field 'encoding' must be one of ('seeds', 'dense')" in proc.stderr


def test_zowarmup_digits_run_writes_the_outputs_and_resumes(tmp_path):
    args = ("run", "--strategy", "zowarmup", "--warmup-rounds", "4", "--zo-rounds", "4", "--eval-every", "4",
            "--out", str(tmp_path), "--no-progress")
    first = _zofed(*args)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["task"] == "digits" and s["steps"] == 8 and s["orbit"] is None and "no orbit" in first.stdout
    assert {p.name for p in tmp_path.iterdir()} >= {"metrics.jsonl", "summary.json", "checkpoint.pt",
                                                    "loss_accuracy.png", "accuracy_bytes.png"}
    phases = [json.loads(line).get("phase") for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert phases == [None] + ["fo"] * 4 + ["zo"] * 4
    again = _zofed(*args)  # finished: the same command reports the same weights
    assert s["model_sha256"] in again.stdout


@pytest.mark.slow
def test_fedmezo_seed_replay_run_on_vader_replays_from_its_orbit(tmp_path):
    out = tmp_path / "run"
    _zofed("run", "--strategy", "fedmezo", "--rounds", "2", "--local-steps", "5", "--out", str(out), "--no-progress")
    s = json.loads((out / "summary.json").read_text())
    for c in s["clients"]:  # 5 (seed, projection) pairs up per round; the 5 clients' 25 pairs down
        assert c["up"]["payload_bits"] == 2 * 5 * 96 and c["down"]["payload_bits"] == 2 * 25 * 96
    replay = _zofed("orbit", "replay", str(out / "orbit"), "--out", str(tmp_path / "w.safetensors"))
    assert replay.stdout.strip() == s["model_sha256"] != s["base_sha256"]


# `zofed` on the toy task: the same main() as the console script, in a child process that registers "toy"
TOY_ZOFED = "import sys; sys.path.insert(0, {tests!r}); import fedtoy; from zofed.cli import main; sys.exit(main())"
TOY_RUN = ("run", "--task", "toy", "--clients", "3", "--lr", "0.05", "--eval-every", "50", "--no-progress")


def _toy_zofed(*args, **kw):
    code = TOY_ZOFED.format(tests=str(pathlib.Path(__file__).parent))
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def _one_error_line(proc, match, rc=2):
    out, err = proc.communicate(timeout=600)
    lines = err.strip().splitlines()
    assert proc.returncode == rc and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("zofed: ") and match in lines[0], err
    return out


def _run_help() -> dict:
    """flag -> its help text and the choices argparse lists"""
    from zofed.cli import _parser

    run = _parser()._subparsers._group_actions[0].choices["run"]
    return {a.option_strings[0]: f"{a.help} {a.choices or ''}" for a in run._actions}


def test_run_help_describes_every_flag_with_its_default_and_choices():
    helps = _run_help()
    for flag, text in helps.items():
        # a description first, then the notes in parentheses (choices, default, which strategies take it)
        assert text != "None " and text[0] != "(", f"{flag} has no description: {text!r}"
    for flag in set(helps) - {"-h", "--config", "--no-progress", "--out"}:
        assert "default: " in helps[flag], (flag, helps[flag])
    for flag, choices in {"--dist": ("gaussian", "rademacher", "uniform"), "--convention": ("per-class", "per-client"),
                          "--aggregator": ("mean", "median", "trimmed-mean"), "--pool-sampling": ("uniform",),
                          "--encoding": ("seeds", "dense"), "--signal": ("round-loss", "update"),
                          "--server-opt": ("fedavg", "fedadam"), "--strategy": ("feedsign", "zowarmup")}.items():
        assert all(c in helps[flag] for c in choices), (flag, helps[flag])
    # the text is the config's own documentation of the field (zofed/configs.py), not a copy
    assert "examples per client per step" in helps["--batch"]
    assert "the last `byzantine` clients attack" in helps["--byzantine"]
    assert "only fedmezo" in helps["--local-steps"] and "only zowarmup" in helps["--tau"]
    assert "default: 5, zowarmup: 50" in helps["--clients"]


def test_expected_errors_are_one_line_without_traceback(tmp_path):
    import fedtoy  # noqa: F401
    from zofed import atomic, sim, tasks

    proc = _toy_zofed(*TOY_RUN, "--strategy", "zo-fedsgd", "--steps", "5", "--lr", "3e38", "--out", str(tmp_path / "a"))
    _one_error_line(proc, "non-finite loss")
    out = tmp_path / "b"
    sim.run(tasks.build("toy"), sim.SimConfig(clients=3, steps=4, lr=0.05, eval_every=50), out=str(out), progress=False)
    good = (out / sim.CHECKPOINT).read_bytes()
    (out / sim.CHECKPOINT).write_bytes(good[:100] + bytes([good[100] ^ 4]) + good[101:])
    _one_error_line(_toy_zofed(*TOY_RUN, "--steps", "4", "--out", str(out)), "checkpoint.json is damaged")
    (out / sim.CHECKPOINT).write_bytes(good)
    with atomic.folder_lock(str(out)):  # as a run in another process holds it
        _one_error_line(_toy_zofed(*TOY_RUN, "--steps", "4", "--out", str(out)), "in use by another zofed run")


def test_ctrl_c_stops_with_one_line_and_the_same_command_resumes(tmp_path):
    import fedtoy  # noqa: F401
    from zofed import atomic, sim, tasks

    whole = sim.run(tasks.build("toy"), sim.SimConfig(clients=3, steps=100, lr=0.05, eval_every=50),
                    out=str(tmp_path / "whole"), progress=False)
    out = tmp_path / "run"
    args = (*TOY_RUN, "--steps", "100", "--out", str(out))
    proc = _toy_zofed(*args)
    while True:  # wait for the first checkpoint after step 0
        try:
            if atomic.read_sealed_json(str(out / sim.CHECKPOINT))["step"] > 0:
                break
        except (OSError, atomic.DamagedFileError):
            pass
        assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _one_error_line(proc, "interrupted", rc=130)
    step = atomic.read_sealed_json(str(out / sim.CHECKPOINT))["step"]
    assert 0 < step < 100, "the run finished before it could be interrupted"
    proc = _toy_zofed(*args)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0 and f"resuming {out} from step {step} of 100" in stderr, stderr
    assert whole["model_sha256"] in stdout


def test_field_docs_are_the_comments_that_document_each_field():
    import dataclasses

    from zofed.cli import _field_docs

    @dataclasses.dataclass
    class Config:
        alpha: float = 0.5  # the comment on its line
        # a comment block above a field
        # (two lines)
        beta: str = "#not a comment"
        gamma: int = 1

        def method(self):
            gamma: int = 2  # a local variable's comment, not the field's
            return gamma

    assert _field_docs(Config) == {"alpha": "the comment on its line",
                                   "beta": "a comment block above a field (two lines)"}
