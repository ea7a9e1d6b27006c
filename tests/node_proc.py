"""Real transferd processes for end-to-end tests: `transferd serve` and `transferd worker`."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from transferd.client import Client

TRANSFERD = [sys.executable, "-m", "transferd"]
MiB = 1024 * 1024
TERMINAL = frozenset({"FINISHED", "FINISHEDDIRTY", "FAILED", "CANCELED", "EXPIRED"})


def _pump(stream: object, lines: queue.Queue[str], log: list[str]) -> None:
    for raw in iter(stream.readline, ""):  # type: ignore[attr-defined]
        log.append(raw)
        lines.put(raw)


@dataclass
class Proc:
    """A child process whose output is captured line by line."""

    popen: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    log: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, args: list[str], env: dict[str, str] | None = None) -> Proc:
        popen = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})},
        )
        proc = cls(popen)
        pump = threading.Thread(target=_pump, args=(popen.stdout, proc.lines, proc.log))
        pump.daemon = True
        pump.start()
        return proc

    def wait_for_line(self, needle: str, timeout_s: float = 30) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.popen.poll() is not None:
                    break
                continue
            if needle in line:
                return line
        raise AssertionError(f"never printed {needle!r}; output:\n{''.join(self.log)[-4000:]}")

    def kill9(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout_s: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


@dataclass
class Node:
    proc: Proc
    url: str
    state_dir: Path


def start_node(
    state_dir: Path, *, redis_url: str | None, workers: int = 4, allow_roots: list[Path] = (),  # type: ignore[assignment]
    extra: list[str] = (),  # type: ignore[assignment]
    env: dict[str, str] | None = None,
) -> Node:
    args = [*TRANSFERD, "serve", "--port", "0", "--state-dir", str(state_dir),
            "--workers", str(workers)]
    if redis_url:
        args += ["--redis-url", redis_url]
    for root in allow_roots:
        args += ["--allow-root", str(root)]
    proc = Proc.start([*args, *extra], env)
    line = proc.wait_for_line("listening on", 60)
    url = line.strip().rsplit(" ", 1)[-1]
    return Node(proc, url, state_dir)


def create_token(tenant: str, role: str, *, redis_url: str | None = None,
                 state_dir: Path | None = None) -> str:
    args = [*TRANSFERD, "token", "create", "--tenant", tenant, "--role", role]
    args += ["--redis-url", redis_url] if redis_url else ["--state-dir", str(state_dir)]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


def adler32_hex(path: Path) -> str:
    """The adler32 a node reports for the file at ``path``, read in pieces."""
    value = 1
    with path.open("rb") as f:
        while block := f.read(4 * MiB):
            value = zlib.adler32(block, value)
    return f"{value:08x}"


def wait_until(predicate: Callable[[], object], timeout_s: float = 60, what: str = "") -> object:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after the bound."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def wait_job(client: Client, job_id: str, states: Collection[str] = TERMINAL,
             timeout_s: float = 60) -> dict[str, Any]:
    """The job as the API shows it once its state is one of ``states`` (by default, ended)."""
    def reached() -> dict[str, Any] | None:
        job = client.job(job_id)
        return job if job["state"] in states else None

    return wait_until(reached, timeout_s, f"job {job_id} in {sorted(states)}")  # type: ignore[return-value]


@pytest.fixture
def node_factory(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., Node]]:
    """Starts `transferd serve` processes on the test's (flushed) Redis; stops them after."""
    started: list[Proc] = []

    def factory(**kwargs: object) -> Node:
        kwargs.setdefault("redis_url", redis_url)
        node = start_node(tmp_path / f"node{len(started)}", **kwargs)  # type: ignore[arg-type]
        started.append(node.proc)
        return node

    yield factory
    for proc in started:
        proc.stop()


LofarNode = tuple[Node, str, Client]


@pytest.fixture
def lofar_node(node_factory: Callable[..., Node], redis_url: str, dest: Path
               ) -> Callable[..., LofarNode]:
    """Starts a node that may write ``dest``: (node, a lofar token of ``role``, its client).

    Keyword arguments go to ``node_factory`` (``workers=0``, ``extra=[...]``).
    """
    def start(role: str = "submitter", **kwargs: Any) -> LofarNode:
        node = node_factory(allow_roots=[dest], **kwargs)
        token = create_token("lofar", role, redis_url=redis_url)
        return node, token, Client(node.url, token)

    return start


def client_for(node: Node, token: str) -> Client:
    return Client(node.url, token)


@pytest.fixture
def worker_procs(redis_url: str) -> Iterator[Callable[..., tuple[Proc, str]]]:
    """Starts `transferd worker` processes on the test's Redis: (process, its worker id)."""
    started: list[Proc] = []

    def start(threads: int = 2) -> tuple[Proc, str]:
        proc = Proc.start([*TRANSFERD, "worker", "--redis-url", redis_url,
                           "--threads", str(threads)])
        started.append(proc)
        line = proc.wait_for_line(" ready", 60)
        found = re.search(r"transferd worker (\S+) ready", line)
        assert found, line
        return proc, found.group(1)

    yield start
    for proc in started:
        proc.stop()
