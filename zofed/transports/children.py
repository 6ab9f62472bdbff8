"""Child processes a transport starts, each in its own process group, and stops (every one of them, with
whatever they started) on close, on error and on exit. Imports no torch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it; another process could take it before we bind it,
    which the caller sees as a start-up error, never as traffic to a stranger: everything binds loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Children:
    """Processes started with `start`, each the leader of a new session, and stopped with all they started:
    their process group, and every descendant found in /proc (Flower's SuperLink and SuperNode start a
    SuperExec and a process per app or message in sessions of their own)."""

    def __init__(self):
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str], *, log: str, env: dict | None = None,
              cwd: str | None = None) -> subprocess.Popen:
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is already running")
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=cwd, start_new_session=True)
        self.procs[name] = proc
        return proc

    def kill(self, name: str, grace_s: float = 5.0) -> None:
        """SIGTERM to `name` and its descendants, SIGKILL to what is left after grace_s; waits for the leader."""
        proc = self.procs.pop(name)
        tree = [proc.pid, *_descendants(proc.pid)]  # before they lose their parent
        _signal(tree, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        _signal(tree + [d for pid in tree for d in _descendants(pid)], signal.SIGKILL)
        proc.wait()

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop every child (in reverse start order: clients before the servers they talk to)."""
        deadline = time.monotonic() + grace_s
        for name in reversed(list(self.procs)):
            self.kill(name, max(0.0, deadline - time.monotonic()))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _descendants(pid: int) -> list[int]:
    """The processes below pid, from /proc (empty where there is no /proc: the process group still goes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])  # after "(comm)": state, ppid
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def _signal(pids: list[int], sig: int) -> None:
    """sig to each process and to the process group it leads (if it leads one); gone ones are skipped."""
    for pid in pids:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

