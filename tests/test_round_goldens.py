"""The round algorithms' outputs pinned bit for bit: recorded from the code before FedMeZO and ZOWarmUp became
strategies driven through the transport seam, which must reproduce them (the sha256 of the final weights and of
metrics.jsonl and the orbit, and every client's byte counts). Regenerate only for an intended change of results:
`python tests/test_round_goldens.py` prints the table."""

import hashlib
import json
import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import fedtoy  # noqa: E402,F401  (registers the "toy" task)
from zofed import rounds, tasks  # noqa: E402
from zofed.strategies import FedMeZO, FedMeZOConfig, ZOWarmUp, ZOWarmUpConfig  # noqa: E402

FEDMEZO = dict(clients=3, rounds=4, local_steps=3, lr=0.05, batch=8, dirichlet=0.5, seed=4, eval_every=3)
ZOWARMUP = dict(clients=6, high_fraction=0.34, warmup_rounds=2, zo_rounds=3, participation=0.7, local_epochs=1,
                fo_batch=32, fo_lr=0.2, zo_lr=0.05, dirichlet=0.5, eval_every=2, seed=5)
RUNS = {
    "fedmezo-seeds": (FedMeZO, FedMeZOConfig, FEDMEZO),
    "fedmezo-dense": (FedMeZO, FedMeZOConfig, dict(FEDMEZO, encoding="dense", client_weights="data-size")),
    "fedmezo-personalized": (FedMeZO, FedMeZOConfig, dict(FEDMEZO, alpha=0.5, signal="update")),
    "zowarmup-fedavg": (ZOWarmUp, ZOWarmUpConfig, dict(ZOWARMUP, zo_update="data-mean")),
    "zowarmup-fedadam": (ZOWarmUp, ZOWarmUpConfig, dict(ZOWARMUP, server_opt="fedadam", server_lr=0.02)),
    "high-res-only": (ZOWarmUp, ZOWarmUpConfig, dict(ZOWARMUP, high_res_only=True)),
}


def outputs(name: str, out: str) -> dict:
    algo, config, cfg = RUNS[name]
    s = rounds.run(algo(tasks.build("toy"), config(**cfg)), out=out, progress=False)

    def sha(file):
        path = os.path.join(out, file)
        return hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.exists(path) else None

    return dict(model=s["model_sha256"], metrics=sha("metrics.jsonl"), orbit=sha("orbit"),
                bytes=[[c["up"]["messages"], c["up"]["bytes"], c["up"]["payload_bits"],
                        c["down"]["messages"], c["down"]["bytes"], c["down"]["payload_bits"]] for c in s["clients"]])


# recorded from the code at b15a458 (before the refactor); bytes per client: up messages, bytes, payload bits,
# down messages, bytes, payload bits
GOLDEN = {
    'fedmezo-dense': dict(
        model='a4e7ea1b762b32d3a17df6cdda5ce72c39203f217a4b4f534631df632d6dd1be',
        metrics='41e33696197f1e83f24f0ce0e2210cc18cc3fe6496dcabb2d813417991ebb368',
        orbit=None,
        bytes=[[4, 1424, 10624, 4, 1424, 10624],
               [4, 1424, 10624, 4, 1424, 10624],
               [4, 1424, 10624, 4, 1424, 10624]]),
    'fedmezo-personalized': dict(
        model='74f3ee8b3cec1903adb3f333f4f2513e97cd3dc7f782af748a0f9695fb3ada2d',
        metrics='f6ebe7148003a2d0e498de4ed7c8188cb4024b7c69ad97db92627c9e07c35a8f',
        orbit='b27929840612012ff41cf2186d9f60ce2b6f49b8c06840fce2522ef188ad097b',
        bytes=[[4, 240, 1152, 4, 544, 3456], [4, 240, 1152, 4, 544, 3456], [4, 240, 1152, 4, 544, 3456]]),
    'fedmezo-seeds': dict(
        model='3c89f5e7bdf5e5fbaf4d024103c072e3de7bb5626b377213cd068cdfb9559902',
        metrics='c056d61430cd789bba94a4a24ba559309597c6c48ac0521d701aaef3121282f0',
        orbit='d9553dadf7d21c4843866b3953619c524e2eef62d00ab3a33be4c4982fc8cb60',
        bytes=[[4, 240, 1152, 4, 544, 3456], [4, 240, 1152, 4, 544, 3456], [4, 240, 1152, 4, 544, 3456]]),
    'high-res-only': dict(
        model='18e7c3bb7c75ea3fb8f5a43e3ee1891564b7995991bdd565ff5e0be7ab75dd9e',
        metrics='a87e07e541f8f38f3c4bc96767c4e3569caa92642bf5ba21fc32c4eb8c121bc2',
        orbit=None,
        bytes=[[0, 0, 0, 0, 0, 0],
               [5, 1780, 13280, 5, 1780, 13280],
               [0, 0, 0, 0, 0, 0],
               [0, 0, 0, 0, 0, 0],
               [0, 0, 0, 0, 0, 0],
               [3, 1068, 7968, 3, 1068, 7968]]),
    'zowarmup-fedadam': dict(
        model='f18fe61e296c1e408e1a981b876fb373586a81573eca6dec3bd6cc65cbaea026',
        metrics='b3b91b68a65cb3b301cbfd16f8423f53f8641f918a020c0cf47340f5f5a20311',
        orbit=None,
        bytes=[[2, 72, 192, 4, 872, 6112],
               [5, 820, 5600, 6, 1584, 11424],
               [2, 72, 192, 4, 872, 6112],
               [1, 36, 96, 4, 872, 6112],
               [2, 72, 192, 4, 872, 6112],
               [3, 428, 2848, 5, 1228, 8768]]),
    'zowarmup-fedavg': dict(
        model='2cbe5af5bb7da36b69beee71f6d95d1dcb1de8234d98c5a67c16c1b2e9b27c35',
        metrics='5a64be45cd2a9f3b6e854bed78783ffa154eed89a0e0f9e38f4ccab3d2528feb',
        orbit=None,
        bytes=[[2, 72, 192, 4, 872, 6112],
               [5, 820, 5600, 6, 1584, 11424],
               [2, 72, 192, 4, 872, 6112],
               [1, 36, 96, 4, 872, 6112],
               [2, 72, 192, 4, 872, 6112],
               [3, 428, 2848, 5, 1228, 8768]]),
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_round_run_reproduces_its_golden(name, tmp_path):
    assert outputs(name, str(tmp_path)) == GOLDEN[name]


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps({n: outputs(n, os.path.join(tmp, n)) for n in sorted(RUNS)}, indent=1))
