"""Every file a resume reads is verified: a flipped bit, a truncation or a torn write in checkpoint.json,
checkpoint.pt or metrics.jsonl stops the resume with zofed.atomic.DamagedFileError naming the file, and
leaves the folder exactly as it was (never a traceback, never a resume from other data)."""

import random

import pytest

import fedtoy  # noqa: F401  (registers the "toy" task)
from zofed import atomic, rounds, sim, tasks
from zofed.strategies import FedMeZO, FedMeZOConfig

SIM = dict(strategy="zo-fedsgd", clients=3, steps=12, lr=0.05, batch=8, eval_every=4, dropout=0.3, deadline=0.8)
FEDMEZO = dict(clients=3, rounds=4, local_steps=3, lr=0.05, batch=8, alpha=0.5, signal="five-round-loss")


def _sim(out):
    return sim.run(tasks.build("toy"), sim.SimConfig(**SIM), out=str(out), progress=False)


def _fedmezo(out):
    return rounds.run(FedMeZO(tasks.build("toy"), FedMeZOConfig(**FEDMEZO)), out=str(out), progress=False)


RUNS = {"sim": (_sim, sim.CHECKPOINT), "rounds": (_fedmezo, sim.ROUND_CHECKPOINT)}


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _bit_positions(size: int, n: int = 24) -> list[int]:
    """n bit positions spread over a file of `size` bytes (fixed seed), its first and last bits included."""
    return sorted({0, 8 * size - 1} | set(random.Random(size).sample(range(8 * size), n)))


@pytest.fixture(scope="module", params=sorted(RUNS))
def finished(request, tmp_path_factory):
    """A finished run's folder (resuming it rewrites the same outputs) and its driver."""
    run, checkpoint = RUNS[request.param]
    out = tmp_path_factory.mktemp(request.param)
    summary = run(out)
    return run, out, checkpoint, summary, _snapshot(out)


def _refused(run, out, name, match):
    """Resume must refuse with DamagedFileError naming `name`, leaving every file as it was."""
    before = _snapshot(out)
    with pytest.raises(atomic.DamagedFileError, match=match) as err:
        run(out)
    assert name in str(err.value) and "another --out" in str(err.value)
    assert _snapshot(out) == before  # nothing already saved was touched


@pytest.mark.parametrize("name", ["checkpoint", "metrics.jsonl"])
def test_a_flipped_bit_anywhere_is_refused(finished, name):
    run, out, checkpoint, summary, files = finished
    name = checkpoint if name == "checkpoint" else name
    good = files[name]
    try:
        for bit in _bit_positions(len(good)):
            bad = bytearray(good)
            bad[bit // 8] ^= 1 << (bit % 8)
            (out / name).write_bytes(bytes(bad))
            _refused(run, out, name, "damaged|does not match")
    finally:
        (out / name).write_bytes(good)
    assert run(out)["model_sha256"] == summary["model_sha256"]  # the intact folder still resumes


@pytest.mark.parametrize("name", ["checkpoint", "metrics.jsonl"])
def test_a_truncated_or_torn_file_is_refused(finished, name):
    run, out, checkpoint, summary, files = finished
    name = checkpoint if name == "checkpoint" else name
    good = files[name]
    try:
        for size in (0, 1, len(good) // 3, len(good) // 2, len(good) - 2, len(good) - 1):
            (out / name).write_bytes(good[:size])
            _refused(run, out, name, "damaged|does not match|truncated")
        if name == checkpoint:  # a torn write: the start of the new version over the old one
            (out / name).write_bytes(good[:len(good) // 2] + bytes(len(good) - len(good) // 2))
            _refused(run, out, name, "damaged")
    finally:
        (out / name).write_bytes(good)


def test_sealed_files_detect_every_flipped_byte(tmp_path):
    """The reader itself, exhaustively: any single damaged byte of a sealed file is refused."""
    for write, read, value in ((atomic.write_sealed_json, atomic.read_sealed_json, dict(a=[1, 2.5], b="x")),
                               (atomic.write_sealed, atomic.read_sealed, b"\x00payload\xff")):
        path = tmp_path / "f"
        write(str(path), value)
        good = path.read_bytes()
        assert read(str(path)) == value
        for i in range(len(good)):
            for flip in (0x01, 0x80):
                bad = bytearray(good)
                bad[i] ^= flip
                path.write_bytes(bytes(bad))
                with pytest.raises(atomic.DamagedFileError, match=f"{path} is damaged"):
                    read(str(path))


def _interrupted_at(step, out, checkpoint_every):
    """Run SIM into `out` and stop it with KeyboardInterrupt (as Ctrl-C does) when step `step` starts."""
    task = tasks.build("toy")
    losses, calls = task.losses, []

    def interrupt(model, batch):
        calls.append(1)
        if len(calls) > step:  # the toy clients of a zo-fedsgd step share one forward pair per seed
            raise KeyboardInterrupt
        return losses(model, batch)

    task.losses = interrupt
    with pytest.raises(KeyboardInterrupt):
        sim.run(task, sim.SimConfig(**SIM), out=str(out), progress=False, checkpoint_every=checkpoint_every)


def test_lines_after_the_checkpoint_are_written_again(tmp_path):
    """Lines written after the last checkpoint are not verified (the resumed run writes them again), so a
    torn last line there, as kill -9 leaves it, resumes bit-identically."""
    whole = _sim(tmp_path / "whole")
    out = tmp_path / "cut"
    _interrupted_at(30, out, checkpoint_every=4)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert 1 < atomic.read_sealed_json(str(out / sim.CHECKPOINT))["rows"] < len(lines)  # lines after it
    with open(out / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 99, "lo')
    resumed = _sim(out)
    assert resumed["model_sha256"] == whole["model_sha256"] and resumed["clients"] == whole["clients"]
    assert (out / "metrics.jsonl").read_bytes() == (tmp_path / "whole" / "metrics.jsonl").read_bytes()
