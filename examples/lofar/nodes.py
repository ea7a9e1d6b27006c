"""transferd nodes as a pipeline author runs them: `transferd serve` processes and CLI calls.

Everything here goes through the ``transferd`` command (or ``transferd.client``),
never through the daemon's internals.  Nodes run in their own session so a
Ctrl-C in the terminal reaches the pipeline, which then stops them in order.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from transferd.client import Client

__all__ = ["NodeFailed", "TransferdNode", "poll", "transferd_command", "write_mesh"]

T = TypeVar("T")
_LISTENING = re.compile(r"listening on (https?://\S+)")
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 30.0


class NodeFailed(RuntimeError):
    """A node did not start, or a transferd command failed; the message says which."""


def transferd_command() -> list[str]:
    """The ``transferd`` console script next to this interpreter, else ``python -m transferd``."""
    script = Path(sys.executable).with_name("transferd")
    if script.exists():
        return [str(script)]
    found = shutil.which("transferd")
    return [found] if found else [sys.executable, "-m", "transferd"]


def poll(check: Callable[[], T | None], timeout_s: float, what: str,
         interval_s: float = 0.2) -> T:
    """Call ``check`` until it returns something other than None; NodeFailed after the bound."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise NodeFailed(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def write_mesh(path: Path, hosts: list[str]) -> None:
    """The OCM directory both nodes trust: an OCM Directory Service document."""
    servers = [{"url": f"http://{host}", "displayName": host} for host in hosts]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"federation": "LOFAR example mesh", "servers": servers}))
    tmp.replace(path)


class TransferdNode:
    """One `transferd serve` on the embedded default (its own redis-server in ``state_dir``)."""

    def __init__(self, name: str, home: Path, *, ocm_toml: str, allow_roots: list[Path],
                 workers: int = 4, policy_toml: str | None = None) -> None:
        self.name = name
        self.home = home
        self.state_dir = home / "state"
        self.config = home / "transferd.toml"
        # `transferd serve --policy FILE` overlays the shipped policies/default.toml
        self.policy = home / "policy.toml" if policy_toml is not None else None
        self._policy_toml = policy_toml
        self.log_path = home / "serve.log"
        self.allow_roots = allow_roots
        self.workers = workers
        self.url = ""
        self.token = ""
        self._ocm_toml = ocm_toml
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """host:port, as OCM addresses name this node."""
        return urlsplit(self.url).netloc

    def start(self) -> None:
        """Launch `transferd serve`; ``wait_ready`` reads its URL back."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self._ocm_toml)
        args = [*transferd_command(), "serve", "--host", "127.0.0.1", "--port", "0",
                "--state-dir", str(self.state_dir), "--config", str(self.config),
                "--workers", str(self.workers)]
        if self.policy is not None and self._policy_toml is not None:
            self.policy.write_text(self._policy_toml)
            args += ["--policy", str(self.policy)]
        for root in self.allow_roots:
            args += ["--allow-root", str(root)]
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self) -> None:
        def listening() -> str | None:
            assert self._proc is not None
            match = _LISTENING.search(self.log_path.read_text(errors="replace"))
            if match:
                return match.group(1)
            if self._proc.poll() is not None:
                raise NodeFailed(f"{self.name}: transferd serve exited "
                                 f"({self._proc.returncode}):\n{self.log_tail()}")
            return None

        self.url = poll(listening, _START_TIMEOUT_S, f"the {self.name} node to listen")
        self.token = self.run("token", "create", "--tenant", "lofar", "--role", "submitter",
                              "--name", "lofar-pipeline", "--state-dir", str(self.state_dir),
                              client=False).strip()

    def client(self) -> Client:
        return Client(self.url, self.token)

    def env(self) -> dict[str, str]:
        # The token travels in the environment, not on a command line other users can read.
        return {**os.environ, "TRANSFERD_URL": self.url, "TRANSFERD_TOKEN": self.token}

    def run(self, *args: str, client: bool = True) -> str:
        """A transferd command against this node; its standard output, or NodeFailed."""
        done = subprocess.run([*transferd_command(), *args], capture_output=True, text=True,
                              env=self.env() if client else None, timeout=120, check=False)
        if done.returncode != 0:
            raise NodeFailed(f"transferd {' '.join(args[:2])} on {self.name} exited "
                             f"{done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def run_json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json"))

    def watch(self, job_id: str) -> int:
        """`transferd watch JOB` in the foreground: progress bars on this terminal."""
        return subprocess.run([*transferd_command(), "watch", job_id, "--interval", "0.5"],
                              env=self.env(), check=False).returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM (the node drains its workers and stops its redis-server), then insist."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
