"""The federated demo (`make demo`) on a short budget: a table of three runs and the overlay plot."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "examples"))


@pytest.mark.slow
def test_demo_prints_the_table_and_writes_the_plot(tmp_path, capsys):
    import federated_demo

    table = federated_demo.main(["--steps", "10", "--out", str(tmp_path / "demo"), "--no-progress"])
    assert [r["run"] for r in table] == ["feedsign, 5 clients", "zo-fedsgd, 5 clients", "ZO-SGD, centralized"]
    feedsign, zo, central = table
    assert feedsign["payload_up"] == feedsign["payload_down"] == 1 and feedsign["bytes_up"] == 10 * 25
    assert zo["payload_up"] == 96 and zo["payload_down"] == 5 * 96
    assert central["bytes_up"] == central["bytes_down"] == 0
    assert len({r["initial"] for r in table}) == 1  # the same base model for all three
    out = capsys.readouterr().out
    assert "| feedsign, 5 clients |" in out and "| ZO-SGD, centralized |" in out
    assert (tmp_path / "demo" / "demo.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "demo" / "feedsign" / "orbit").exists()
