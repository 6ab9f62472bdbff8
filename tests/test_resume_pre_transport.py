"""A step run checkpointed by zofed before the transport seam (commit 66a1935) resumes with this version.

tests/golden/pre_transport_run holds what that version left in a FeedSign run folder (toy task, 3 clients,
dropout 0.2) stopped after step 12 of 20, checkpointed at step 10: its checkpoint.json keeps the byte counter
inside the server's state and has no steps_per_round. Resumed, the run must end bit-identical to the same run
made from scratch by this version: weights, metrics, bytes.
"""

import json
import shutil
from pathlib import Path

import fedtoy  # noqa: F401  (registers the "toy" task)

from zofed import sim, tasks

OLD = Path(__file__).parent / "golden" / "pre_transport_run"
CFG = dict(strategy="feedsign", clients=3, steps=20, eval_every=5, seed=3, dropout=0.2, batch=4)


def _run(out):
    return sim.run(tasks.build("toy"), sim.SimConfig(**CFG), out=str(out), progress=False, checkpoint_every=5)


def test_an_old_step_run_folder_resumes_bit_identically(tmp_path):
    whole = _run(tmp_path / "whole")
    old = tmp_path / "old"
    shutil.copytree(OLD, old)
    assert json.loads((old / "checkpoint.json").read_text())["content"]["step"] == 10
    resumed = _run(old)
    timing = {"seconds", "seconds_per_step"}
    assert {k: v for k, v in resumed.items() if k not in timing} == {k: v for k, v in whole.items() if k not in timing}
    assert (old / "metrics.jsonl").read_bytes() == (tmp_path / "whole" / "metrics.jsonl").read_bytes()
    assert (old / "orbit").read_bytes() == (tmp_path / "whole" / "orbit").read_bytes()
