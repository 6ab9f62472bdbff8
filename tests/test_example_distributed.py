"""examples/zo_distributed.py under torchrun, 2 gloo processes on 127.0.0.1, one launch per parallel mode:
data-parallel replicas stay bit-identical and follow the one-process run that averages both ranks' losses;
the FSDP2-sharded run equals the one-process run bit for bit."""

import json
import pathlib
import sys

import pytest
import torch

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "zo_distributed.py"
sys.path.insert(0, str(EXAMPLE.parent))

import zo_distributed as ex  # noqa: E402
from conftest import torchrun  # noqa: E402

ARGS = ["--steps", "4", "--batch", "4", "--seq", "8", "--vocab", "32", "--hidden", "16", "--layers", "2"]


def launch(tmp_path_factory, *args: str, gpus: bool = False, nproc: int = 2) -> list[dict]:
    """One torchrun launch of the example (nproc=1: plain python); its JSON lines."""
    # CPU and gloo even where a GPU is visible: the references run on CPU in this process
    text = torchrun(EXAMPLE, tmp_path_factory.mktemp("run"), *args, nproc=nproc, timeout=300,
                    env=None if gpus else dict(CUDA_VISIBLE_DEVICES=""))
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def one_process(monkeypatch, *args: str) -> list[dict]:
    """The example's run in this process, on CPU and one thread as the launched ranks are (CPU sums depend on
    the thread count)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    lines = []
    try:
        ex.run(ex.parse(["--parallel", "none", *args]), emit=lambda s: lines.append(json.loads(s)))
    finally:
        torch.set_num_threads(threads)
    return lines


@pytest.fixture(scope="module")
def dp(tmp_path_factory):
    return launch(tmp_path_factory, "--parallel", "dp", "--mode", "inplace", *ARGS)


@pytest.fixture(scope="module")
def fsdp2(tmp_path_factory):
    return launch(tmp_path_factory, "--parallel", "fsdp2", "--mode", "shadow", *ARGS)


def test_data_parallel_replicas_are_bit_identical(dp):
    *steps, final = dp
    assert [s["step"] for s in steps] == [0, 1, 2, 3]
    assert final["world"] == 2 and final["parallel"] == "dp"
    assert final["rank_sha256"] == [final["sha256"]] * 2


def test_data_parallel_equals_one_process_averaging_both_ranks_losses(dp):
    """Rank r draws stream r; one process averaging the two streams' losses (float64, as the all-reduce
    does: a sum of two numbers is the same either way round) takes the same steps bit for bit."""
    args = ex.parse(["--parallel", "none", "--mode", "inplace", *ARGS])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = ex.build_model(args)
        opt = ex.zokernels.ZOSGD(model, lr=args.lr, eps=args.eps, mode="inplace", seed=args.seed)
        losses = []
        for step in range(args.steps):
            ids = [ex.batch(args, step, r, torch.device("cpu")) for r in (0, 1)]
            losses.append(opt.step(lambda: sum(model(input_ids=i, labels=i).loss.double() for i in ids) / 2))
        sha = ex.weights_sha256(model)
    finally:
        torch.set_num_threads(threads)
    assert [s["loss"] for s in dp[:-1]] == losses
    assert dp[-1]["sha256"] == sha


def test_fsdp2_run_equals_the_one_process_run_bit_for_bit(fsdp2, monkeypatch):
    ref = one_process(monkeypatch, "--mode", "shadow", *ARGS)
    assert fsdp2[-1]["sha256"] == ref[-1]["sha256"]
    assert [s["loss"] for s in fsdp2[:-1]] == [s["loss"] for s in ref[:-1]]
    shards = fsdp2[-1]["rank_sha256"]
    assert len(set(shards)) == 2 and ref[-1]["sha256"] not in shards  # each rank held only its shard


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (one per rank, NCCL)")
def test_on_two_gpus_with_nccl(tmp_path_factory):
    dp = launch(tmp_path_factory, "--parallel", "dp", *ARGS, gpus=True)
    assert dp[-1]["rank_sha256"] == [dp[-1]["sha256"]] * 2
    fsdp2 = launch(tmp_path_factory, "--parallel", "fsdp2", *ARGS, gpus=True)
    ref = launch(tmp_path_factory, "--parallel", "none", *ARGS, gpus=True, nproc=1)  # on cuda:0
    assert fsdp2[-1]["sha256"] == ref[-1]["sha256"]


@pytest.mark.parametrize("argv, message", [
    (["--parallel", "fsdp2"], "torchrun --nproc_per_node 2 examples/zo_distributed.py --parallel fsdp2"),
    (["--parallel", "none", "--seed", "-1"], "--seed must be in 0..2**32-1"),
    (["--parallel", "none", "--hidden", "3"], "--hidden must be an even number"),
    (["--parallel", "none", "--lr", "nan"], "--lr and --eps must be > 0"),
    (["--parallel", "none", "--steps", "0"], "--steps must be >= 1"),
])
def test_bad_arguments_are_named(monkeypatch, capsys, argv, message):
    monkeypatch.delenv("RANK", raising=False)  # not under torchrun
    with pytest.raises(SystemExit) as e:
        ex.parse(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
