"""The rclone backend end to end: real `transferd serve`, real rclone rcd, real WebDAV servers."""

from __future__ import annotations

import json
import os
import secrets
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.node_proc import Node, create_token, wait_job, wait_until
from tests.ocm_nodes import OcmPeer, post_json, start_ocm_node, write_directory
from tests.peers import LoopThread
from tests.redis_server import RedisServer
from tests.servers import FaultProxy, NginxServer, RcloneWebdav, _make_wsgidav_app
from transferd.client import Client
from transferd.errors import AuthError, Canceled, DiskFull, NotFound, RetryableError
from workers.rclone import RcError, RcloneDaemon, classify_error, split_endpoint

MiB = 1024 * 1024


def adler32_hex(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


def only_file(client: Client, job_id: str) -> dict[str, Any]:
    files = client.files(job_id)["files"]
    assert len(files) == 1
    return files[0]  # type: ignore[no-any-return]


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


# -- bearer tokens on an on-the-fly WebDAV remote -------------------------------------------

TOKEN = "rclone-bearer-5c0ffee7d1"


@dataclass
class Seen:
    method: str
    path: str
    agent: str
    allowed: bool


@dataclass
class BearerWebdav:
    """wsgidav behind a check for ``Authorization: Bearer <token>`` (the token may change)."""

    root: Path
    port: int
    token: str
    seen: list[Seen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rclone_requests(self) -> list[Seen]:
        return [r for r in self.seen if r.agent.startswith("rclone/")]


@pytest.fixture
def bearer_webdav(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BearerWebdav]:
    from cheroot import wsgi

    root = tmp_path_factory.mktemp("bearer-dav")
    dav = _make_wsgidav_app(root, {})
    state = BearerWebdav(root, 0, TOKEN)

    def guard(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        allowed = secrets.compare_digest(environ.get("HTTP_AUTHORIZATION", ""),
                                         f"Bearer {state.token}")
        state.seen.append(Seen(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""),
                               environ.get("HTTP_USER_AGENT", ""), allowed))
        if not allowed:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Bearer realm="dav"'),
                                                ("Content-Length", "0")])
            return [b""]
        result: Iterable[bytes] = dav(environ, start_response)
        return result

    server = wsgi.Server(("127.0.0.1", 0), guard, numthreads=8)
    server.prepare()
    state.port = server.bind_addr[1]
    thread = threading.Thread(target=server.serve, name="bearer-dav", daemon=True)
    thread.start()
    yield state
    server.stop()
    thread.join(10)


async def test_rcd_reads_an_on_the_fly_remote_with_its_bearer_token(
    bearer_webdav: BearerWebdav, tmp_path: Path,
) -> None:
    data = os.urandom(MiB + 3)
    (bearer_webdav.root / "a.bin").write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    daemon = RcloneDaemon()
    await daemon.start()
    try:
        src_fs, src_remote = split_endpoint(f"{bearer_webdav.url}/a.bin", bearer_token=TOKEN)
        dst_fs, dst_remote = split_endpoint(f"file://{out}/a.bin")
        await daemon.call("operations/copyfile", {"srcFs": src_fs, "srcRemote": src_remote,
                                                  "dstFs": dst_fs, "dstRemote": dst_remote})
        assert (out / "a.bin").read_bytes() == data
        assert bearer_webdav.rclone_requests() and all(
            r.allowed for r in bearer_webdav.rclone_requests())

        before = len(bearer_webdav.seen)
        bad_fs, _ = split_endpoint(f"{bearer_webdav.url}/a.bin", bearer_token="wrong-token")
        with pytest.raises(RcError) as err:
            await daemon.call("operations/copyfile", {"srcFs": bad_fs, "srcRemote": src_remote,
                                                      "dstFs": dst_fs, "dstRemote": "b.bin"})
        refused = bearer_webdav.seen[before:]
        assert refused and not any(r.allowed for r in refused)
        assert len(refused) <= 3  # a 401 is not one of rclone's low-level retries
        assert isinstance(classify_error(err.value.message), AuthError)
        assert not (out / "b.bin").exists()
        assert TOKEN not in daemon._log_tail() and TOKEN not in str(err.value)
    finally:
        await daemon.close()


def test_share_job_on_rclone_uses_the_bearer_and_fails_auth_when_it_is_refused(
    node_factory: Callable[..., Node], redis_url: str, tmp_path: Path, loop_thread: LoopThread,
    bearer_webdav: BearerWebdav,
) -> None:
    """A job whose source needs a bearer token (an OCM share's secret) runs on rclone."""
    files = {"a.bin": os.urandom(2 * MiB + 1), "sub/b.bin": os.urandom(300_000)}
    for rel, data in files.items():
        (bearer_webdav.root / "set" / rel).parent.mkdir(parents=True, exist_ok=True)
        (bearer_webdav.root / "set" / rel).write_bytes(data)
    peer = OcmPeer.start(loop_thread, tmp_path / "peer", secret=TOKEN)  # the sending provider
    try:
        policy = tmp_path / "policy.toml"
        policy.write_text('[[routing.rules]]\nbackend = "rclone"\nschemes = ["http"]\n')
        mesh, inbox = tmp_path / "mesh.json", tmp_path / "inbox"
        b = start_ocm_node(node_factory, tmp_path, "b", 2, redis_url, directory=mesh,
                           recipients={"pipe": {"tenant": "lab", "root": str(inbox / "pipe"),
                                                "auto_accept": True},
                                       "hold": {"tenant": "lab", "root": str(inbox / "hold")}},
                           extra=["--policy", str(policy)])
        write_directory(mesh, [peer.host, b.host])
        share_url = f"{b.node.url}/ocm/shares"
        source = f"{bearer_webdav.url}/set/"

        # the right token: every file copied by rclone, checksummed by us
        status, answer = post_json(share_url, peer.share_body(
            f"pipe@{b.host}", "set", source, resource_type="folder", provider_id="p-ok"))
        assert status == 201, answer
        ok = next(s for s in b.api("GET", "/shares")["shares"] if s["name"] == "set"
                  and s["state"] == "accepted")
        assert wait_job(b.client, ok["job_id"])["state"] == "FINISHED", b.client.files(
            ok["job_id"])
        for record in b.client.files(ok["job_id"])["files"]:
            assert record["backend"] == "rclone"
            rel = record["destination"].split("/set/", 1)[1]
            assert record["verified_checksum"] == f"adler32:{adler32_hex(files[rel])}"
        for rel, data in files.items():
            assert (inbox / "pipe" / "set" / rel).read_bytes() == data
        by_rclone = bearer_webdav.rclone_requests()
        assert {r.method for r in by_rclone} >= {"GET"} and all(r.allowed for r in by_rclone)

        # a share listed with the token, which the sender then rotates before we accept
        status, answer = post_json(share_url, peer.share_body(
            f"hold@{b.host}", "set", source, resource_type="folder", provider_id="p-rot"))
        assert status == 201, answer
        held = next(s for s in b.api("GET", "/shares", query={"state": "pending"})["shares"])
        bearer_webdav.token = "rotated-" + secrets.token_hex(8)
        before = len(bearer_webdav.rclone_requests())
        b.api("POST", f"/shares/{held['id']}/accept")
        assert wait_job(b.client, held["job_id"])["state"] == "FAILED"
        for record in b.client.files(held["job_id"])["files"]:
            assert (record["backend"], record["state"], record["error_class"]) == (
                "rclone", "FAILED", "auth")
            assert record["attempts"] == 1  # refused credentials are not retried
            assert "401" in record["reason"]
        refused = bearer_webdav.rclone_requests()[before:]
        assert refused and not any(r.allowed for r in refused)
        assert not (inbox / "hold" / "set" / "a.bin").exists()

        # the token is in no log line and no answer
        answers = json.dumps([b.api("GET", "/shares"), b.api("GET", "/transfers"),
                              *(b.client.job(s["job_id"]) for s in (ok, held)),
                              *(b.client.files(s["job_id"]) for s in (ok, held))])
        assert TOKEN not in b.log() and TOKEN not in answers
    finally:
        peer.stop()
