"""The Flower ClientApp: one zofed Client per SuperNode, whose replica persists across messages.

Flower runs every message in a fresh `flwr-clientapp` process, so the client is rebuilt each time, from the run
config (zofed.client.make_client) and two node-local files in the SuperNode's `zofed-state` folder:

- run<id>-client<c>.state: the client's state after the last message (Client.save_state: its weights and its
  strategy's state), sealed with its sha256 (zofed.atomic), with the number of log frames it covers. Loading it
  and applying the log's frames after those makes the cost of a message independent of the run's length.
- run<id>-client<c>.frames: the log of every frame the client applied (broadcasts, histories, pool states;
  never the Asks, which leave the weights as they were), ending with its Checksum. It is written before the
  state file, so a process killed between the two leaves a state one message behind (its frames are in the
  log); a state file that is damaged, torn or does not give the log's checksum is set aside and the whole log
  replayed, in one multi-seed pass per frame, verified against that checksum.

So a SuperNode that was killed and restarted continues the run where its client was; the server then sends it
what it missed (catch-up), like any returning client.

A SuperNode names its client with node config: `--node-config "zofed-cid=3 zofed-state='/var/lib/zofed'"`.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from .. import atomic
from ..transport import split_frames
from ..wire import Ask, Checksum, PoolState, decode, encode, header

RECORD = "zofed"  # the record every message carries: "request" bytes down, "reply" bytes and "cid" up
app = ClientApp()


class StateError(RuntimeError):
    """The node-local state of a client does not rebuild the replica it recorded."""


def state_stem(context: Context, cid: int) -> str:
    """The path of the client's node-local files, without their suffix (.frames, .state)."""
    folder = str(context.node_config.get("zofed-state", ""))
    if not folder:
        raise ValueError("this SuperNode has no zofed-state folder: start it with --node-config "
                         "\"zofed-cid=N zofed-state='/path/to/a/folder'\"")
    return os.path.join(folder, f"run{context.run_id}-client{cid}")


def client_id(context: Context) -> int:
    cid = context.node_config.get("zofed-cid")
    if isinstance(cid, bool) or not isinstance(cid, int) or cid < 0:
        raise ValueError(f"this SuperNode's node config zofed-cid must be a client id (an integer >= 0), got {cid!r}")
    return cid


def restore(run_config: dict, cid: int, stem: str):
    """(task, client, log): the client rebuilt from its node-local files (a new client if it has none): its state
    file and the log's frames after it, or where that fails the whole log; StateError if neither gives the
    checksum the log ends with."""
    from .. import tasks
    from ..client import make_clients

    task = tasks.build(run_config["task"], **run_config["task_options"])

    def new():
        return make_clients(run_config, [cid], task=task)[cid]

    log_path = stem + ".frames"
    try:
        with open(log_path, "rb") as f:
            frames = split_frames(f.read())
    except FileNotFoundError:
        return task, new(), []
    except ValueError as e:  # a torn frame (WireError)
        raise StateError(f"{log_path} is not a zofed client log ({e}); delete it and {stem}.state to start the "
                         "client over (the server then sends it the whole history)") from None
    if not frames or not isinstance(decode(frames[-1]), Checksum):
        raise StateError(f"{log_path} does not end with the client's checksum: it is not a zofed client log")
    log, checksum = frames[:-1], frames[-1]
    try:
        client = _from_state(new(), stem + ".state", log)
        if client.checksum() != checksum:
            raise ValueError("it and the log's later frames give other weights than the log's checksum")
        return task, client, log
    except (OSError, ValueError) as e:  # DamagedFileError, a foreign or mismatching state: the whole log instead
        problem = f"{stem}.state: {e}"
        print(f"zofed: client {cid} replays its whole log: its state file did not serve ({problem})", file=sys.stderr)
    client = new()
    client.handle(b"".join(log))
    if client.checksum() != checksum:
        raise StateError(f"replaying {log_path} gave client {cid} other weights than it recorded, and its state file "
                         f"did not serve ({problem}); delete both to start the client over (the server then sends it "
                         "the whole history)")
    return task, client, log


def _from_state(client, path: str, log: list[bytes]):
    """`client` (new) loaded from its state file, then the log's frames after those the state covers."""
    covered, _, state = atomic.read_sealed(path).partition(b"\n")
    if not covered.isdigit() or int(covered) > len(log):
        raise ValueError(f"it covers {covered[:20].decode(errors='replace')} frames of a log of {len(log)}")
    client.load_state(state)
    client.handle(b"".join(log[int(covered):]))
    return client


def save(stem: str, client, log: list[bytes]) -> None:
    """The client's files after a message that applied frames: the log (all of them, then the checksum), then
    its state covering the whole log."""
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    atomic.write_bytes(stem + ".frames", b"".join(log) + client.checksum())
    atomic.write_sealed(stem + ".state", b"%d\n" % len(log) + client.save_state())


def unseen(client, frame: bytes) -> bytes:
    """The part of a broadcast, history or pool state that the client does not hold yet (b"" if none): frames
    can arrive twice (a request whose reply was lost is sent again, an evaluation brings a client up to date)."""
    msg = decode(frame)
    if isinstance(msg, Ask):
        return frame
    if isinstance(msg, PoolState):
        return frame if msg.step > client.step else b""
    steps = client.strategy.steps_of(msg)
    new = [down for down in steps if down.first_step >= client.step]
    if len(new) == len(steps):
        return frame
    return encode(client.strategy.history(new[0].first_step, new)) if new else b""


def serve(run_config: dict, cid: int, stem: str, request: bytes):
    """(reply, task, client): client cid, rebuilt from its node-local files, handles a request; its files are
    saved if it applied frames."""
    task, client, log = restore(run_config, cid, stem)
    reply, applied = [], []
    for frame in split_frames(request):
        frame = unseen(client, frame)
        if frame:
            reply.append(client.handle(frame))
            if header(frame)[0] is not Ask:
                applied.append(frame)
    if applied:
        save(stem, client, log + applied)
    return b"".join(reply), task, client


@app.query()
def query(msg: Message, context: Context) -> Message:
    cid = client_id(context)
    for module in str(context.run_config.get("zofed-imports", "")).split(","):
        if module:
            importlib.import_module(module)  # the modules that register the run's task
    content = msg.content[RECORD]
    reply, task, client = serve(json.loads(str(context.run_config["zofed-run-config"])), cid,
                                state_stem(context, cid), bytes(content["request"]))
    record = ConfigRecord({"reply": reply, "cid": cid})
    if content.get("evaluate"):
        from ..client import weights_sha256

        metrics = task.evaluate(client.replica.model)
        record["metrics"] = json.dumps(dict(accuracy=metrics["accuracy"], loss=metrics["loss"],
                                            sha256=weights_sha256(client.replica.model),
                                            digest=client.replica.digest().hex()))
    return Message(RecordDict({RECORD: record}), reply_to=msg)
