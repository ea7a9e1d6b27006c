"""OCM under stress: the export's guards, unshare mid-transfer, a token expiring mid-transfer."""

from __future__ import annotations

import http.client
import os
from collections.abc import Callable
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import pytest
import redis

from tests.node_proc import TRANSFERD, Node, Proc, adler32_hex, wait_job, wait_until
from tests.ocm_nodes import OcmNode, start_ocm_node, write_directory
from tests.redis_server import free_port
from tests.servers import FaultProxy

MiB = 1024 * 1024


@pytest.fixture
def mesh(tmp_path: Path) -> Path:
    return tmp_path / "mesh.json"


def raw_request(base: str, method: str, path: str, token: str | None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A request whose path goes on the wire exactly as given (no dot-segment cleanup)."""
    parts = urlsplit(base)
    # base is always http://host:port, so there is a hostname
    conn = http.client.HTTPConnection(cast(str, parts.hostname), parts.port, timeout=30)
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, headers=all_headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def pending_share(b: OcmNode) -> dict[str, object]:
    shares = wait_until(lambda: b.api("GET", "/shares")["shares"], 30, "the share to arrive")
    return shares[0]  # type: ignore[index, no-any-return]


def test_export_guards(
    node_factory: Callable[..., Node], redis_url: str, tmp_path: Path, mesh: Path,
) -> None:
    outbox = tmp_path / "outbox"
    (outbox / "data" / "sub").mkdir(parents=True)
    (outbox / "data" / "sub" / "f.bin").write_bytes(b"inside")
    (outbox / "secret.txt").write_text("TOP SECRET CONTENT")
    (outbox / "data" / "link").symlink_to(outbox / "secret.txt")
    a = start_ocm_node(node_factory, tmp_path, "a", 1, redis_url, directory=mesh,
                       recipients={"alice": {"tenant": "lab", "root": str(tmp_path)}},
                       allow_roots=[outbox])
    b = start_ocm_node(node_factory, tmp_path, "b", 2, redis_url, directory=mesh,
                       recipients={"bob": {"tenant": "lab", "root": str(tmp_path / "in")}})
    write_directory(mesh, [a.host, b.host])
    sent = a.api("POST", "/ocm/sent", {"to": f"bob@{b.host}", "path": str(outbox / "data")})
    share = pending_share(b)
    # no decode_responses: the client answers bytes
    secret = cast("bytes | None",
                  redis.Redis.from_url(b.redis_url).get(f"td:ocm:secret:{share['id']}"))
    assert secret
    good = secret.decode()
    base = f"/ocm/webdav/{sent['id']}"
    depth1 = {"Depth": "1"}
    status, body = raw_request(a.node.url, "PROPFIND", base + "/", good, depth1)
    assert status == 207 and b"f.bin" not in body and b"sub/" in body
    status, body = raw_request(a.node.url, "PROPFIND", base + "/", good, {"Depth": "infinity"})
    assert status == 207 and b"f.bin" in body and b"ADLER32:" in body
    assert b"secret.txt" not in body and b"/link" not in body
    status, body = raw_request(a.node.url, "GET", base + "/sub/f.bin", good,
                               {"Range": "bytes=1-3"})
    assert (status, body) == (206, b"nsi")
    assert raw_request(a.node.url, "GET", base + "/sub/f.bin", "wrong-secret")[0] == 401
    assert raw_request(a.node.url, "GET", base + "/sub/f.bin", None)[0] == 401
    for path in (base + "/../secret.txt", base + "/%2e%2e/secret.txt",
                 base + "/sub/%2E%2E/%2e%2e/secret.txt", base + "/sub/..%2f..%2fsecret.txt"):
        status, body = raw_request(a.node.url, "GET", path, good)
        assert status in (400, 403, 404), path
        assert b"TOP SECRET CONTENT" not in body
    status, body = raw_request(a.node.url, "GET", base + "/link", good)
    assert status == 403 and b"TOP SECRET CONTENT" not in body
    assert raw_request(a.node.url, "PUT", base + "/new", good)[0] in (403, 405)
    other = a.api("POST", "/ocm/sent", {"to": f"bob@{b.host}", "path": str(outbox)})
    assert raw_request(a.node.url, "GET", f"/ocm/webdav/{other['id']}/secret.txt", good)[0] \
        == 401  # one share's secret opens no other share


def throttled_sender(
    node_factory: Callable[..., Node], fault_proxy: Callable[[str], FaultProxy], tmp_path: Path,
    redis_url: str, mesh: Path, outbox: Path, **kwargs: object,
) -> tuple[OcmNode, FaultProxy]:
    port = free_port()
    proxy = fault_proxy(f"http://127.0.0.1:{port}")
    a = start_ocm_node(node_factory, tmp_path, "a", 1, redis_url, directory=mesh,
                       recipients={"alice": {"tenant": "lab", "root": str(tmp_path)}},
                       allow_roots=[outbox], public_url=proxy.url, port=port,
                       **kwargs)  # type: ignore[arg-type]
    return a, proxy


def boxes(tmp_path: Path) -> tuple[Path, Path]:
    """Empty folders: the sender's outbox and bob's inbox."""
    outbox, inbox = tmp_path / "outbox", tmp_path / "inbox"
    outbox.mkdir()
    inbox.mkdir()
    return outbox, inbox


def bob_receiver(node_factory: Callable[..., Node], tmp_path: Path, redis_url: str, mesh: Path,
                 inbox: Path, *, sender: OcmNode, workers: int = 4) -> OcmNode:
    """Node B, where bob takes every share from ``sender`` into ``inbox`` at once."""
    b = start_ocm_node(node_factory, tmp_path, "b", 2, redis_url, directory=mesh,
                       recipients={"bob": {"tenant": "lab", "root": str(inbox),
                                           "auto_accept": True}}, workers=workers)
    write_directory(mesh, [sender.host, b.host])
    return b


def test_unshare_mid_transfer_cancels_and_removes_partial(
    node_factory: Callable[..., Node], redis_url: str, tmp_path: Path, mesh: Path,
    fault_proxy: Callable[[str], FaultProxy],
) -> None:
    outbox, inbox = boxes(tmp_path)
    (outbox / "big.bin").write_bytes(os.urandom(40 * MiB))
    a, proxy = throttled_sender(node_factory, fault_proxy, tmp_path, redis_url, mesh, outbox)
    b = bob_receiver(node_factory, tmp_path, redis_url, mesh, inbox, sender=a)
    proxy.set(throttle_bps=2 * MiB)
    sent = a.cli("share", "--to", f"bob@{b.host}", str(outbox / "big.bin"))
    assert sent.returncode == 0, sent.stderr
    share = pending_share(b)
    job_id = str(share["job_id"])
    wait_until(lambda: b.client.job(job_id)["totals"]["bytes_done"] > 0, 30, "bytes to move")
    revoked = a.cli("share", "--revoke", sent.stdout.strip())
    assert revoked.returncode == 0, revoked.stderr
    wait_until(lambda: b.client.job(job_id)["state"] == "CANCELED", 30, "the cancel")
    assert b.api("GET", "/shares")["shares"][0]["state"] == "unshared"
    wait_until(lambda: not any(inbox.rglob("*")), 30, "the partial file to go")
    assert b.api("GET", f"/transfers/{job_id}")["status"] == "STATUS_TRANSFER_CANCELLED"


def test_token_expiring_mid_transfer_is_exchanged_again(
    node_factory: Callable[..., Node], redis_url: str, tmp_path: Path, mesh: Path,
    fault_proxy: Callable[[str], FaultProxy],
) -> None:
    outbox, inbox = boxes(tmp_path)
    size = 24 * MiB
    (outbox / "slow.bin").write_bytes(os.urandom(size))
    a, proxy = throttled_sender(node_factory, fault_proxy, tmp_path, redis_url, mesh, outbox,
                                criteria=["must-exchange-token"], token_ttl_s=5)
    b = bob_receiver(node_factory, tmp_path, redis_url, mesh, inbox, sender=a, workers=0)
    # one stream of 8 MiB chunks: a request every ~4 s at 2 MiB/s, for ~12 s in all
    worker = Proc.start([*TRANSFERD, "worker", "--redis-url", b.redis_url, "--threads", "2",
                         "--chunk-size", "8M", "--streams", "1"])
    try:
        worker.wait_for_line("ready", 60)
        sent = a.api("POST", "/ocm/sent", {"to": f"bob@{b.host}",
                                           "path": str(outbox / "slow.bin")})
        share = pending_share(b)
        proxy.set(throttle_bps=2 * MiB)
        before = proxy.bytes_to_client
        job_id = str(share["job_id"])
        wait_job(b.client, job_id, {"FINISHED", "FAILED"}, 120)
        fetched = proxy.bytes_to_client - before
        record = b.client.files(job_id)["files"][0]
        assert record["state"] == "FINISHED", record
        assert record["attempts"] == 1
        assert record["verified_checksum"] == f"adler32:{adler32_hex(outbox / 'slow.bin')}"
        assert (inbox / "slow.bin").read_bytes() == (outbox / "slow.bin").read_bytes()
        assert size <= fetched < size + MiB  # nothing fetched twice
        # one exchange listed the folder on arrival; the worker's first token (~5 s)
        # cannot have lasted the whole ~12 s copy: it was exchanged again mid-file
        assert a.api("GET", f"/ocm/sent/{sent['id']}")["tokens_issued"] >= 3
    finally:
        worker.stop()
