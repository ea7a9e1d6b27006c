"""The engine end to end into WebDAV destinations, and ``transferd cp`` against real servers.

file:// sources into nginx and ``rclone serve webdav`` (streamed PUT to a .part,
MOVE into place), and into the Nextcloud-style peer (chunking v2, TUS) including
an upload that is interrupted and resumed; then ``transferd cp`` run as a user
runs it, from a WebDAV folder and with a failing authenticated source.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio
from yarl import URL

from policies.chunking import ChunkPolicy, MiB
from tests.manifests import cancel_after
from tests.peers import HttpPeer, NcPeer
from tests.servers import FaultProxy, NginxServer, RcloneWebdav, wait_until
from transferd import errors
from workers.stream import dav
from workers.stream.dav import DavSink
from workers.stream.engine import copy_file
from workers.stream.http import HttpSource
from workers.stream.local import FileSource, url_of
from workers.stream.manifest import (
    RedisManifestStore,
)

REPO = Path(__file__).resolve().parent.parent
TRANSFERD = str(REPO / ".venv" / "bin" / "transferd")
SMALL_CHUNKS = ChunkPolicy(chunk_size_bytes=MiB, min_chunk_bytes=MiB, max_streams=4)
ONE_STREAM = ChunkPolicy(chunk_size_bytes=MiB, min_chunk_bytes=MiB, max_streams=1, chunk_tries=1)


def adler(data: bytes) -> str:
    return f"adler32:{zlib.adler32(data):08x}"


def source_file(tmp_path: Path, size: int, name: str = "src.bin") -> tuple[str, bytes]:
    data = os.urandom(size)
    (tmp_path / name).write_bytes(data)
    return url_of(tmp_path / name), data


@contextlib.asynccontextmanager
async def canceled_once_patched(nc: NcPeer, n_bytes: int) -> AsyncIterator[asyncio.Event]:
    """A cancel event set once ``nc`` holds ``n_bytes`` of a TUS upload (PATCHed)."""
    cancel = asyncio.Event()

    async def watch() -> None:
        while nc.patch_bytes < n_bytes:
            await asyncio.sleep(0.01)
        cancel.set()

    watcher = asyncio.ensure_future(watch())
    try:
        yield cancel
    finally:
        watcher.cancel()


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- plain PUT servers


@pytest.mark.parametrize("peer", ["nginx", "rclone"])
@pytest.mark.parametrize("size", [0, 1, 5 * MiB + 3])
async def test_file_to_webdav_put_then_move(peer: str, size: int, request: pytest.FixtureRequest,
                                            session: aiohttp.ClientSession,
                                            tmp_path: Path) -> None:
    server: NginxServer | RcloneWebdav = request.getfixturevalue(
        "nginx_server" if peer == "nginx" else "rclone_webdav")
    src, data = source_file(tmp_path, size)
    sink = DavSink(f"dav://127.0.0.1:{server.port}/in/run 1/out.bin", session)
    result = await copy_file(FileSource(src), sink, policy=SMALL_CHUNKS)
    assert result.checksum == adler(data)
    assert sink.mode == "put"
    # the verified file is at its name and nothing else is left beside it
    assert files_under(server.root) == {"in/run 1/out.bin": data}
    if isinstance(server, NginxServer):
        # nginx writes a line after it replied: wait for the MOVE's
        wait_until(lambda: any(e.method == "MOVE" for e in server.log_entries()),
                   what="the MOVE in the access log")
        log = server.log_entries()
        puts = [e for e in log if e.method == "PUT"]
        moves = [e for e in log if e.method == "MOVE"]
        assert len(puts) == 1 and ".part" in puts[0].uri
        assert len(moves) == 1 and moves[0].uri == puts[0].uri


@pytest.mark.parametrize("peer", ["nginx", "nc"])
async def test_existing_destination_without_overwrite_is_permanent(
        peer: str, request: pytest.FixtureRequest, session: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    src, _ = source_file(tmp_path, 2 * MiB + 1)
    if peer == "nginx":
        server: NginxServer = request.getfixturevalue("nginx_server")
        root, url = server.root, f"dav://127.0.0.1:{server.port}/keep.bin"
    else:
        nc: NcPeer = request.getfixturevalue("nc_server")
        root, url = nc.root, nc.files_url("keep.bin")
    (root / "keep.bin").write_bytes(b"precious")
    sink = DavSink(url, session, overwrite=False)
    with pytest.raises(errors.PermanentError) as caught:
        await copy_file(FileSource(src), sink, policy=SMALL_CHUNKS)
    assert "exists" in caught.value.reason
    await sink.abort(keep_partial=False)
    assert files_under(root) == {"keep.bin": b"precious"}


# ---------------------------------------------------------------- Nextcloud chunking v2


async def test_nextcloud_chunked_upload_in_parallel_chunks(
        nc_server: NcPeer, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    size = 6 * MiB + 5
    src, data = source_file(tmp_path, size)
    sink = DavSink(nc_server.files_url("deep/er/out.bin"), session)
    result = await copy_file(FileSource(src), sink, policy=SMALL_CHUNKS)
    assert result.checksum == adler(data)
    assert sink.mode == "nc"
    assert files_under(nc_server.root) == {"deep/er/out.bin": data}
    assert list(nc_server.uploads.iterdir()) == []
    # one PUT per 1 MiB chunk, not one PUT of the whole file
    assert sorted(nc_server.chunk_puts) == [f"{i:05d}" for i in range(1, 8)]


async def test_nextcloud_interrupted_upload_resumes_with_missing_chunks_only(
        nc_server: NcPeer, session: aiohttp.ClientSession, aredis: redis.asyncio.Redis,
        tmp_path: Path) -> None:
    size = 8 * MiB + 100
    src, data = source_file(tmp_path, size)
    url = nc_server.files_url("res.bin")
    store = RedisManifestStore(aredis, "td:manifest:res.0")
    cancel = asyncio.Event()
    sink = DavSink(url, session)
    with pytest.raises(errors.Canceled):
        # one stream: the chunks done are 1..3 with no gap, so all of them can be reused
        await copy_file(FileSource(src), sink, manifest=cancel_after(store, 3, cancel),
                        policy=ONE_STREAM, cancel=cancel, resume_key="res.0")
    await sink.abort(keep_partial=True)
    assert not (nc_server.root / "res.bin").exists()
    manifest = await store.load()
    assert manifest is not None and len(manifest.chunks) >= 3
    first = list(nc_server.chunk_puts)

    nc_server.chunk_puts.clear()
    sink = DavSink(url, session)
    result = await copy_file(FileSource(src), sink, manifest=store, policy=SMALL_CHUNKS,
                             resume_key="res.0")
    assert result.checksum == adler(data)
    assert files_under(nc_server.root) == {"res.bin": data}
    done = {f"{i + 1:05d}" for i in manifest.chunks}
    assert result.chunks_reused == len(done)
    assert set(nc_server.chunk_puts) == {f"{i:05d}" for i in range(1, 10)} - done
    assert len(first) >= len(done)


# ---------------------------------------------------------------- TUS


async def test_tus_interrupted_upload_resumes_with_missing_bytes_only(
        nc_server: NcPeer, nginx_server: NginxServer, fault_proxy: Callable[[str], FaultProxy],
        session: aiohttp.ClientSession) -> None:
    nc_server.chunking = False
    size = 16 * MiB + 11
    data = os.urandom(size)
    (nginx_server.root / "t.bin").write_bytes(data)
    slow = fault_proxy(nginx_server.url)
    slow.set(throttle_bps=32 * MiB)
    url = nc_server.files_url("up/t.bin")
    (nc_server.root / "up").mkdir()

    # interrupt once the server holds part of the file
    sink = DavSink(url, session)
    async with canceled_once_patched(nc_server, MiB) as cancel:
        with pytest.raises(errors.Canceled):
            await copy_file(HttpSource(f"{slow.url}/t.bin", session), sink, cancel=cancel,
                            resume_key="t.0")
    await sink.abort(keep_partial=True)
    assert sink.mode == "tus"
    assert not (nc_server.root / "up" / "t.bin").exists()
    assert MiB <= nc_server.patch_bytes < size

    slow.set(throttle_bps=None)
    sink = DavSink(url, session)
    result = await copy_file(HttpSource(f"{slow.url}/t.bin", session), sink, resume_key="t.0")
    assert result.checksum == adler(data)
    assert files_under(nc_server.root) == {"up/t.bin": data}
    # the second attempt went on from where the server stood: nothing was sent twice
    assert nc_server.patch_bytes == size
    assert len([r for r in nc_server.requests if r.method == "POST"]) == 1


@pytest.mark.parametrize("source_changed", [False, True])
async def test_tus_upload_url_in_redis_resumes_in_another_worker_unless_the_source_changed(
        source_changed: bool, nc_server: NcPeer, nginx_server: NginxServer,
        fault_proxy: Callable[[str], FaultProxy], session: aiohttp.ClientSession,
        aredis: redis.asyncio.Redis) -> None:
    nc_server.chunking = False
    size = 8 * MiB + 3
    src = nginx_server.root / "w.bin"
    src.write_bytes(os.urandom(size))
    slow = fault_proxy(nginx_server.url)
    slow.set(throttle_bps=16 * MiB)
    url = nc_server.files_url("w.bin")
    store = RedisManifestStore(aredis, "td:manifest:w.0")
    async with canceled_once_patched(nc_server, MiB) as cancel:
        with pytest.raises(errors.Canceled):
            await copy_file(HttpSource(f"{slow.url}/w.bin", session), DavSink(url, session),
                            manifest=store, cancel=cancel)
    stored = await aredis.hget(store.key, "upload_url")  # kept before the first PATCH
    assert isinstance(stored, bytes) and b"/tus/" in stored
    accepted = nc_server.patch_bytes
    assert MiB <= accepted < size
    if source_changed:  # same size, new Last-Modified and ETag; retried in this process,
        # so neither the session this process remembers nor the stored one may be used
        data = os.urandom(size)
        src.write_bytes(data)
        os.utime(src, (src.stat().st_atime + 10, src.stat().st_mtime + 10))
    else:
        data = src.read_bytes()
        dav._TUS_SESSIONS.clear()  # the redelivery runs in another worker process

    slow.set(throttle_bps=None)
    result = await copy_file(HttpSource(f"{slow.url}/w.bin", session), DavSink(url, session),
                             manifest=store)
    assert result.checksum == adler(data)
    assert files_under(nc_server.root) == {"w.bin": data}
    posts = [r for r in nc_server.requests if r.method == "POST"]
    if source_changed:  # a new upload from byte 0; the old bytes are never reused
        assert len(posts) == 2
        assert nc_server.patch_bytes == accepted + size
    else:  # the same upload (HEAD for its offset), only the missing bytes sent
        assert len(posts) == 1
        assert any(r.method == "HEAD" and r.path == URL(stored.decode()).path
                   for r in nc_server.requests)
        assert nc_server.patch_bytes == size
    assert not await aredis.exists(store.key)


# ---------------------------------------------------------------- transferd cp


def run_cp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRANSFERD, "cp", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def test_cp_dav_folder_into_local_dir(rclone_webdav: RcloneWebdav, tmp_path: Path) -> None:
    files = {"a.bin": os.urandom(3 * MiB + 1), "sub/b.bin": os.urandom(1000),
             "sub/deeper/c d.txt": b"spaced", "sub/deeper/empty": b""}
    for rel, data in files.items():
        (rclone_webdav.root / "run" / rel).parent.mkdir(parents=True, exist_ok=True)
        (rclone_webdav.root / "run" / rel).write_bytes(data)
    dst = tmp_path / "copy"
    proc = run_cp(f"dav://127.0.0.1:{rclone_webdav.port}/run/", str(dst) + "/",
                  "--chunk-size", "1M")
    assert proc.returncode == 0, proc.stderr
    printed: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        checksum, path = line.split("  ", 1)
        printed[path] = checksum
    assert printed == {str(dst / rel): adler(data) for rel, data in files.items()}
    assert files_under(dst) == files


def test_cp_failure_is_one_sentence_without_the_token(http_server: HttpPeer,
                                                      tmp_path: Path) -> None:
    http_server.files["x.bin"] = b"payload"
    dst = tmp_path / "x.bin"
    proc = run_cp(f"{http_server.url}/auth/x.bin", str(dst),
                  "--header", "Authorization: Bearer SECRET-VALUE-123")
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "401" in lines[0] and "/auth/x.bin" in lines[0]
    assert "SECRET-VALUE-123" not in proc.stderr + proc.stdout
    # the token was sent (the peer saw it) but never echoed
    assert any(r.headers.get("Authorization") == "Bearer SECRET-VALUE-123"
               for r in http_server.requests)
    assert list(tmp_path.iterdir()) == []


def test_cp_to_tus_killed_then_rerun_sends_only_the_missing_bytes(
        nc_server: NcPeer, nginx_server: NginxServer, fault_proxy: Callable[[str], FaultProxy],
        tmp_path: Path) -> None:
    nc_server.chunking = False  # TUS only
    size = 16 * MiB + 7
    data = os.urandom(size)
    (nginx_server.root / "k.bin").write_bytes(data)
    slow = fault_proxy(nginx_server.url)
    slow.set(throttle_bps=4 * MiB)
    dst = nc_server.files_url("up/k.bin")
    cache = tmp_path / "cache"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    command = [sys.executable, "-m", "transferd", "cp", f"{slow.url}/k.bin", dst,
               "--checksum", adler(data)]

    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        wait_until(lambda: nc_server.patch_bytes >= 2 * MiB or proc.poll() is not None, 60,
                   "2 MiB accepted by the TUS server")
    finally:
        proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, stderr
    (upload,) = nc_server.tus_uploads.values()
    # the server has seen the connection end once the PATCH lets go of the upload
    wait_until(lambda: not upload.lock.locked(), 10, "the broken PATCH to end")
    accepted = nc_server.patch_bytes
    assert 2 * MiB <= accepted < size
    assert not (nc_server.root / "up" / "k.bin").exists()
    (sidecar,) = (cache / "transferd" / "cp").iterdir()
    assert "/tus/" in json.loads(sidecar.read_text())["upload_url"]

    slow.set(throttle_bps=None)
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout == f"{adler(data)}  {dst}\n"
    assert files_under(nc_server.root) == {"up/k.bin": data}
    # the re-run went on with the same upload and sent only the size - accepted bytes
    # the server lacked: nothing reached it twice
    assert nc_server.patch_bytes == size
    assert len([r for r in nc_server.requests if r.method == "POST"]) == 1
    assert list((cache / "transferd" / "cp").iterdir()) == []
