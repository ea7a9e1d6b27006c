"""HttpSource against real servers: nginx, rclone serve webdav, wsgidav and aiohttp peers."""

from __future__ import annotations

import email.utils
import hashlib
import os
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import aiohttp
import pytest

from tests.peers import HttpPeer
from tests.servers import FaultProxy, NginxServer, RcloneWebdav, WsgidavServer
from transferd.errors import (
    AuthError,
    ChecksumMismatch,
    NotFound,
    PermanentError,
    RetryableError,
    SourceChanged,
)
from workers.stream.base import SourceInfo
from workers.stream.http import MIN_PIECE_BYTES, HttpSource

MIB = 1 << 20


async def fetch(src: HttpSource, info: SourceInfo, offset: int = 0,
                length: int | None = None) -> bytes:
    return b"".join([p async for p in src.read(info, offset, length)])


def put_file(root: Path, rel: str, data: bytes) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


async def test_ranges_across_boundaries_from_nginx(
        nginx_server: NginxServer, session: aiohttp.ClientSession) -> None:
    data = os.urandom(3 * MIB + 17)
    put_file(nginx_server.root, "data/file.bin", data)
    src = HttpSource(nginx_server.url + "/data/file.bin", session)
    info = await src.stat()
    assert info.size == len(data) and info.etag and info.last_modified and info.accepts_ranges

    spans = [(0, MIB), (MIB - 5, 10), (2 * MIB - 1, MIB + 2), (len(data) - 3, 3),
             (3 * MIB, None), (0, None)]
    for offset, length in spans:
        end = None if length is None else offset + length
        assert await fetch(src, info, offset, length) == data[offset:end], (offset, length)

    gets = [e for e in nginx_server.wait_for_log(1 + len(spans)) if e.method == "GET"]
    assert [e.status for e in gets] == [206] * 5 + [200]
    assert [e.body_bytes_sent for e in gets[:4]] == [MIB, 10, MIB + 2, 3]


async def test_pieces_handed_over_are_large(
        nginx_server: NginxServer, session: aiohttp.ClientSession) -> None:
    data = os.urandom(9 * MIB + 5)
    put_file(nginx_server.root, "big.bin", data)
    src = HttpSource(nginx_server.url + "/big.bin", session)
    info = await src.stat()
    pieces = [p async for p in src.read(info, 0, None)]
    assert b"".join(pieces) == data
    assert all(len(p) >= MIN_PIECE_BYTES for p in pieces[:-1])


async def test_changed_file_on_nginx_raises_source_changed(
        nginx_server: NginxServer, session: aiohttp.ClientSession) -> None:
    path = put_file(nginx_server.root, "f.bin", os.urandom(MIB))
    src = HttpSource(nginx_server.url + "/f.bin", session)
    info = await src.stat()
    path.write_bytes(os.urandom(MIB))  # same size, new mtime → new ETag
    later = time.time() + 60
    os.utime(path, (later, later))
    with pytest.raises(SourceChanged):
        await fetch(src, info, 1000, 5000)
    assert (await src.stat()).validator != info.validator


async def test_if_range_with_changed_content_on_aiohttp_peer(
        http_server: HttpPeer, session: aiohttp.ClientSession) -> None:
    http_server.files["a"] = os.urandom(200_000)
    src = HttpSource(http_server.url + "/f/a", session)
    info = await src.stat()
    assert await fetch(src, info, 10, 100) == http_server.files["a"][10:110]
    http_server.files["a"] = os.urandom(200_000)
    with pytest.raises(SourceChanged):
        await fetch(src, info, 10, 100)
    sent = [r.headers.get("If-Range") for r in http_server.requests if r.method == "GET"]
    assert sent == [info.etag, info.etag]


async def test_if_range_falls_back_to_last_modified(
        http_server: HttpPeer, session: aiohttp.ClientSession) -> None:
    http_server.files["a"] = os.urandom(5000)
    src = HttpSource(http_server.url + "/f/a", session)
    info = await src.stat()
    no_etag = SourceInfo(info.url, info.size, None, info.last_modified, accepts_ranges=True)
    assert await fetch(src, no_etag, 100, 50) == http_server.files["a"][100:150]
    assert http_server.requests[-1].headers["If-Range"] == info.last_modified


async def test_server_ignoring_range(http_server: HttpPeer,
                                     session: aiohttp.ClientSession) -> None:
    data = os.urandom(3 * MIB)
    http_server.files["n"] = data
    src = HttpSource(http_server.url + "/norange/n", session)
    info = await src.stat()
    assert not info.accepts_ranges
    assert await fetch(src, info) == data
    assert await fetch(src, info, 0, len(data)) == data
    # a resume against a server without ranges still yields just the slice asked for
    assert await fetch(src, info, MIB + 1, 1000) == data[MIB + 1: MIB + 1001]


async def test_full_answer_to_range_is_source_changed_when_ranges_were_promised(
        http_server: HttpPeer, session: aiohttp.ClientSession) -> None:
    http_server.files["n"] = os.urandom(10_000)
    src = HttpSource(http_server.url + "/norange/n", session)
    info = await src.stat()
    promised = SourceInfo(info.url, info.size, info.etag, info.last_modified,
                          accepts_ranges=True)
    with pytest.raises(SourceChanged):
        await fetch(src, promised, 100, 10)


async def test_truncated_body_is_retryable(http_server: HttpPeer,
                                           session: aiohttp.ClientSession) -> None:
    http_server.files["t"] = os.urandom(2 * MIB)
    src = HttpSource(http_server.url + "/truncate/t", session)
    info = await src.stat()
    with pytest.raises(RetryableError, match="truncated"):
        await fetch(src, info)
    with pytest.raises(RetryableError, match="truncated"):
        await fetch(src, info, 1000, MIB)


@pytest.mark.parametrize(("status", "error"), [
    (404, NotFound), (410, NotFound), (401, AuthError), (403, AuthError),
    (400, PermanentError), (416, PermanentError), (500, RetryableError),
    (503, RetryableError), (429, RetryableError),
])
async def test_status_mapping(http_server: HttpPeer, session: aiohttp.ClientSession,
                              status: int, error: type[Exception]) -> None:
    async def token() -> Mapping[str, str]:
        return {"Authorization": "Bearer sup3r-secret"}

    src = HttpSource(f"{http_server.url}/status/{status}", session, token)
    with pytest.raises(error) as exc:
        await src.stat()
    assert str(status) in str(exc.value)
    assert "sup3r-secret" not in str(exc.value)
    if status != 404:
        assert type(exc.value) is error or issubclass(type(exc.value), error)


async def test_missing_file_on_nginx_is_not_found(
        nginx_server: NginxServer, session: aiohttp.ClientSession) -> None:
    with pytest.raises(NotFound):
        await HttpSource(nginx_server.url + "/nope.bin", session).stat()
    with pytest.raises(NotFound):
        await HttpSource(f"dav://127.0.0.1:{nginx_server.port}/nope.bin", session).stat()


@pytest.mark.parametrize("retry_after", ["7", "http-date"])
async def test_retry_after_is_honoured(http_server: HttpPeer, session: aiohttp.ClientSession,
                                       retry_after: str) -> None:
    value = retry_after if retry_after != "http-date" else \
        email.utils.formatdate(time.time() + 120, usegmt=True)
    src = HttpSource(f"{http_server.url}/status/503?retry_after={value}", session)
    with pytest.raises(RetryableError) as exc:
        await src.stat()
    assert exc.value.retry_after_s is not None
    if retry_after == "7":
        assert exc.value.retry_after_s == 7
    else:
        assert 100 < exc.value.retry_after_s <= 120


async def test_headers_are_asked_for_on_every_request(
        http_server: HttpPeer, session: aiohttp.ClientSession) -> None:
    http_server.files["s"] = os.urandom(1000)
    tokens = iter(["old", "new", "new"])

    async def provider() -> Mapping[str, str]:
        return {"Authorization": f"Bearer {next(tokens)}"}

    http_server.token = "old"
    src = HttpSource(http_server.url + "/auth/s", session, provider)
    info = await src.stat()
    http_server.token = "new"  # the peer rotated the token: the next request must carry it
    assert await fetch(src, info, 0, 10) == http_server.files["s"][:10]
    http_server.token = "newer"
    with pytest.raises(AuthError) as exc:
        await fetch(src, info, 0, 10)
    assert "new" not in str(exc.value).replace("/auth/", "")


async def test_basic_credentials_in_url(http_server: HttpPeer,
                                        session: aiohttp.ClientSession) -> None:
    http_server.files["b"] = b"hello"
    src = HttpSource(f"http://bob:pa55word@127.0.0.1:{http_server.port}/auth/b", session)
    assert "pa55word" not in src.url and "bob" not in src.url
    with pytest.raises(AuthError) as exc:
        await src.stat()
    assert "pa55word" not in str(exc.value)
    assert http_server.requests[-1].headers["Authorization"].startswith("Basic ")


async def test_repr_digest_and_digest_headers(http_server: HttpPeer,
                                              session: aiohttp.ClientSession) -> None:
    data = os.urandom(70_000)
    http_server.files["d"] = data
    info = await HttpSource(http_server.url + "/f/d", session).stat()
    assert info.checksums == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "md5": hashlib.md5(data).hexdigest(),
        "adler32": f"{zlib.adler32(data):08x}",
    }


async def test_oc_checksums_from_wsgidav(wsgidav_server: WsgidavServer,
                                         session: aiohttp.ClientSession) -> None:
    data = os.urandom(300_000)
    put_file(wsgidav_server.root, "dir/x.bin", data)
    put_file(wsgidav_server.root, "dir/sub/y.bin", b"y" * 10)
    url = f"dav://127.0.0.1:{wsgidav_server.port}/dir/x.bin"
    info = await HttpSource(url, session).stat()
    expected = {"sha1": hashlib.sha1(data).hexdigest(), "md5": hashlib.md5(data).hexdigest(),
                "adler32": f"{zlib.adler32(data):08x}"}
    assert info.size == len(data) and info.etag
    assert dict(info.checksums) == expected
    src = HttpSource(f"dav://127.0.0.1:{wsgidav_server.port}/dir", session)
    listed = {e.relative_path: e.info for e in await src.list() or []}
    assert set(listed) == {"x.bin", "sub/y.bin"}
    assert dict(listed["x.bin"].checksums) == expected
    assert await fetch(src.child("x.bin"), info, 5, 10) == data[5:15]


TREE = {"a.bin": 1000, "sub/b.bin": 2000, "sub/deeper/c d.bin": 3, "sub/deeper/é.txt": 0,
        "other/e.bin": 77}


def make_tree(root: Path) -> None:
    for rel, size in TREE.items():
        put_file(root / "tree", rel, os.urandom(size))
    (root / "tree" / "empty-dir").mkdir()


@pytest.mark.parametrize("peer", ["nginx", "rclone"])
async def test_folder_listing(peer: str, request: pytest.FixtureRequest,
                              session: aiohttp.ClientSession) -> None:
    server: NginxServer | RcloneWebdav = request.getfixturevalue(
        "nginx_server" if peer == "nginx" else "rclone_webdav")
    make_tree(server.root)
    src = HttpSource(f"dav://127.0.0.1:{server.port}/tree/", session)
    entries = await src.list()
    assert entries is not None
    assert {e.relative_path: e.info.size for e in entries} == TREE
    # without the trailing slash, and as http://
    again = await HttpSource(f"{server.url}/tree", session).list()
    assert again is not None and sorted(e.relative_path for e in again) == sorted(TREE)
    # a file is not a folder
    assert await HttpSource(f"{server.url}/tree/a.bin", session).list() is None
    child = src.child("sub/deeper/c d.bin")
    info = await child.stat()
    assert await fetch(child, info) == (server.root / "tree/sub/deeper/c d.bin").read_bytes()


async def test_listing_missing_folder_is_not_found(
        rclone_webdav: RcloneWebdav, session: aiohttp.ClientSession) -> None:
    with pytest.raises(NotFound):
        await HttpSource(rclone_webdav.url + "/nothing/", session).list()


async def test_plain_http_url_is_not_a_folder(http_server: HttpPeer,
                                              session: aiohttp.ClientSession) -> None:
    http_server.files["p"] = b"x"
    assert await HttpSource(http_server.url + "/f/p", session).list() is None


async def test_connection_reset_is_retryable_then_succeeds(
        nginx_server: NginxServer, fault_proxy: Callable[[str], FaultProxy],
        session: aiohttp.ClientSession) -> None:
    data = os.urandom(4 * MIB)
    put_file(nginx_server.root, "r.bin", data)
    proxy = fault_proxy(nginx_server.url)
    src = HttpSource(proxy.url + "/r.bin", session)
    info = await src.stat()
    proxy.set(reset_after_bytes=MIB)
    with pytest.raises(RetryableError):
        await fetch(src, info)
    assert proxy.resets >= 1
    proxy.set(reset_after_bytes=None)
    assert await fetch(src, info, MIB, None) == data[MIB:]


async def test_random_resets_are_retryable(
        nginx_server: NginxServer, fault_proxy: Callable[[str], FaultProxy],
        session: aiohttp.ClientSession) -> None:
    put_file(nginx_server.root, "r.bin", os.urandom(32 * MIB))
    proxy = fault_proxy(nginx_server.url)
    src = HttpSource(proxy.url + "/r.bin", session)
    info = await src.stat()
    pieces = src.read(info, 0, None)
    await anext(pieces)
    proxy.set(reset_probability=1.0, resets_left=1)  # mid-body
    with pytest.raises(RetryableError):
        async for _ in pieces:
            pass
    assert proxy.resets == 1


async def test_stalled_peer_times_out_as_retryable(
        nginx_server: NginxServer, fault_proxy: Callable[[str], FaultProxy],
        session: aiohttp.ClientSession) -> None:
    put_file(nginx_server.root, "s.bin", os.urandom(MIB))
    proxy = fault_proxy(nginx_server.url)
    src = HttpSource(proxy.url + "/s.bin", session, read_timeout_s=0.3)
    info = await src.stat()
    proxy.set(stalled=True)
    with pytest.raises(RetryableError, match="timed out"):
        await fetch(src, info)
    proxy.set(stalled=False)


async def test_throttled_and_delayed_peer_still_delivers(
        nginx_server: NginxServer, fault_proxy: Callable[[str], FaultProxy],
        session: aiohttp.ClientSession) -> None:
    data = os.urandom(200_000)
    put_file(nginx_server.root, "slow.bin", data)
    proxy = fault_proxy(nginx_server.url)
    proxy.set(delay_s=0.05, throttle_bps=2_000_000)
    src = HttpSource(proxy.url + "/slow.bin", session)
    assert await fetch(src, await src.stat()) == data


async def test_refused_connection_is_retryable(session: aiohttp.ClientSession) -> None:
    from tests.redis_server import free_port

    with pytest.raises(RetryableError):
        await HttpSource(f"http://127.0.0.1:{free_port()}/x", session).stat()


async def test_unsupported_scheme(session: aiohttp.ClientSession) -> None:
    with pytest.raises(PermanentError):
        HttpSource("ftp://127.0.0.1/x", session)


async def test_listed_file_is_copied_with_one_get_and_its_digests(
        http_server: HttpPeer, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    # What a folder listing gives (size and Last-Modified, no checksums, no
    # Accept-Ranges): a one-chunk file needs no HEAD; the GET asks for the
    # server's digests and the copy is verified against them.
    from workers.stream.engine import copy_file
    from workers.stream.local import FileSink, url_of

    data = os.urandom(300_000)
    http_server.files["l"] = data
    listed = SourceInfo(url=http_server.url + "/f/l", size=len(data),
                        last_modified=http_server.last_modified("l"))
    result = await copy_file(HttpSource(http_server.url + "/f/l", session),
                             FileSink(url_of(tmp_path / "l")), info=listed, verify="source")
    assert (tmp_path / "l").read_bytes() == data
    assert result.checksum == f"adler32:{zlib.adler32(data):08x}"
    assert [r.method for r in http_server.requests] == ["GET"]
    assert "Want-Digest" in http_server.requests[0].headers

    # A digest the GET declares that the bytes do not match fails the copy.
    honest = http_server._headers

    def lying(name: str, req: object, ranges: bool) -> dict[str, str]:
        h = honest(name, req, ranges)  # type: ignore[arg-type]
        if "Digest" in h:
            h["Digest"] = f"ADLER32={(zlib.adler32(data) ^ 1):08x}"
            h.pop("Repr-Digest", None)
        return h

    http_server._headers = lying  # type: ignore[method-assign]
    with pytest.raises(ChecksumMismatch):
        await copy_file(HttpSource(http_server.url + "/f/l", session),
                        FileSink(url_of(tmp_path / "m")), info=listed, verify="source")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.part").exists()


async def test_listed_file_that_changed_since_the_listing_is_refused(
        http_server: HttpPeer, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    from workers.stream.engine import copy_file
    from workers.stream.local import FileSink, url_of

    http_server.files["c"] = b"a" * 1000
    listed = SourceInfo(url=http_server.url + "/f/c", size=1000,
                        last_modified=http_server.last_modified("c"))
    http_server.files["c"] = b"b" * 1000  # same size, newer Last-Modified
    with pytest.raises(SourceChanged):
        await copy_file(HttpSource(http_server.url + "/f/c", session),
                        FileSink(url_of(tmp_path / "c")), info=listed)
    assert not (tmp_path / "c").exists()
