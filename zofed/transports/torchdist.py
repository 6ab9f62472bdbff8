"""The torch.distributed transport: the run on P processes of one machine (gloo on CPU, NCCL on GPU).

    zofed run --transport torchdist --processes 4 ...

Rank 0 is this process: the server side of the run (its run loop, the ParameterServer) and the transport.
It starts ranks 1 .. P-1 itself (no torchrun: `python -m zofed.transports.torchdist`, on 127.0.0.1 and a
free port) and stops them on close, on error and when it exits. The clients are spread over those ranks
(client c on rank 1 + c mod (P-1)); each rank builds its clients from the run config alone
(zofed.client.make_clients), each with a replica of its own (a client that was away catches up on its own
weights; on close every client reports its Checksum). A round is one message to each rank that has requests
and one back: the rank's requests or replies bundled, sent as a uint8 tensor after an int64 length, point to
point.

Every client answers every request (a rank that died ends the run with its log, there is no partial
quorum inside one process group): the run's simulated dropouts and deadlines, decided by the server side,
are what makes clients absent here, so the run ends with the same model_sha256 as in-process.
"""

from __future__ import annotations

import argparse
import builtins
import datetime
import json
import os
import struct
import sys
import tempfile
import threading
import time

import torch
import torch.distributed as dist

from ..transport import Transport, count_frames
from ..wire import Ask, ByteCounter, encode
from ..tasks import registering_modules
from .children import Children, free_port

START, ROUND, REPLY, ERROR, STOP = range(5)  # the first byte of every message between ranks
_ENTRY = struct.Struct("<IQ")  # a bundle entry: client id, request or reply length, then its bytes
CHECKSUM = encode(Ask(0, 0))  # a request for a client's Checksum
TIMEOUT = datetime.timedelta(seconds=120)  # start-up and each message; a rank that died is noticed sooner


def open(cfg: dict) -> "TorchDist":  # noqa: A001 (the transports' entry point is named open)
    return TorchDist(cfg.get("processes", 2))


def pack(entries: dict[int, bytes]) -> bytes:
    return b"".join(_ENTRY.pack(c, len(data)) + data for c, data in sorted(entries.items()))


def unpack(body: bytes) -> dict[int, bytes]:
    entries, pos = {}, 0
    while pos < len(body):
        c, n = _ENTRY.unpack_from(body, pos)
        pos += _ENTRY.size
        if pos + n > len(body):
            raise ValueError(f"a bundle entry of {n} bytes overruns the message at byte {pos}")
        entries[c], pos = bytes(body[pos:pos + n]), pos + n
    return entries


class Link:
    """Point-to-point byte messages between ranks: an int64 length, then the bytes as a uint8 tensor."""

    def __init__(self, device: torch.device):
        self.device = device

    def send(self, dst: int, kind: int, body: bytes = b"") -> None:
        data = bytes([kind]) + body
        dist.send(torch.tensor([len(data)], dtype=torch.int64, device=self.device), dst)
        dist.send(torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.device), dst)

    def recv(self, src: int) -> tuple[int, bytes]:
        """(kind, body) of the next message from src. A rank that died closes its connections: gloo raises
        at once (an RuntimeError naming the peer), else after the group's timeout."""
        n = torch.zeros(1, dtype=torch.int64, device=self.device)
        dist.recv(n, src)
        buf = torch.empty(int(n.item()), dtype=torch.uint8, device=self.device)
        dist.recv(buf, src)
        data = buf.cpu().numpy().tobytes()
        return data[0], data[1:]


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _device(backend: str, rank: int) -> torch.device:
    if backend == "nccl":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


class TorchDist(Transport):
    def __init__(self, processes: int):
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 2:
            raise ValueError(f"--processes must be an integer >= 2 for torchdist (rank 0 is the server, the others "
                             f"hold the clients), got {processes!r}")
        self.processes = processes
        self.counter = ByteCounter()
        self.children = Children()
        self.logs = tempfile.TemporaryDirectory(prefix="zofed-torchdist-")
        self.rank_of: dict[int, int] = {}
        self.link: Link | None = None
        self.failed = False  # a rank failed or died: close() kills the ranks instead of asking them to stop
        self.checksums: dict[int, bytes] = {}

    def start(self, run_config: dict, clients: list[int]) -> None:
        if self.link is not None:
            raise RuntimeError("this transport has started already")
        backend, port = _backend(), free_port()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        for rank in range(1, self.processes):
            self.children.start(f"rank{rank}", [
                sys.executable, "-m", "zofed.transports.torchdist", "--rank", str(rank),
                "--world", str(self.processes), "--port", str(port), "--backend", backend,
                "--parent", str(os.getpid()), *[f"--import={m}" for m in registering_modules()]],
                log=self._log(rank), env=env)
        try:
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0,
                                    world_size=self.processes, timeout=TIMEOUT)
            self.link = Link(_device(backend, 0))
            self.rank_of = {c: 1 + i % (self.processes - 1) for i, c in enumerate(sorted(clients))}
            for rank in range(1, self.processes):
                mine = [c for c, r in self.rank_of.items() if r == rank]
                self.link.send(rank, START, json.dumps(dict(run_config=run_config, clients=mine)).encode())
            for rank in range(1, self.processes):
                self._expect(rank, REPLY)
        except BaseException:
            self.close()
            raise

    def exchange(self, requests, *, quorum=None, deadline_s=None):
        unknown = sorted(set(requests) - set(self.rank_of))
        if unknown:
            raise ValueError(f"no client {unknown} in this run (started: {sorted(self.rank_of)})")
        by_rank: dict[int, dict[int, bytes]] = {}
        for c, request in requests.items():
            count_frames(self.counter, c, "down", request)
            by_rank.setdefault(self.rank_of[c], {})[c] = request
        try:
            replies = self._round(by_rank)
        except BaseException:  # Ctrl-C or a rank gone mid-round: the link is out of step, close() kills the ranks
            self.failed = True
            raise
        for c, reply in replies.items():
            count_frames(self.counter, c, "up", reply)
        return replies

    def _round(self, by_rank: dict[int, dict[int, bytes]]) -> dict[int, bytes]:
        """Each rank's bundle of requests out, its bundle of replies back."""
        for rank, bundle in by_rank.items():
            self.link.send(rank, ROUND, pack(bundle))
        replies = {}
        for rank in by_rank:
            replies.update(unpack(self._expect(rank, REPLY)))
        return replies

    def close(self) -> None:
        """Take every client's Checksum (`checksums`: the replicas at the end, not counted), tell the ranks to
        stop and wait for them (10 s); after an error, or then, kill them."""
        try:
            if self.link is not None and not self.failed:
                by_rank: dict[int, dict[int, bytes]] = {}
                for c, rank in self.rank_of.items():
                    by_rank.setdefault(rank, {})[c] = CHECKSUM
                self.checksums = self._round(by_rank)
                for rank in range(1, self.processes):
                    self.link.send(rank, STOP)
                deadline = time.monotonic() + 10
                for proc in self.children.procs.values():
                    while proc.poll() is None and time.monotonic() < deadline:
                        time.sleep(0.01)
        finally:
            self.link = None
            if dist.is_initialized():
                dist.destroy_process_group()
            self.children.stop()
            self.logs.cleanup()

    def _log(self, rank: int) -> str:
        return os.path.join(self.logs.name, f"rank{rank}.log")

    def _expect(self, rank: int, kind: int) -> bytes:
        try:
            got, body = self.link.recv(rank)
        except RuntimeError as exc:
            self.failed = True
            raise RuntimeError(f"torchdist: no message from rank {rank} ({exc}); its log ends:\n"
                               f"{self._tail(rank)}") from None
        if got == ERROR:
            self.failed = True  # the ranks are alive, but the run ends here
            raise RuntimeError(f"torchdist rank {rank}: {body.decode(errors='replace')}")
        if got != kind:
            raise RuntimeError(f"torchdist rank {rank} sent message kind {got}, expected {kind}")
        return body

    def _tail(self, rank: int) -> str:
        try:
            with builtins.open(self._log(rank), "rb") as f:
                return f.read()[-3000:].decode(errors="replace")
        except OSError:
            return "(no log)"


def _watch_parent(parent: int) -> None:
    """Exit when the server process is gone (even after a kill -9, which no close() follows)."""
    while True:
        if os.getppid() != parent:
            os._exit(3)
        time.sleep(0.5)


def serve(rank: int, world: int, port: int, backend: str) -> None:
    """A client rank: build its clients, answer rounds until rank 0 says stop."""
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=TIMEOUT)
    link, clients = Link(_device(backend, rank)), {}
    try:
        while True:
            kind, body = link.recv(0)
            if kind == STOP:
                break
            try:
                if kind == START:
                    from ..client import make_clients

                    start = json.loads(body)
                    clients = make_clients(start["run_config"], start["clients"])
                    link.send(0, REPLY)
                elif kind == ROUND:
                    link.send(0, REPLY, pack({c: clients[c].handle(r) for c, r in unpack(body).items()}))
                else:
                    raise ValueError(f"unknown message kind {kind}")
            except Exception as exc:  # reported to rank 0, which ends the run with it
                link.send(0, ERROR, f"{type(exc).__name__}: {exc}".encode())
    finally:
        for replica in {id(c.replica): c.replica for c in clients.values()}.values():
            replica.close()
        dist.destroy_process_group()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="a client rank of zofed's torchdist transport (started by rank 0)")
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backend", choices=("gloo", "nccl"), required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--import", dest="imports", action="append", default=[],
                   help="a module to import first (one that registers the run's task)")
    args = p.parse_args(argv)
    threading.Thread(target=_watch_parent, args=(args.parent,), daemon=True).start()
    import importlib

    for module in args.imports:
        importlib.import_module(module)
    serve(args.rank, args.world, args.port, args.backend)


if __name__ == "__main__":
    main()
