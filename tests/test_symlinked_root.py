"""An allowed root that is itself a symbolic link (``/data -> /mnt/data``) still works
end to end, while a link planted inside the root after submission is refused.

The API resolves every file:// destination inside the tenant's roots when it takes
the job; the worker's sink then follows no link at all.  A real node, Redis and nginx.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.node_proc import Node, create_token, wait_until
from tests.redis_server import RedisServer
from tests.servers import NginxServer
from transferd.client import Client

TERMINAL = {"FINISHED", "FAILED", "FINISHEDDIRTY", "CANCELED"}


def ended(client: Client, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = client.job(job_id)
        return job if job["state"] in TERMINAL else None

    return wait_until(done, 60, f"job {job_id} to end")  # type: ignore[return-value]


def test_a_root_that_is_a_symlink_receives_files_through_the_daemon(
    node_factory: Callable[..., Node], nginx_server: NginxServer, redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    data = os.urandom(300_000)
    (nginx_server.root / "a.bin").write_bytes(data)
    real = tmp_path / "mnt-data"
    real.mkdir()
    root = tmp_path / "data"
    root.symlink_to(real)
    node = node_factory(allow_roots=[root], workers=2)
    client = Client(node.url, create_token("lofar", "submitter", redis_url=redis_server.url))

    job = client.submit([{"source": f"{nginx_server.url}/a.bin",
                          "destination": f"file://{root}/run1/a.bin",
                          "checksum": f"adler32:{zlib.adler32(data):08x}"}], {})
    assert ended(client, job["job_id"])["state"] == "FINISHED"
    assert (real / "run1" / "a.bin").read_bytes() == data
    (record,) = client.files(job["job_id"])["files"]
    assert record["destination"] == (real / "run1" / "a.bin").as_uri()  # where it really is


def test_a_link_planted_in_the_root_after_submission_is_not_followed(
    node_factory: Callable[..., Node], nginx_server: NginxServer, redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    (nginx_server.root / "b.bin").write_bytes(os.urandom(100_000))
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    node = node_factory(allow_roots=[root], workers=0)  # nothing runs until a worker joins
    client = Client(node.url, create_token("lofar", "submitter", redis_url=redis_server.url))
    job = client.submit([{"source": f"{nginx_server.url}/b.bin",
                          "destination": f"file://{root}/sub/b.bin"}], {"max_retries": 3})
    (root / "sub").symlink_to(outside)  # planted once the job was taken

    worker = node_factory(allow_roots=[root], workers=1)
    try:
        final = ended(client, job["job_id"])
    finally:
        worker.proc.kill9()
    assert final["state"] == "FAILED"
    (record,) = client.files(job["job_id"])["files"]
    assert record["error_class"] == "permanent", record
    assert "symbolic link" in record["reason"], record
    assert record["attempts"] == 1  # refused at once, not retried
    assert list(outside.iterdir()) == []
