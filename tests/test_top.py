"""``transferd top --once`` against a real node: one frame, the same figures as the API."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.node_proc import TRANSFERD, Node, create_token, wait_until
from tests.redis_server import RedisServer
from tests.servers import NginxServer
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
