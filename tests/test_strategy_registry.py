"""Strategies come from one registry: a strategy registered from one file (here, this test) is a `zofed run`
choice with its own options (flag, TOML key, default, check, --help line), runs, records its options in its
orbit, and names its runs in plots and tables."""

import contextlib
import io
import pathlib

import pytest

import fedtoy  # noqa: F401  (registers the "toy" task)
from zofed import cli, configs, sim, strategies, tasks
from zofed.strategies import POSITIVE_INT, FeedSign, Option, register


@pytest.fixture
def halfsign():
    @register
    class HalfSign(FeedSign):
        """FeedSign whose replicas step half as far: a strategy defined in one place."""

        name = "toy-halfsign"

        def ops(self, step, down):
            ((kind, seeds, coeffs),) = super().ops(step, down)
            return [(kind, seeds, tuple(c / 2 for c in coeffs))]

    yield HalfSign
    del strategies.STRATEGIES["toy-halfsign"]


def test_a_registered_strategy_is_a_cli_choice_and_runs(halfsign, tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "toy-halfsign" in out.getvalue()
    cfg = dict(clients=3, steps=6, lr=0.05, batch=8, eval_every=3)
    half = sim.run(tasks.build("toy"), sim.SimConfig(strategy="toy-halfsign", **cfg), out=str(tmp_path), progress=False)
    whole = sim.run(tasks.build("toy"), sim.SimConfig(strategy="feedsign", **cfg), progress=False)
    assert half["model_sha256"] != whole["model_sha256"] and half["bytes_up_per_client"] == 6 * 25
    assert (tmp_path / "orbit").exists() and half["config"]["strategy"] == "toy-halfsign"


@pytest.fixture
def stride():
    """FeedSign whose replicas step `stride` times as far: a strategy with an option of its own."""

    @register
    class Stride(FeedSign):
        name = "toy-stride"
        default_lr = 0.03
        options = (Option("stride", int, 2, "how many signed steps each vote moves", valid=POSITIVE_INT),)

        def __init__(self, *, lr, run_seed, stride):
            super().__init__(lr=lr, run_seed=run_seed)
            self.stride = stride

        @classmethod
        def label(cls, values):
            return f"stride x{values['stride']}"

        def ops(self, step, down):
            ((kind, seeds, coeffs),) = super().ops(step, down)
            return [(kind, seeds, tuple(c * self.stride for c in coeffs))]

    yield Stride
    del strategies.STRATEGIES["toy-stride"]


def test_a_strategy_option_is_a_config_field_with_its_default_and_check(stride):
    cfg = configs.SimConfig(strategy="toy-stride")
    assert cfg.stride == 2 and cfg.lr == 0.03 and cfg.strategy_options() == dict(stride=2)
    assert configs.SimConfig(strategy="toy-stride", stride=3).make_strategy().stride == 3
    with pytest.raises(ValueError, match=r"config field 'stride' must be a positive integer, got 0"):
        configs.SimConfig(strategy="toy-stride", stride=0).validate()
    with pytest.raises(ValueError, match=r"config field 'stride' must be an integer, got 'x'"):
        configs.SimConfig(strategy="toy-stride", stride="x").validate()
    with pytest.raises(ValueError, match=r"'stride' applies to strategy 'toy-stride' only \(this run is 'feedsign'\)"):
        configs.SimConfig(strategy="feedsign", stride=3).validate()
    assert strategies.run_label(dict(strategy="toy-stride", stride=5)) == "stride x5"
    assert strategies.run_label(dict(strategy="toy-stride", stride=5, spec_version=1)) == "stride x5"
    assert strategies.run_label(dict(strategy="toy-stride", stride=5, spec_version=2)) == "stride x5 (noise v2)"


def test_a_strategy_option_is_a_flag_with_help_and_reaches_the_orbit_and_the_labels(stride, tmp_path, monkeypatch):
    import sys

    from zofed import orbit, plots

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    help_text = " ".join(out.getvalue().split())  # argparse wraps lines
    assert "--stride STRIDE how many signed steps each vote moves (default: 2; only toy-stride)" in help_text
    toml = tmp_path / "run.toml"
    toml.write_text('strategy = "toy-stride"\nstride = 4\n')
    assert cli._run_options(cli._parser().parse_args(["run", "--config", str(toml), "--out", "x"]))["stride"] == 4
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(["run", "--task", "toy", "--strategy", "toy-stride", "--stride", "0", "--out",
                         str(tmp_path / "bad")]) == 2
    assert err.getvalue() == "zofed: error: config field 'stride' must be a positive integer, got 0\n"
    titles = []
    real_plot_run = plots.plot_run
    monkeypatch.setattr(plots, "plot_run", lambda rows, out, title="": titles.append(title) or real_plot_run(
        rows, out, title))
    run = tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["run", "--task", "toy", "--strategy", "toy-stride", "--stride", "3", "--clients", "3",
                         "--steps", "4", "--batch", "8", "--eval-every", "2", "--no-progress", "--out", str(run)]) == 0
    recorded = orbit.load(str(run / "orbit"))
    assert recorded.config["strategy_options"] == dict(stride=3) and recorded.config["lr"] == 0.03
    assert orbit.replay(recorded, tasks.build("toy")) is not None  # rebuilt with stride 3: the final sha256 checks
    assert titles == ["stride x3, 3 clients"]
    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
    import fed_table

    assert fed_table.row(run)["strategy"] == "stride x3"


def test_options_leave_with_their_strategy(stride):
    del strategies.STRATEGIES["toy-stride"]
    try:
        with pytest.raises(TypeError, match="no field"):
            configs.SimConfig(stride=2)
    finally:
        strategies.STRATEGIES["toy-stride"] = stride


def test_one_option_one_declaration(stride):
    class Clash(FeedSign):
        name = "toy-clash"
        options = (Option("stride", int, 5, "the same field declared otherwise"),)

    with pytest.raises(ValueError, match="declares option 'stride' otherwise than strategy 'toy-stride'"):
        register(Clash)

    @register
    class Shadow(FeedSign):
        name = "toy-shadow"
        options = (Option("seed", int, 1, "a field every run has"),)

    try:
        with pytest.raises(ValueError, match=r"\['seed'\] would shadow SimConfig's own"):
            configs.SimConfig()
    finally:
        del strategies.STRATEGIES["toy-shadow"]
    with pytest.raises(ValueError, match="its type must be int, float, str or bool"):
        Option("width", int, 2.5, "a default of another type")


def test_a_strategy_needs_a_name_of_its_own():
    class Nameless(FeedSign):
        name = ""

    class Impostor(FeedSign):
        name = "feedsign"

    for cls in (Nameless, Impostor):
        with pytest.raises(ValueError, match="a strategy needs a name of its own"):
            register(cls)


def test_a_registered_round_algorithm_is_a_choice_with_its_config_fields():
    from dataclasses import dataclass

    @dataclass
    class ToyRoundsConfig:
        clients: int = 2
        rounds: int = 3
        toy_width: int = 7  # how wide the toy rounds are

    algorithm = strategies.RoundAlgorithm("toy-rounds", ToyRoundsConfig, build=lambda task, cfg: None,
                                          label="toy rounds", task="toy")
    strategies.register_round(algorithm)
    try:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            cli.main(["run", "--help"])
        help_text = " ".join(out.getvalue().split())  # argparse wraps lines
        assert "toy-rounds" in help_text and "--toy-width TOY_WIDTH how wide the toy rounds are" in help_text
        assert strategies.run_label(dict(strategy="toy-rounds", toy_width=9)) == "toy rounds"
        o = cli._run_options(cli._parser().parse_args(["run", "--strategy", "toy-rounds", "--toy-width", "9",
                                                       "--out", "x"]))
        assert o["toy_width"] == 9 and o["task"] == "toy" and cli.config_class("toy-rounds") is ToyRoundsConfig
        with pytest.raises(ValueError, match="'pool_size' does not apply to strategy 'toy-rounds'"):
            cli._run_options(cli._parser().parse_args(["run", "--strategy", "toy-rounds", "--pool-size", "4",
                                                       "--out", "x"]))
        for clash in (strategies.RoundAlgorithm("feedsign", ToyRoundsConfig, build=algorithm.build),
                      strategies.RoundAlgorithm("toy-rounds", ToyRoundsConfig, build=print)):
            with pytest.raises(ValueError, match="a round algorithm needs a name of its own"):
                strategies.register_round(clash)
    finally:
        del strategies.ROUNDS["toy-rounds"]



def test_the_round_algorithms_register_from_their_own_files_without_torch():
    import subprocess
    import sys

    code = ("import sys, zofed.strategies as s\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
            "for name in ('fedmezo', 'zowarmup'):\n"
            "    assert s.ROUNDS[name].config.__module__ == 'zofed.strategies.' + name, s.ROUNDS[name]\n"
            "import zofed.configs as c\n"
            "assert not hasattr(c, 'FedMeZOConfig') and not hasattr(c, 'ZOWarmUpConfig')\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_round_runs_label_names_its_plots_and_its_fed_table_row(tmp_path, monkeypatch):
    import dataclasses
    import sys

    from zofed import plots

    monkeypatch.setitem(strategies.ROUNDS, "fedmezo",
                        dataclasses.replace(strategies.ROUNDS["fedmezo"], label="FedMeZO (registry)"))
    titles = []
    monkeypatch.setattr(plots, "plot_run", lambda rows, out, title="": titles.append(title))
    run = tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["run", "--task", "toy", "--strategy", "fedmezo", "--clients", "2", "--rounds", "2",
                         "--local-steps", "2", "--batch", "8", "--dirichlet", "0.5", "--no-progress",
                         "--out", str(run)]) == 0
    assert titles == ["FedMeZO (registry), 2 clients"]
    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
    import fed_table

    row = fed_table.row(run)  # a round run's config has no convention or byzantine: the row says what it has
    assert row["strategy"] == "FedMeZO (registry)" and row["setting"] == "Dirichlet 0.5" and row["steps"] == 2
    assert row["up_bits_per_step"] == 2 * (64 + 32)  # a round's upload: H = 2 (seed, projection) pairs
