"""The real-model task: pretrained MiniLM from its PyPI package, the VADER lexicon, and the ZO example."""

import pathlib
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
vader = pytest.importorskip("zofed.tasks.vader")

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "examples"))


def test_lexicon_and_split():
    items = vader.load_lexicon()
    assert len(items) > 5000
    assert {y for _, y in items} == {0, 1}
    assert ("good", 1) in items and ("bad", 0) in items
    train, test = vader.split(items)
    assert not {w for w, _ in train} & {w for w, _ in test}
    assert len(train) + len(test) == len(items)
    assert 0.15 < len(test) / len(items) < 0.25
    assert vader.split(items) == (train, test)  # a pure function of the words


def test_pretrained_model_loads_offline_and_starts_zero_shot():
    task = vader.task(lora_rank=0)
    assert sum(p.numel() for p in task.model.encoder.parameters()) == 22_713_216  # the real MiniLM-L6, not random
    acc = task.evaluate(task.model)["accuracy"]
    assert 0.6 < acc < 0.8  # better than chance from the label-word head, far from solved


@pytest.mark.slow
def test_zo_finetune_gains_five_points():
    """Fixed seed: 150 shadow-mode ZO steps on LoRA adapters + head gain at least 5 held-out points."""
    import finetune_minilm_vader

    torch.manual_seed(0)
    result = finetune_minilm_vader.main(["--steps", "150", "--no-progress"])
    assert result["gain_points"] >= 5
    assert result["trainable_params"] < 50_000  # adapters and head only: the 22M base stays frozen
