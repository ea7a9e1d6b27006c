"""The rclone backend end to end: real `transferd serve`, real rclone rcd, real WebDAV servers."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.node_proc import Node, create_token, wait_until
from tests.redis_server import RedisServer
from tests.servers import FaultProxy, NginxServer, RcloneWebdav
from transferd.client import Client
from transferd.errors import AuthError, Canceled, DiskFull, NotFound, RetryableError
from workers.rclone import classify_error, split_endpoint

MiB = 1024 * 1024
TERMINAL = {"FINISHED", "FINISHEDDIRTY", "FAILED", "CANCELED"}


def adler32_hex(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


def wait_job(client: Client, job_id: str, states: set[str] = TERMINAL, timeout_s: float = 60
             ) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        job = client.job(job_id)
        return job if job["state"] in states else None

    return wait_until(reached, timeout_s, f"job {job_id} in {states}")  # type: ignore[return-value]


def only_file(client: Client, job_id: str) -> dict[str, Any]:
    files = client.files(job_id)["files"]
    assert len(files) == 1
    return files[0]  # type: ignore[no-any-return]


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "dest"
    d.mkdir()
    return d


@pytest.fixture
def client_node(
    node_factory: Callable[..., Node], redis_server: RedisServer, dest: Path
) -> Callable[..., tuple[Client, Node]]:
    def start(**kwargs: object) -> tuple[Client, Node]:
        node = node_factory(allow_roots=[dest], **kwargs)
        token = create_token("lab", "submitter", redis_url=redis_server.url)
        return Client(node.url, token), node

    return start


# -- pure translations ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "cls", "error_class"),
    [
        ("object not found", NotFound, "not_found"),
        ("failed to open source object: 404 Not Found", NotFound, "not_found"),
        ("couldn't list files: 401 Unauthorized", AuthError, "auth"),
        ("Forbidden: 403", AuthError, "auth"),
        ("write /x: no space left on device", DiskFull, "disk_full"),
        ("context canceled", Canceled, "canceled"),
        ("dial tcp 127.0.0.1:1: connect: connection refused", RetryableError, "transient"),
        ("corrupted on transfer: md5 hash differ", RetryableError, "checksum"),
        ("something nobody has seen", RetryableError, "transient"),
    ],
)
def test_rclone_errors_map_to_our_classes(message: str, cls: type, error_class: str) -> None:
    err = classify_error(message)
    assert isinstance(err, cls)
    assert err.error_class == error_class
    assert message in err.reason


def test_endpoints_become_rclone_fs_and_remote() -> None:
    assert split_endpoint("rclone://store:data/a%20b.bin") == ("store:", "data/a b.bin")
    assert split_endpoint("file:///tmp/x/y.bin") == ("/", "tmp/x/y.bin")
    fs, remote = split_endpoint("davs://h.example:8443/dav/f.tar", bearer_token="T")
    assert fs == {"type": "webdav", "url": "https://h.example:8443", "vendor": "other",
                  "bearer_token": "T"}
    assert remote == "dav/f.tar"


# -- against the real binary -----------------------------------------------------------------


def test_webdav_to_file_and_to_webdav_finish_with_verified_adler32(
    client_node: Callable[..., tuple[Client, Node]], rclone_webdav: RcloneWebdav,
    nginx_server: NginxServer, dest: Path,
) -> None:
    data = os.urandom(3 * MiB + 11)
    (rclone_webdav.root / "in").mkdir()
    (rclone_webdav.root / "in" / "a.bin").write_bytes(data)
    client, _ = client_node()
    files = [
        {"source": f"{rclone_webdav.url}/in/a.bin", "destination": f"file://{dest}/a.bin",
         "checksum": f"adler32:{adler32_hex(data)}"},
        {"source": f"{rclone_webdav.url}/in/a.bin",
         "destination": f"dav://127.0.0.1:{nginx_server.port}/out/a.bin"},
    ]
    job_id = client.submit(files, {"backend": "rclone"})["job_id"]
    job = wait_job(client, job_id)
    assert job["state"] == "FINISHED", client.files(job_id)
    for record in client.files(job_id)["files"]:
        assert record["backend"] == "rclone"
        assert record["verified_checksum"] == f"adler32:{adler32_hex(data)}"
        assert record["bytes_done"] == len(data)
    assert (dest / "a.bin").read_bytes() == data
    assert (nginx_server.root / "out" / "a.bin").read_bytes() == data


def test_configured_remote_routes_to_rclone_by_scheme(
    client_node: Callable[..., tuple[Client, Node]], rclone_webdav: RcloneWebdav,
    dest: Path, tmp_path: Path,
) -> None:
    conf = tmp_path / "rclone.conf"
    conf.write_text(f"[archive]\ntype = webdav\nurl = {rclone_webdav.url}\nvendor = other\n")
    data = os.urandom(MiB)
    (rclone_webdav.root / "obs").mkdir()
    (rclone_webdav.root / "obs" / "L1_SB000.tar").write_bytes(data)
    client, _ = client_node(env={"RCLONE_CONFIG": str(conf)})
    job_id = client.submit([
        {"source": "rclone://archive:obs/L1_SB000.tar", "destination": f"file://{dest}/sb0.tar"},
        # and back out to the remote: read back through rcd for the checksum
        {"source": f"{rclone_webdav.url}/obs/L1_SB000.tar",
         "destination": "rclone://archive:copy/L1_SB000.tar"},
    ])["job_id"]
    job = wait_job(client, job_id)
    assert job["state"] == "FINISHED", client.files(job_id)
    assert {f["backend"] for f in client.files(job_id)["files"]} == {"rclone"}
    assert (dest / "sb0.tar").read_bytes() == data
    assert (rclone_webdav.root / "copy" / "L1_SB000.tar").read_bytes() == data
    assert all(f["verified_checksum"] == f"adler32:{adler32_hex(data)}"
               for f in client.files(job_id)["files"])


def test_missing_source_fails_not_found(
    client_node: Callable[..., tuple[Client, Node]], nginx_server: NginxServer, dest: Path,
) -> None:
    client, _ = client_node()
    job_id = client.submit(
        [{"source": f"{nginx_server.url}/nope.bin", "destination": f"file://{dest}/nope.bin"}],
        {"backend": "rclone"},
    )["job_id"]
    assert wait_job(client, job_id)["state"] == "FAILED"
    record = only_file(client, job_id)
    assert record["error_class"] == "not_found"
    assert record["attempts"] == 1  # a 404 is not retried
    assert not (dest / "nope.bin").exists()


def test_wrong_checksum_fails_after_reading_back(
    client_node: Callable[..., tuple[Client, Node]], nginx_server: NginxServer, dest: Path,
) -> None:
    (nginx_server.root / "c.bin").write_bytes(os.urandom(200_000))
    client, _ = client_node()
    job_id = client.submit(
        [{"source": f"{nginx_server.url}/c.bin", "destination": f"file://{dest}/c.bin",
          "checksum": "adler32:00000001"}],
        {"backend": "rclone", "max_retries": 0},
    )["job_id"]
    assert wait_job(client, job_id)["state"] == "FAILED"
    record = only_file(client, job_id)
    assert record["error_class"] == "checksum"
    assert "expected 00000001" in record["reason"]


def test_cancel_mid_copy_stops_rclone(
    client_node: Callable[..., tuple[Client, Node]], nginx_server: NginxServer,
    fault_proxy: Callable[[str], FaultProxy], dest: Path,
) -> None:
    (nginx_server.root / "slow.bin").write_bytes(os.urandom(40 * MiB))
    proxy = fault_proxy(nginx_server.url)
    proxy.set(throttle_bps=2 * MiB)  # 20 s of copying unless stopped
    client, _ = client_node()
    job_id = client.submit(
        [{"source": f"{proxy.url}/slow.bin", "destination": f"file://{dest}/slow.bin"}],
        {"backend": "rclone"},
    )["job_id"]
    wait_until(lambda: only_file(client, job_id)["bytes_done"] > 0, 30, "progress reported")
    assert only_file(client, job_id)["state"] == "ACTIVE"
    client.cancel(job_id)
    assert wait_job(client, job_id)["state"] == "CANCELED"
    # rclone really stopped: its connection through the proxy closes and bytes stop flowing
    wait_until(lambda: proxy.open_sockets == 0, 15, "rclone to drop its connection")
    moved = proxy.bytes_to_client
    assert moved < 40 * MiB
    assert not (dest / "slow.bin").exists()
    assert proxy.bytes_to_client == moved
