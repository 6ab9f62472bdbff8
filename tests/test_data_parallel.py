"""Data-parallel ZO over 2 gloo processes (torchrun, 127.0.0.1): one all-reduce of 2q losses per step,
replicas bit-identical at every step, and the trajectory of one process averaging both ranks' losses."""

import json
import pathlib

import pytest
import torch
from torch import nn

import zokernels

import dp_worker as w
from conftest import torchrun

WORKER = pathlib.Path(__file__).with_name("dp_worker.py")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Launch the 2-process job once for the module."""
    out = tmp_path_factory.mktemp("dp")
    torchrun(WORKER, out, str(out))
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("mode", ["inplace", "shadow", "ddp-shadow"])
def test_replicas_stay_bit_identical_with_one_allreduce_of_2q_losses(ranks, mode):
    a, b = ranks[0][mode]["steps"], ranks[1][mode]["steps"]
    assert [s["digest"] for s in a] == [s["digest"] for s in b]  # every step, with no weight traffic
    assert [s["projections"] for s in a] == [s["projections"] for s in b]
    assert all(s["allreduce_numbers"] == 2 * w.Q for s in a + b)


def test_ddp_wrapping_changes_nothing(ranks):
    """DDP's 'module.' prefix is not part of the noise keys: the wrapped model takes the same steps."""
    assert ranks[0]["ddp-shadow"]["steps"] == ranks[0]["shadow"]["steps"]


@pytest.mark.parametrize("mode", ["inplace", "shadow"])
def test_trajectory_equals_one_process_averaging_both_losses(ranks, mode):
    torch.set_num_threads(1)
    m = w.model()
    (x0, y0), (x1, y1) = w.batch(0), w.batch(1)
    opt = zokernels.ZOSGD(m, lr=w.LR, eps=w.EPS, mode=mode, seed=w.SEED, q=w.Q)

    def both():  # the mean of the two ranks' losses, in float64 as the all-reduce averages them
        return (nn.functional.mse_loss(m(x0), y0).double() + nn.functional.mse_loss(m(x1), y1).double()) / 2

    got = []
    for _ in range(w.STEPS):
        opt.step(both)
        got.append(opt.last_projections)
    want = [s["projections"] for s in ranks[0][mode]["steps"]]
    for g, d in zip(got, want):
        assert g == pytest.approx(d, rel=1e-5, abs=1e-5)
    for p, q in zip(m.parameters(), ranks[0][mode]["weights"]):
        assert torch.allclose(p.detach().flatten(), torch.tensor(q), rtol=0, atol=1e-6)


def test_zotrainer_launched_on_two_processes_keeps_replicas_identical(ranks):
    a, b = ranks[0]["trainer"], ranks[1]["trainer"]
    assert a["world"] == b["world"] == 2 and a["steps"] == b["steps"] == 3
    assert a["digest"] == b["digest"]
    assert a["allreduce_numbers"] == 2  # q=1: L+ and L-, averaged over the two ranks' shards


def test_process_group_needs_an_initialized_group():
    with pytest.raises(ValueError, match="torch.distributed is not initialized"):
        zokernels.ZOSGD(w.model(), process_group=object())
