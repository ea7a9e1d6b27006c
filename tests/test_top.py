"""``transferd top`` against a real node: one frame with ``--once``, the same figures as
the API; and live in a pseudo-terminal, where later frames show what changed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from tests.node_proc import TRANSFERD, Node, create_token, wait_until
from tests.redis_server import RedisServer
from tests.servers import FaultProxy, NginxServer
from tests.terminal import PtyCommand
from transferd.client import Client


def test_top_once_shows_the_overview(
    node_factory: Callable[..., Node], nginx_server: NginxServer, redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    node = node_factory(allow_roots=[dest])
    token = create_token("ops", "operator", redis_url=redis_server.url)
    client = Client(node.url, token)
    (nginx_server.root / "ok.bin").write_bytes(os.urandom(1000))
    done = client.submit([{"source": f"{nginx_server.url}/ok.bin",
                           "destination": f"file://{dest}/ok.bin"}], {})["job_id"]
    failed = client.submit([{"source": f"{nginx_server.url}/gone.bin",
                             "destination": f"file://{dest}/gone.bin"}], {"max_retries": 0})
    for job_id in (done, failed["job_id"]):
        def ended(j: str = job_id) -> bool:
            return client.job(j)["state"] in {"FINISHED", "FAILED"}

        wait_until(ended, 30)
    # the 24 h tiles come from the node's event sampler, which runs every second
    def frame() -> str | None:
        out = subprocess.run(
            [*TRANSFERD, "top", "--once", "--url", node.url, "--token", token],
            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "140"},
        )
        assert out.returncode == 0, out.stderr
        return out.stdout if "failed 24h" in out.stdout and " 1 " in out.stdout.split(
            "failed 24h")[1].splitlines()[1] else None

    text = wait_until(frame, 20, "both files counted")
    assert isinstance(text, str)
    assert "transferd · all tenants" in text
    assert "not_found" in text
    assert "queues" in text and "backend" in text  # operators see the queues panel
    assert token not in text


def test_top_refuses_a_bad_token(node_factory: Callable[..., Node]) -> None:
    node = node_factory()
    out = subprocess.run([*TRANSFERD, "top", "--once", "--url", node.url, "--token", "td_bad"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 5
    assert "td_bad" not in out.stderr + out.stdout


# CSI sequences (cursor moves, colours, the alternate screen) and OSC strings
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]")
HOME = "\x1b[H"  # rich's Live (screen mode) redraws every frame from the top-left corner


class Terminal(PtyCommand):
    """``transferd top`` on a pseudo-terminal of 140x50."""

    def __init__(self, args: list[str]) -> None:
        super().__init__(args, os.environ, start_new_session=True)

    def frames(self) -> list[str]:
        """Every frame drawn so far, as plain text."""
        return [_ESCAPES.sub("", f) for f in self.raw.split(HOME)[1:]]


def tiles(frame: str) -> dict[str, int]:
    """The counters of a frame's head panel (queued, active, finished 24h, failed 24h)."""
    lines = frame.splitlines()
    at = next(i for i, line in enumerate(lines) if "finished 24h" in line)
    numbers = re.findall(r"\d[\d,]*", lines[at + 1].replace("│", " "))
    names = ("queued", "active", "finished", "failed")
    return {name: int(n.replace(",", "")) for name, n in zip(names, numbers, strict=False)}


def test_top_live_redraws_what_changed_after_it_started(
    node_factory: Callable[..., Node], nginx_server: NginxServer, redis_server: RedisServer,
    fault_proxy: Callable[[str], FaultProxy], tmp_path: Path,
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    node = node_factory(allow_roots=[dest])
    token = create_token("ops", "operator", redis_url=redis_server.url)
    client = Client(node.url, token)
    (nginx_server.root / "live.bin").write_bytes(os.urandom(100_000))
    proxy = fault_proxy(nginx_server.url)
    proxy.set(stalled=True)  # holds the copy in flight until we have seen it live
    term = Terminal([*TRANSFERD, "top", "--interval", "0.2", "--url", node.url,
                     "--token", token])
    try:
        def drawn(check: Callable[[str], bool]) -> Callable[[], str | None]:
            def newest() -> str | None:
                frames = [f for f in term.frames() if "finished 24h" in f]
                assert term.proc.poll() is None, term.raw[-2000:]
                return frames[-1] if frames and check(frames[-1]) else None
            return newest

        first = wait_until(drawn(lambda f: True), 30, "a first frame")
        assert isinstance(first, str)
        assert "nothing is moving" in first and tiles(first)["finished"] == 0

        job = client.submit([{"source": f"{proxy.url}/live.bin",
                              "destination": f"file://{dest}/live.bin"}], {})["job_id"]
        moving = wait_until(drawn(lambda f: job[:8] in f), 30, "the new job in a frame")
        assert isinstance(moving, str)
        assert tiles(moving)["active"] == 1 and "127.0.0.1 -> local" in moving

        proxy.set(stalled=False)
        wait_until(lambda: client.job(job)["state"] == "FINISHED", 30, "the job to finish")
        done = wait_until(drawn(lambda f: tiles(f)["finished"] == 1), 30,
                          "the finished file counted in a frame")
        assert isinstance(done, str)
        assert job[:8] not in done and "nothing is moving" in done
        assert len(term.frames()) >= 3  # one process, redrawn, never restarted

        # it runs until Ctrl-C, then leaves the alternate screen and exits as interrupted
        term.proc.send_signal(signal.SIGINT)
        assert term.proc.wait(15) == 130
        raw = term.drained()
        assert raw.rstrip().endswith("transferd: interrupted")
        assert "\x1b[?1049l" in raw  # the alternate screen is left: the terminal is given back
        assert "Traceback" not in raw and token not in raw
    finally:
        term.close()


def test_top_piped_writes_each_frame_as_it_is_taken(
    node_factory: Callable[..., Node], redis_server: RedisServer, tmp_path: Path,
) -> None:
    # as `transferd top | tee log`: frames arrive one after another while it runs
    node = node_factory(allow_roots=[tmp_path], workers=0)
    token = create_token("ops", "operator", redis_url=redis_server.url)
    proc = subprocess.Popen([*TRANSFERD, "top", "--interval", "0.2", "--url", node.url,
                             "--token", token], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "COLUMNS": "120"})
    assert proc.stdout is not None
    try:
        lines: list[str] = []

        def pump() -> None:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                lines.append(raw.decode())

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        wait_until(lambda: sum("finished 24h" in line for line in lines) >= 2, 30,
                   "two frames while top runs")
        assert proc.poll() is None  # still running: nothing waited for the exit
        text = "".join(lines)
        assert "transferd · all tenants" in text
        assert "\x1b[" not in text  # plain text for a pipe, no cursor movement
        assert token not in text
    finally:
        proc.terminate()
        proc.wait(15)
