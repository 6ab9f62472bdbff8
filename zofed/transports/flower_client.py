"""The Flower ClientApp: one zofed Client per SuperNode, whose replica persists across messages.

Flower runs every message in a fresh `flwr-clientapp` process, so the client is rebuilt each time: from the
run config (zofed.client.make_client) and the node-local log of the frames it applied before (broadcasts,
histories, pool states; never the Asks, which leave the weights as they were), replayed in one multi-seed
pass per frame and verified against the Checksum stored after the previous message. The log lives in the
SuperNode's `zofed-state` folder, so a SuperNode that was killed and restarted continues the run where its
client was; the server then sends it what it missed (catch-up), like any returning client.

A SuperNode names its client with node config: `--node-config "zofed-cid=3 zofed-state='/var/lib/zofed'"`.
"""

from __future__ import annotations

import importlib
import json
import os

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from .. import atomic
from ..transport import split_frames
from ..wire import Ask, Checksum, PoolState, decode, encode, header

RECORD = "zofed"  # the record every message carries: "request" bytes down, "reply" bytes and "cid" up
app = ClientApp()


class StateError(RuntimeError):
    """The node-local state of a client does not rebuild the replica it recorded."""


def state_path(context: Context, cid: int) -> str:
    folder = str(context.node_config.get("zofed-state", ""))
    if not folder:
        raise ValueError("this SuperNode has no zofed-state folder: start it with --node-config "
                         "\"zofed-cid=N zofed-state='/path/to/a/folder'\"")
    return os.path.join(folder, f"run{context.run_id}-client{cid}.frames")


def client_id(context: Context) -> int:
    cid = context.node_config.get("zofed-cid")
    if isinstance(cid, bool) or not isinstance(cid, int) or cid < 0:
        raise ValueError(f"this SuperNode's node config zofed-cid must be a client id (an integer >= 0), got {cid!r}")
    return cid


def restore(run_config: dict, cid: int, path: str):
    """(task, client, log): the client rebuilt from its node-local log (a new client if there is none)."""
    from .. import tasks
    from ..client import make_clients

    task = tasks.build(run_config["task"], **run_config["task_options"])
    client = make_clients(run_config, [cid], task=task)[cid]
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return task, client, []
    frames = split_frames(data)
    if not frames or not isinstance(decode(frames[-1]), Checksum):
        raise StateError(f"{path} does not end with the client's checksum: it is not a zofed client state")
    log = frames[:-1]
    client.handle(b"".join(log))
    if client.checksum() != frames[-1]:
        raise StateError(f"replaying {path} gave client {cid} other weights than it recorded; delete the file to "
                         "start the client over (the server then sends it the whole history)")
    return task, client, log


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


@app.query()
def query(msg: Message, context: Context) -> Message:
    cid = client_id(context)
    for module in str(context.run_config.get("zofed-imports", "")).split(","):
        if module:
            importlib.import_module(module)  # the modules that register the run's task
    path = state_path(context, cid)
    task, client, log = restore(json.loads(str(context.run_config["zofed-run-config"])), cid, path)
    content = msg.content[RECORD]
    reply, applied = [], []
    for frame in split_frames(bytes(content["request"])):
        frame = unseen(client, frame)
        if frame:
            reply.append(client.handle(frame))
            if header(frame)[0] is not Ask:
                applied.append(frame)
    if applied:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic.write_bytes(path, b"".join(log + applied) + client.checksum())
    record = ConfigRecord({"reply": b"".join(reply), "cid": cid})
    if content.get("evaluate"):
        from ..client import weights_sha256

        metrics = task.evaluate(client.replica.model)
        record["metrics"] = json.dumps(dict(accuracy=metrics["accuracy"], loss=metrics["loss"],
                                            sha256=weights_sha256(client.replica.model),
                                            digest=client.replica.digest().hex()))
    return Message(RecordDict({RECORD: record}), reply_to=msg)
