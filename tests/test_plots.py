"""`zofed plot`: one curve per run folder, labelled by the folder (or --label), never merged or dropped; the
file format follows the --out extension (png, pdf, svg) and anything else is refused before any work."""

import json

import pytest

import fedtoy  # noqa: F401  (registers the "toy" task)
from zofed import plots, sim, tasks


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """Two runs whose configs differ only in the seed: the same strategy, K, Dirichlet and Byzantine count."""
    root = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        sim.run(tasks.build("toy"), sim.SimConfig(clients=3, steps=6, lr=0.05, eval_every=2, seed=seed),
                out=str(root / f"seed{seed}"), progress=False)
    return [str(root / "seed0"), str(root / "seed1")]


def _evals(folder):
    with open(f"{folder}/metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if "accuracy" in r]


def _svg_text(path):
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none"}):  # legend text as text, not glyph paths
        plots.plot_runs(*path)
    return open(path[1]).read()


def test_runs_with_the_same_config_are_two_curves(two_seeds, tmp_path):
    curves = plots.read_runs(two_seeds)
    assert list(curves) == two_seeds  # labelled by folder, in the order given
    assert [curves[f] for f in two_seeds] == [_evals(f) for f in two_seeds] != [_evals(two_seeds[0])] * 2
    svg = _svg_text((two_seeds, str(tmp_path / "cmp.svg")))
    assert all(f in svg for f in two_seeds)
    svg = _svg_text((two_seeds, str(tmp_path / "cmp.svg"), ["run A", "run B"]))
    assert "run A" in svg and "run B" in svg


@pytest.mark.parametrize("labels,match", [(["only one"], "2 runs but 1 --label"),
                                          (["same", "same"], "two runs are labelled 'same'")])
def test_labels_must_name_every_run_once(two_seeds, tmp_path, labels, match):
    with pytest.raises(ValueError, match=match):
        plots.plot_runs(two_seeds, str(tmp_path / "x.png"), labels)
    with pytest.raises(ValueError, match="given twice"):
        plots.plot_runs([two_seeds[0], two_seeds[0]], str(tmp_path / "x.png"))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("ext,magic", [("png", b"\x89PNG"), ("pdf", b"%PDF"), ("svg", b"<?xml"), ("PDF", b"%PDF")])
def test_the_extension_sets_the_format(two_seeds, tmp_path, ext, magic):
    path = tmp_path / f"cmp.{ext}"
    assert plots.plot_runs(two_seeds, str(path)) == str(path)
    assert path.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


@pytest.mark.parametrize("name", ["cmp.txt", "cmp", "cmp.jpg"])
def test_other_extensions_are_refused(two_seeds, tmp_path, name):
    with pytest.raises(ValueError, match=r"\.png, \.pdf or \.svg"):
        plots.plot_runs(two_seeds, str(tmp_path / name))
    assert not list(tmp_path.iterdir())
