"""Child processes a transport starts, each in its own process group, and stops (every one of them, with
whatever they started) on close, on error and on exit, also when the launching process is SIGKILLed (on Linux).
Imports no torch.

Every child carries MARK=<this launcher's token>/<its name> in its environment, and what it starts inherits it
(Flower's SuperLink and SuperNode start a SuperExec and a process per app or message in sessions of their own,
which outlive their parent for a moment or for good), so a child and all it started are found in /proc by that
mark wherever they were reparented. A reaper process, started with the first child, waits on a pipe that only the
launcher holds: when the launcher ends, however it ends (kill -9 included), the pipe closes and the reaper kills
every process with the launcher's token. Where there is no /proc (macOS) there is no reaper, and stopping a child
signals its process group only.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time

MARK = "ZOFED_CHILD"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it; another process could take it before we bind it,
    which the caller sees as a start-up error, never as traffic to a stranger: everything binds loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Children:
    """Processes started with `start`, each the leader of a new session, and stopped with all they started."""

    def __init__(self):
        self.procs: dict[str, subprocess.Popen] = {}
        self.token = f"{os.getpid()}-{secrets.token_hex(8)}"
        self.reaper: tuple[subprocess.Popen, int] | None = None  # (the reaper, the write end of its pipe)

    def start(self, name: str, cmd: list[str], *, log: str, env: dict | None = None,
              cwd: str | None = None) -> subprocess.Popen:
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is already running")
        self._start_reaper()
        env = dict(os.environ if env is None else env, **{MARK: f"{self.token}/{name}"})
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=cwd, start_new_session=True)
        self.procs[name] = proc
        return proc

    def kill(self, name: str, grace_s: float = 5.0) -> None:
        """SIGTERM to `name` and everything it started, SIGKILL to what is left after grace_s; waits for it."""
        proc = self.procs.pop(name)
        mark = f"{self.token}/{name}"
        _signal([proc.pid, *marked(mark)], signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        _signal([proc.pid], signal.SIGKILL)
        kill_marked(mark)
        proc.wait()

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop every child (in reverse start order: clients before the servers they talk to), then the reaper."""
        deadline = time.monotonic() + grace_s
        for name in reversed(list(self.procs)):
            self.kill(name, max(0.0, deadline - time.monotonic()))
        if self.reaper is not None:
            reaper, pipe = self.reaper
            self.reaper = None
            os.close(pipe)  # it wakes, finds nothing left and ends
            try:
                reaper.wait(timeout=30)
            except subprocess.TimeoutExpired:
                reaper.kill()
                reaper.wait()

    def _start_reaper(self) -> None:
        if self.reaper is not None or not os.path.isdir("/proc"):
            return
        # neither end is inherited by what this process execs (close_fds) but the reaper's `read`; a process forked
        # from this one without exec would hold `write` and keep the reaper waiting while it lives
        read, write = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # finds zofed as we did
        try:
            reaper = subprocess.Popen([sys.executable, "-m", __name__, self.token], stdin=read, env=env,
                                      stdout=subprocess.DEVNULL, start_new_session=True)  # Ctrl-C spares it
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        self.reaper = (reaper, write)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def marked(prefix: str) -> list[int]:
    """The processes whose MARK starts with `prefix` (empty where there is no /proc)."""
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:  # gone, or not ours
                continue
            if any(v.startswith(f"{MARK}={prefix}".encode()) for v in env):
                found.append(int(entry))
    return found


def kill_marked(prefix: str, rounds: int = 100) -> None:
    """SIGKILL every process marked with `prefix`, again until none is left (one may start another meanwhile)."""
    for _ in range(rounds):
        pids = marked(prefix)
        if not pids:
            return
        _signal(pids, signal.SIGKILL)
        time.sleep(0.05)


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


def _reap(token: str) -> None:
    """The reaper: wait until the launcher closes the pipe on stdin (it ended), then kill what it left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdin.buffer.read()
    kill_marked(f"{token}/")


if __name__ == "__main__":
    _reap(sys.argv[1])
