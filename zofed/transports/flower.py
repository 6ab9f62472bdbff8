"""Flower on this machine: a SuperLink and one SuperNode per client on 127.0.0.1, and the zofed Flower app
run on them with `flwr run`, as child processes that are all stopped on close, on error and at exit, and killed
with whatever they started when this process is killed (on Linux: zofed.transports.children). Imports no torch.
A multi-machine deployment runs the same commands by hand (README: Flower deployment).

The app's folder is generated into the run's folder (flower/app/pyproject.toml names the ServerApp and
ClientApp components of this package and carries the run's config), with FLWR_HOME (flower/home: the
SuperLink connection `flwr run` uses), the SuperNodes' state folders (flower/state/N) and every process's
log (flower/logs).
"""

from __future__ import annotations

import builtins
import json
import os
import socket
import subprocess
import sys
import time

from ..tasks import registering_modules
from .children import Children, free_port

SERVERAPP = "zofed.transports.flower_server:app"
CLIENTAPP = "zofed.transports.flower_client:app"
CONNECTION = "zofed-local"


def pyproject(serverapp: str, clientapp: str, config: dict[str, str]) -> str:
    """The app's pyproject.toml: what `flwr run` builds the app (FAB) from. Strings only in the config."""
    lines = ['[project]', 'name = "zofed-app"', 'version = "1.0.0"', 'description = "zofed on Flower"',
             'license = "Apache-2.0"', 'dependencies = ["zokernels[flower]"]', '',
             '[tool.flwr.app]', 'publisher = "zofed"', '', '[tool.flwr.app.components]',
             f'serverapp = "{serverapp}"', f'clientapp = "{clientapp}"', '', '[tool.flwr.app.config]']
    lines += [f"{key} = {json.dumps(str(value))}" for key, value in sorted(config.items())]
    return "\n".join(lines) + "\n"


class Deployment:
    """A SuperLink and SuperNodes (zofed-cid = 0 .. clients-1) on loopback, insecure (nothing leaves the
    machine), in `folder`. Use as a context manager: every process it started is stopped on exit."""

    def __init__(self, folder: str, clients: int, *, serverapp: str = SERVERAPP, clientapp: str = CLIENTAPP):
        self.folder, self.clients = os.path.abspath(folder), clients
        self.serverapp, self.clientapp = serverapp, clientapp
        self.children = Children()
        self.port = None
        for sub in ("app", "home", "logs", "state"):
            os.makedirs(os.path.join(self.folder, sub), exist_ok=True)
        bin_dir = os.path.dirname(sys.executable)  # the SuperLink and SuperNode start flower-superexec from PATH
        self.env = dict(os.environ, FLWR_HOME=os.path.join(self.folder, "home"),
                        PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
                        PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.started_s: dict[str, float] = {}  # seconds until each piece was up (start-up cost)

    def __enter__(self):
        try:
            self.start_superlink()
            for c in range(self.clients):
                self.start_node(c)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.children.stop()

    def _bin(self, name: str) -> str:
        return os.path.join(os.path.dirname(sys.executable), name)

    def _log(self, name: str) -> str:
        return os.path.join(self.folder, "logs", f"{name}.log")

    def start_superlink(self, timeout_s: float = 120.0) -> None:
        t0 = time.monotonic()
        self.port = free_port()
        self.children.start("superlink", [
            self._bin("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
            "--disable-runtime-dependency-installation"], log=self._log("superlink"), env=self.env)
        while True:  # up when its port takes connections
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if self.children.procs["superlink"].poll() is not None or time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"the Flower SuperLink did not start; its log ends:\n{self.tail('superlink')}")
            time.sleep(0.1)
        self.started_s["superlink"] = time.monotonic() - t0
        with builtins.open(os.path.join(self.folder, "home", "config.toml"), "w") as f:
            f.write(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                    f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')

    def start_node(self, cid: int) -> None:
        """The SuperNode of client cid (again, after kill_node: its state folder keeps its client's state and log)."""
        state = os.path.join(self.folder, "state", str(cid))
        os.makedirs(state, exist_ok=True)
        self.children.start(f"node{cid}", [
            self._bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}",
            "--host", "127.0.0.1", "--port", str(free_port()),
            "--node-config", f"zofed-cid={cid} zofed-state={json.dumps(state)}"],
            log=self._log(f"node{cid}"), env=self.env)

    def kill_node(self, cid: int) -> None:
        """A fault: SIGKILL to client cid's SuperNode and everything it started (its ClientApp included)."""
        self.children.kill(f"node{cid}", grace_s=0)

    def submit(self, config: dict[str, str]) -> subprocess.Popen:
        """Write the app with `config` and start it (`flwr run --stream`); wait() on the result to its end."""
        config = dict(config, **{"zofed-imports": ",".join(registering_modules())})
        app = os.path.join(self.folder, "app")
        with builtins.open(os.path.join(app, "pyproject.toml"), "w") as f:
            f.write(pyproject(self.serverapp, self.clientapp, config))
        return self.children.start("flwr-run", [self._bin("flwr"), "run", app, CONNECTION, "--stream"],
                                   log=self._log("flwr-run"), env=self.env)

    def run(self, config: dict[str, str], timeout_s: float) -> None:
        proc = self.submit(config)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the Flower run did not end within {timeout_s:.0f} s; `flwr run` log ends:\n"
                               f"{self.tail('flwr-run')}") from None
        if code != 0:
            raise RuntimeError(f"`flwr run` failed ({code}); its log ends:\n{self.tail('flwr-run')}")

    def tail(self, name: str, size: int = 3000) -> str:
        try:
            with builtins.open(self._log(name), "rb") as f:
                return f.read()[-size:].decode(errors="replace")
        except OSError:
            return "(no log)"


def open(cfg: dict):  # noqa: A001 (the transports' entry point is named open)
    raise ValueError("the flower transport runs the whole run inside a Flower ServerApp: call "
                     "zofed.transports.flower.run(task, cfg, out) (zofed run --transport flower does)")


def app_config(task, cfg, out: str, deadline_s: float | None = None) -> dict[str, str]:
    """The app's run config for `cfg` on `task`, writing into `out` (see flower_server.main)."""
    from ..client import run_config
    from .flower_server import check

    check(cfg)
    return {"zofed-run-config": json.dumps(run_config(cfg, task)), "zofed-out": out,
            "zofed-deadline-s": "" if deadline_s is None else str(deadline_s)}


def run_on(deployment: Deployment, task, cfg, out: str, *, deadline_s: float | None = None,
           timeout_s: float = 3600.0) -> dict:
    """Run `cfg` on `task` on a deployment's SuperNodes (client c on the one with zofed-cid=c): the ServerApp
    writes the run's usual outputs into `out`, and replicas.json (each client's replica Checksum at the end)
    last. Returns summary.json."""
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    done = os.path.join(out, "replicas.json")  # the ServerApp's last output: the run ended well
    before = os.path.getmtime(done) if os.path.exists(done) else None
    deployment.run(app_config(task, cfg, out, deadline_s), timeout_s)
    if not os.path.exists(done) or os.path.getmtime(done) == before:
        raise RuntimeError(f"the Flower run failed (no {done}); its log ends:\n{deployment.tail('flwr-run')}")
    with builtins.open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def run(task, cfg, out: str, *, deadline_s: float | None = None, timeout_s: float = 3600.0,
        progress: bool = True) -> dict:
    """`cfg` (a SimConfig) on `task` over Flower on this machine: a SuperLink, one SuperNode per client and the
    zofed app (ServerApp: zofed.transports.flower_server; ClientApp: zofed.transports.flower_client), all
    stopped at the end; the Flower files and logs in out/flower. deadline_s: the real-time bound of a round
    (None: wait for every client; a client whose SuperNode died is then waited for about a minute)."""
    if not out:
        raise ValueError("the flower transport writes the run into a folder: give --out")
    app_config(task, cfg, out)  # bad input refused before any process starts
    with Deployment(os.path.join(out, "flower"), cfg.clients) as deployment:
        if progress:
            print(f"flower: SuperLink on 127.0.0.1:{deployment.port}, {cfg.clients} SuperNodes; logs in "
                  f"{os.path.join(out, 'flower', 'logs')}", file=sys.stderr)
        return run_on(deployment, task, cfg, out, deadline_s=deadline_s, timeout_s=timeout_s)
