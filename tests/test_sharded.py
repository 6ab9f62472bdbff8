"""Sharded ZO over gloo processes (torchrun, 127.0.0.1): FSDP2 over 2 and 3 processes (uneven and empty
shards) and tensor parallel over 2 train with ZOSGD/ZOAdam, each rank writing only its shards, and the
gathered weights after 10 steps equal the unsharded run's bit for bit (sha256 of the raw bytes).

FSDP2 all-gathers whole weights, so its forwards equal the unsharded ones bitwise and the reference is
the plain run. A row-parallel matmul sums two partial products, so tensor-parallel losses differ from the
unsharded ones in the last bits: there the reference replays the losses the ranks saw (every write then
has the same coefficients), and the losses themselves are checked against the plain run's to float32
rounding, which a wrong perturbation of any shard would exceed by orders of magnitude."""

import json
import pathlib

import pytest
import torch

import zokernels

import sharded_worker as w
from conftest import torchrun

WORKER = pathlib.Path(__file__).with_name("sharded_worker.py")


def _launch(out: pathlib.Path, nproc: int) -> dict:
    """Run the worker on nproc processes once."""
    torchrun(WORKER, out, str(out), nproc=nproc)
    return json.loads((out / "scenarios.json").read_text())


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("sharded2"), 2)


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("sharded3"), 3)


def _plain(name: str):
    """The scenario's steps in this process, unsharded: (weights' sha256 by name, losses seen)."""
    torch.set_num_threads(1)
    kind, opt_name, options = w.SCENARIOS[name]
    m = w.model(kind)
    losses = w.train(m, kind, opt_name, options)
    return w.digests(m.named_parameters()), losses


def _replayed(name: str, losses: list[float]) -> dict:
    """The scenario's writes in this process, unsharded, driven by the losses the ranks saw."""
    kind, opt_name, options = w.SCENARIOS[name]
    m = w.model(kind)
    opt = getattr(zokernels, opt_name)(m, **dict(dict(lr=w.LR, eps=w.EPS, seed=w.SEED), **options))
    seen = iter(losses)
    for _ in range(w.STEPS):
        opt.step(lambda: next(seen))
    assert next(seen, None) is None
    return w.digests(m.named_parameters())


FSDP = [n for n, (kind, _, _) in w.SCENARIOS.items() if kind == "fsdp"]
TP = [n for n, (kind, _, _) in w.SCENARIOS.items() if kind == "tp"]


@pytest.mark.parametrize("name", FSDP)
@pytest.mark.parametrize("launch", ["two", "three"])
def test_fsdp2_equals_the_unsharded_run_bit_for_bit(request, launch, name):
    got = request.getfixturevalue(launch)
    assert got["world"] == {"two": 2, "three": 3}[launch]
    run = got["scenarios"][name]
    assert set(run["placements"].values()) == {"(Shard(dim=0),)"}  # every parameter was sharded
    digests, losses = _plain(name)
    assert run["losses"] == losses  # every forward, bit for bit
    assert run["digests"] == digests


@pytest.mark.parametrize("name", TP)
def test_tensor_parallel_writes_equal_the_unsharded_ones_bit_for_bit(two, name):
    run = two["scenarios"][name]
    assert {"(Shard(dim=0),)", "(Shard(dim=1),)", "(Replicate(),)", "plain"} == set(run["placements"].values())
    assert run["digests"] == _replayed(name, run["losses"])
    _, plain_losses = _plain(name)
    assert run["losses"] == pytest.approx(plain_losses, rel=1e-5, abs=1e-5)
