"""DavSink against real servers: nginx, rclone serve webdav, and the aiohttp Nextcloud/TUS peer."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.peers import NcPeer
from tests.servers import FaultProxy, NginxServer, RcloneWebdav
from transferd.errors import PermanentError, RetryableError
from workers.stream import dav
from workers.stream.dav import DavSink

MIB = 1 << 20


async def pieces(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def failing_after(data: bytes, n: int) -> AsyncIterator[bytes]:
    async for p in pieces(data[:n]):
        yield p
    raise RetryableError("source went away")


async def read_back(sink: DavSink) -> bytes:
    return b"".join([p async for p in sink.read_back()])


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("peer", ["nginx", "rclone"])
async def test_streamed_put_then_move(peer: str, request: pytest.FixtureRequest,
                                      session: aiohttp.ClientSession) -> None:
    server: NginxServer | RcloneWebdav = request.getfixturevalue(
        "nginx_server" if peer == "nginx" else "rclone_webdav")
    data = os.urandom(5 * MIB + 3)
    sink = DavSink(f"dav://127.0.0.1:{server.port}/new/deep/dir/out file.bin", session,
                   overwrite=False)
    assert not await sink.exists()
    await sink.prepare(len(data), "job1.0")
    assert (sink.mode, sink.random_access) == ("put", False)
    assert (server.root / "new/deep/dir").is_dir()
    await sink.write_stream(pieces(data))
    final = server.root / "new/deep/dir/out file.bin"
    assert not final.exists()  # nothing at the final name before commit
    assert await read_back(sink) == data
    await sink.commit()
    assert final.read_bytes() == data
    assert files_under(server.root) == {"new/deep/dir/out file.bin"}
    assert await sink.exists()


async def test_existing_file_kept_without_overwrite(
        nginx_server: NginxServer, session: aiohttp.ClientSession) -> None:
    final = nginx_server.root / "d/x.bin"
    final.parent.mkdir(parents=True)
    final.write_bytes(b"old")
    url = nginx_server.url + "/d/x.bin"
    sink = DavSink(url, session, overwrite=False)
    assert await sink.exists()
    await sink.prepare(3, "k")
    await sink.write_stream(pieces(b"new"))
    with pytest.raises(PermanentError, match="exists"):
        await sink.commit()
    assert final.read_bytes() == b"old"
    await sink.abort(keep_partial=False)
    assert files_under(nginx_server.root) == {"d/x.bin"}

    sink = DavSink(url, session, overwrite=True)
    await sink.prepare(3, "k")
    await sink.write_stream(pieces(b"new"))
    await sink.commit()
    assert final.read_bytes() == b"new"
    assert files_under(nginx_server.root) == {"d/x.bin"}


async def test_source_failure_mid_upload_surfaces_and_leaves_no_file(
        rclone_webdav: RcloneWebdav, session: aiohttp.ClientSession) -> None:
    data = os.urandom(3 * MIB)
    sink = DavSink(rclone_webdav.url + "/up/f.bin", session)
    await sink.prepare(len(data), "k")
    with pytest.raises(RetryableError, match="source went away"):
        await sink.write_stream(failing_after(data, MIB))
    await sink.abort(keep_partial=False)
    assert files_under(rclone_webdav.root) == set()


async def test_too_few_bytes_are_not_committed(
        nginx_server: NginxServer, session: aiohttp.ClientSession) -> None:
    sink = DavSink(nginx_server.url + "/short.bin", session)
    await sink.prepare(1000, "k")
    with pytest.raises(RetryableError, match="ended at 10 of 1000"):
        await sink.write_stream(pieces(b"x" * 10))
    await sink.abort(keep_partial=False)
    assert files_under(nginx_server.root) == set()


async def test_reset_during_upload_is_retryable(
        nginx_server: NginxServer, fault_proxy: Callable[[str], FaultProxy],
        session: aiohttp.ClientSession) -> None:
    proxy = fault_proxy(nginx_server.url)
    sink = DavSink(proxy.url + "/p/q.bin", session)
    await sink.prepare(MIB, "k")
    proxy.set(reset_after_bytes=1)  # the answer to the PUT never arrives whole
    with pytest.raises(RetryableError):
        await sink.write_stream(pieces(os.urandom(MIB)))
    assert not (nginx_server.root / "p/q.bin").exists()


async def test_file_in_the_way_of_a_parent(nginx_server: NginxServer,
                                           session: aiohttp.ClientSession) -> None:
    (nginx_server.root / "a").write_bytes(b"file")
    with pytest.raises(PermanentError):
        await DavSink(nginx_server.url + "/a/b/c.bin", session).prepare(1, "k")


async def test_nextcloud_chunking_any_order(nc_server: NcPeer,
                                            session: aiohttp.ClientSession) -> None:
    chunk = 2 * MIB
    data = os.urandom(3 * chunk + 11)
    sink = DavSink(nc_server.files_url("photos/2024/big.tar"), session, overwrite=False)
    await sink.prepare(len(data), "job.7")
    assert (sink.mode, sink.random_access) == ("nc", True)
    order = [3, 1, 0, 2]
    await asyncio.gather(*(
        sink.write_chunk(i, i * chunk, pieces(data[i * chunk:(i + 1) * chunk])) for i in order))
    assert not (nc_server.root / "photos/2024/big.tar").exists()
    assert await read_back(sink) == data
    await sink.commit()
    assert (nc_server.root / "photos/2024/big.tar").read_bytes() == data
    assert files_under(nc_server.root) == {"photos/2024/big.tar"}
    assert files_under(nc_server.uploads) == set()
    moves = [r for r in nc_server.requests if r.method == "MOVE" and r.path.endswith("/.file")]
    assert moves[0].headers["OC-Total-Length"] == str(len(data))


async def test_nextcloud_chunking_resumes_with_the_same_key(
        nc_server: NcPeer, session: aiohttp.ClientSession) -> None:
    chunk = MIB
    data = os.urandom(3 * chunk)
    url = nc_server.files_url("r.bin")
    first = DavSink(url, session)
    await first.prepare(len(data), "job.1")
    await first.write_chunk(0, 0, pieces(data[:chunk]))
    await first.write_chunk(2, 2 * chunk, pieces(data[2 * chunk:]))
    await first.abort(keep_partial=True)

    again = DavSink(url, session)
    await again.prepare(len(data), "job.1")
    await again.write_chunk(1, chunk, pieces(data[chunk:2 * chunk]))
    await again.commit()
    assert (nc_server.root / "r.bin").read_bytes() == data
    assert nc_server.chunk_puts == ["00001", "00003", "00002"]


async def test_nextcloud_abort_removes_everything(nc_server: NcPeer,
                                                  session: aiohttp.ClientSession) -> None:
    sink = DavSink(nc_server.files_url("gone.bin"), session)
    await sink.prepare(10, "k")
    await sink.write_chunk(0, 0, pieces(b"0123456789"))
    await sink.abort(keep_partial=False)
    assert files_under(nc_server.uploads) == set()
    assert files_under(nc_server.root) == set()


async def test_tus_upload(nc_server: NcPeer, session: aiohttp.ClientSession) -> None:
    nc_server.chunking = False
    data = os.urandom(3 * MIB + 1)
    sink = DavSink(nc_server.files_url("t/u.bin"), session)
    await sink.prepare(len(data), "k")
    assert (sink.mode, sink.random_access) == ("tus", False)
    assert sink.upload_url and sink.resume_offset == 0
    await sink.write_stream(pieces(data))
    assert not (nc_server.root / "t/u.bin").exists()
    assert await read_back(sink) == data
    await sink.commit()
    assert (nc_server.root / "t/u.bin").read_bytes() == data
    assert files_under(nc_server.root) == {"t/u.bin"}


async def test_tus_resumes_after_a_failed_patch(nc_server: NcPeer,
                                                session: aiohttp.ClientSession) -> None:
    nc_server.chunking = False
    data = os.urandom(4 * MIB)
    url = nc_server.files_url("resume.bin")
    first = DavSink(url, session)
    await first.prepare(len(data), "job.2")
    with pytest.raises(RetryableError, match="source went away"):
        await first.write_stream(failing_after(data, 2 * MIB))
    await first.abort(keep_partial=True)

    again = DavSink(url, session)
    await again.prepare(len(data), "job.2")
    assert again.upload_url == first.upload_url
    assert again.resume_offset == 2 * MIB
    await again.write_stream(pieces(data))  # fed from 0: the sink skips what the server has
    await again.commit()
    assert (nc_server.root / "resume.bin").read_bytes() == data
    assert nc_server.patch_bytes == len(data)


async def test_tus_resume_across_processes_by_upload_url(
        nc_server: NcPeer, session: aiohttp.ClientSession) -> None:
    nc_server.chunking = False
    data = os.urandom(MIB)
    url = nc_server.files_url("x.bin")
    first = DavSink(url, session)
    await first.prepare(len(data), "a")
    with pytest.raises(RetryableError):
        await first.write_stream(failing_after(data, 300_000))
    dav._TUS_SESSIONS.clear()  # as in a fresh worker process
    again = DavSink(url, session, tus_upload_url=first.upload_url)
    await again.prepare(len(data), "a")
    assert again.resume_offset > 0
    await again.write_stream(pieces(data[again.resume_offset:]), offset=again.resume_offset)
    await again.commit()
    assert (nc_server.root / "x.bin").read_bytes() == data


async def test_plain_put_when_no_chunked_upload_is_offered(
        nc_server: NcPeer, session: aiohttp.ClientSession) -> None:
    nc_server.chunking = nc_server.tus = False
    sink = DavSink(nc_server.files_url("p.bin"), session)
    await sink.prepare(4, "k")
    assert (sink.mode, sink.random_access) == ("put", False)
    await sink.write_stream(pieces(b"abcd"))
    await sink.commit()
    assert (nc_server.root / "p.bin").read_bytes() == b"abcd"
