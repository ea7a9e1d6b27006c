"""The engine end to end from real HTTP/WebDAV sources into file:// sinks.

nginx (ranges, keep-alive, an access log that says what was fetched), the aiohttp
peer (no Range, truncated bodies, changing files, Repr-Digest) and wsgidav
(``oc:checksums``): what a user sees is the final bytes, the reported checksum,
the error class and sentence, and what was (not) fetched again.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio

from policies.chunking import ChunkPolicy, MiB
from tests.manifests import AfterChunks
from tests.peers import HttpPeer
from tests.servers import FaultProxy, NginxServer, WsgidavServer
from transferd import errors
from workers.stream.engine import copy_file
from workers.stream.http import HttpSource, new_session
from workers.stream.local import FileSink, url_of
from workers.stream.manifest import (
    RedisManifestStore,
)

REPO = Path(__file__).resolve().parent.parent
SMALL_CHUNKS = ChunkPolicy(chunk_size_bytes=MiB, min_chunk_bytes=MiB, max_streams=4)
# one stream, and a chunk's failure ends the attempt: for tests of resuming across attempts
ONE_STREAM = ChunkPolicy(chunk_size_bytes=MiB, min_chunk_bytes=MiB, max_streams=1, chunk_tries=1)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    s = new_session()
    yield s
    await s.close()


def adler(data: bytes) -> str:
    return f"adler32:{zlib.adler32(data):08x}"


def put(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def chunk_ranges(size: int, chunk: int) -> set[str]:
    return {f"bytes={off}-{min(off + chunk, size) - 1}" for off in range(0, size, chunk)}


# ---------------------------------------------------------------- nginx → file


@pytest.mark.parametrize(
    "size",
    [0, 1, MiB - 1, 5 * MiB + 123, 8 * MiB, 20 * MiB + 7],
    ids=["empty", "one-byte", "under-a-chunk", "not-a-multiple", "exact-multiple", "many"],
)
async def test_nginx_to_file_in_parallel_chunks(
        size: int, nginx_server: NginxServer, session: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    data = os.urandom(size)
    put(nginx_server.root, "run/data.bin", data)
    dst = tmp_path / "out" / "data.bin"
    result = await copy_file(HttpSource(f"{nginx_server.url}/run/data.bin", session),
                             FileSink(url_of(dst)), policy=SMALL_CHUNKS)
    assert dst.read_bytes() == data
    assert result.checksum == adler(data)
    assert (result.size, result.bytes_fetched, result.chunks_reused) == (size, size, 0)
    assert names(dst.parent) == ["data.bin"]
    gets = [e for e in nginx_server.log_entries() if e.method == "GET"]
    # every byte fetched exactly once, one ranged GET per 1 MiB chunk
    assert sum(e.body_bytes_sent for e in gets) == size
    if size > MiB:
        assert {e.range for e in gets} == chunk_ranges(size, MiB)
        assert len(gets) == -(-size // MiB)
        assert all(e.status == 206 for e in gets)


def served_with_one_reset(nginx: NginxServer, fault_proxy: Callable[[str], FaultProxy],
                          name: str) -> tuple[bytes, FaultProxy]:
    """10 MiB + 333 B as ``name`` on nginx, behind a proxy that resets one connection half
    way through its fourth MiB (chunk 3 with 1 MiB chunks on one stream)."""
    data = os.urandom(10 * MiB + 333)
    put(nginx.root, name, data)
    proxy = fault_proxy(nginx.url)
    proxy.set(reset_after_bytes=3 * MiB + MiB // 2, resets_left=1)
    return data, proxy


async def test_resume_after_reset_fetches_only_missing_chunks(
        nginx_server: NginxServer, fault_proxy: Callable[[str], FaultProxy],
        session: aiohttp.ClientSession, aredis: redis.asyncio.Redis, tmp_path: Path) -> None:
    data, proxy = served_with_one_reset(nginx_server, fault_proxy, "big.tar")
    size = len(data)
    dst = tmp_path / "big.tar"
    store = RedisManifestStore(aredis, "td:manifest:big.0")

    # one stream, so the connection that is reset carries the only request in flight
    with pytest.raises(errors.RetryableError):
        await copy_file(HttpSource(f"{proxy.url}/big.tar", session), FileSink(url_of(dst)),
                        manifest=store, policy=ONE_STREAM)
    assert proxy.resets == 1
    assert not dst.exists()
    manifest = await store.load()
    assert manifest is not None
    done = sum(r.length for r in manifest.chunks.values())
    assert 0 < done < size
    # HEAD + the finished GETs + the one that was reset, all logged before we look again
    nginx_server.wait_for_log(2 + len(manifest.chunks))
    nginx_server.clear_log()

    sink = FileSink(url_of(dst))
    result = await copy_file(HttpSource(f"{proxy.url}/big.tar", session), sink,
                             manifest=store, policy=SMALL_CHUNKS)
    assert dst.read_bytes() == data
    assert result.checksum == adler(data)
    assert result.chunks_reused == len(manifest.chunks)
    assert result.bytes_fetched == size - done
    gets = [e for e in nginx_server.log_entries() if e.method == "GET"]
    assert sum(e.body_bytes_sent for e in gets) == size - done
    fetched = {e.range for e in gets}
    reused = {f"bytes={i * MiB}-{i * MiB + r.length - 1}" for i, r in manifest.chunks.items()}
    assert fetched == chunk_ranges(size, MiB) - reused
    assert names(tmp_path) == ["big.tar"]
    assert await aredis.exists(store.key) == 0


async def test_a_reset_chunk_is_fetched_again_within_the_attempt(
        nginx_server: NginxServer, fault_proxy: Callable[[str], FaultProxy],
        session: aiohttp.ClientSession, aredis: redis.asyncio.Redis, tmp_path: Path) -> None:
    data, proxy = served_with_one_reset(nginx_server, fault_proxy, "again.tar")
    size = len(data)
    dst = tmp_path / "again.tar"
    store = RedisManifestStore(aredis, "td:manifest:again.0")
    one_stream = ChunkPolicy(chunk_size_bytes=MiB, min_chunk_bytes=MiB, max_streams=1)

    # the connection carrying chunk 3 is reset half way: that chunk alone is asked again
    result = await copy_file(HttpSource(f"{proxy.url}/again.tar", session), FileSink(url_of(dst)),
                             manifest=store, policy=one_stream)
    assert proxy.resets == 1
    assert dst.read_bytes() == data
    assert result.checksum == adler(data)
    assert size <= result.bytes_fetched < size + MiB  # at most one chunk came twice
    nginx_server.wait_for_log(1 + len(chunk_ranges(size, MiB)) + 1)
    gets = [e.range for e in nginx_server.log_entries() if e.method == "GET"]
    assert set(gets) == chunk_ranges(size, MiB)
    assert [r for r in gets if gets.count(r) > 1] == [f"bytes={3 * MiB}-{4 * MiB - 1}"] * 2
    assert names(tmp_path) == ["again.tar"]


# ---------------------------------------------------------------- the aiohttp peer


async def test_source_ignoring_range_is_one_stream(
        http_server: HttpPeer, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    data = os.urandom(6 * MiB + 17)
    http_server.files["x.bin"] = data
    result = await copy_file(HttpSource(f"{http_server.url}/norange/x.bin", session),
                             FileSink(url_of(tmp_path / "x.bin")), policy=SMALL_CHUNKS)
    assert (tmp_path / "x.bin").read_bytes() == data
    assert result.checksum == adler(data)
    assert result.bytes_fetched == len(data)
    gets = [r for r in http_server.requests if r.method == "GET"]
    assert len(gets) == 1


async def test_truncated_response_is_retryable_and_leaves_no_file(
        http_server: HttpPeer, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 5)
    http_server.files["t.bin"] = data
    dst = tmp_path / "t.bin"
    sink = FileSink(url_of(dst))
    with pytest.raises(errors.RetryableError) as caught:
        await copy_file(HttpSource(f"{http_server.url}/truncate/t.bin", session), sink,
                        policy=SMALL_CHUNKS)
    assert "truncated" in caught.value.reason
    assert not dst.exists()
    await sink.abort(keep_partial=False)
    assert names(tmp_path) == []


async def test_source_replaced_between_attempts_restarts_from_zero(
        http_server: HttpPeer, fault_proxy: Callable[[str], FaultProxy],
        session: aiohttp.ClientSession, aredis: redis.asyncio.Redis, tmp_path: Path) -> None:
    size = 6 * MiB + 1
    old, new = os.urandom(size), os.urandom(size)  # same size: only the ETag tells
    http_server.files["v.bin"] = old
    proxy = fault_proxy(http_server.url)
    proxy.set(reset_after_bytes=2 * MiB + 100, resets_left=1)
    dst = tmp_path / "v.bin"
    store = RedisManifestStore(aredis, "td:manifest:v.0")
    url = f"{proxy.url}/f/v.bin"
    with pytest.raises(errors.RetryableError):
        await copy_file(HttpSource(url, session), FileSink(url_of(dst)), manifest=store,
                        policy=ONE_STREAM)
    manifest = await store.load()
    assert manifest is not None and manifest.chunks

    http_server.files["v.bin"] = new
    result = await copy_file(HttpSource(url, session), FileSink(url_of(dst)), manifest=store,
                             policy=SMALL_CHUNKS, expected_checksum=adler(new))
    assert dst.read_bytes() == new
    assert result.checksum == adler(new)
    assert (result.chunks_reused, result.bytes_fetched) == (0, size)
    assert names(tmp_path) == ["v.bin"]


async def test_source_changing_mid_copy_is_source_changed_then_clean_restart(
        http_server: HttpPeer, session: aiohttp.ClientSession, aredis: redis.asyncio.Redis,
        tmp_path: Path) -> None:
    size = 6 * MiB + 1
    old, new = os.urandom(size), os.urandom(size)
    http_server.files["m.bin"] = old
    dst = tmp_path / "m.bin"
    store = RedisManifestStore(aredis, "td:manifest:m.0")
    url = f"{http_server.url}/f/m.bin"

    def replace() -> None:
        http_server.files["m.bin"] = new

    with pytest.raises(errors.SourceChanged):
        await copy_file(HttpSource(url, session), FileSink(url_of(dst)),
                        manifest=AfterChunks(store, 2, replace), policy=ONE_STREAM)
    # the engine discards the partial and the manifest itself on SourceChanged
    assert names(tmp_path) == []
    assert await aredis.exists(store.key) == 0

    result = await copy_file(HttpSource(url, session), FileSink(url_of(dst)), manifest=store,
                             policy=SMALL_CHUNKS)
    assert dst.read_bytes() == new
    assert result.checksum == adler(new)
    assert (result.chunks_reused, result.bytes_fetched) == (0, size)


@pytest.mark.parametrize("alg", ["md5", "sha256"])
@pytest.mark.parametrize("streams", [1, 4])
async def test_repr_digest_verified_in_order(
        alg: str, streams: int, http_server: HttpPeer, session: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    data = os.urandom(5 * MiB + 9)
    http_server.files["d.bin"] = data
    policy = ChunkPolicy(chunk_size_bytes=MiB, min_chunk_bytes=MiB, max_streams=streams)
    result = await copy_file(HttpSource(f"{http_server.url}/f/d.bin", session),
                             FileSink(url_of(tmp_path / "d.bin")), expected_checksum=alg,
                             verify="source", policy=policy)
    assert result.checksum == f"{alg}:{hashlib.new(alg, data).hexdigest()}"
    assert (tmp_path / "d.bin").read_bytes() == data
    heads = [r for r in http_server.requests if r.method == "HEAD"]
    assert heads and "Want-Repr-Digest" in heads[0].headers


async def test_request_disagreeing_with_repr_digest_fails_before_any_get(
        http_server: HttpPeer, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    data = os.urandom(MiB)
    http_server.files["d.bin"] = data
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(errors.ChecksumMismatch) as caught:
        await copy_file(HttpSource(f"{http_server.url}/f/d.bin", session),
                        FileSink(url_of(tmp_path / "d.bin")),
                        expected_checksum=f"sha256:{wrong}")
    assert caught.value.error_class == "checksum"
    assert wrong in caught.value.reason
    assert hashlib.sha256(data).hexdigest() in caught.value.reason
    assert [r.method for r in http_server.requests if r.method == "GET"] == []
    assert not (tmp_path / "d.bin").exists()


async def test_expected_adler32_upper_case_without_leading_zeros(
        nginx_server: NginxServer, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    rng = random.Random(3)
    while True:  # content whose adler32 starts with a zero nibble
        data = rng.randbytes(3 * MiB + 77)
        if zlib.adler32(data) < 0x10000000:
            break
    value = zlib.adler32(data)
    put(nginx_server.root, "z.bin", data)
    result = await copy_file(HttpSource(f"{nginx_server.url}/z.bin", session),
                             FileSink(url_of(tmp_path / "z.bin")),
                             expected_checksum=f"ADLER32:{value:X}", policy=SMALL_CHUNKS)
    assert f"{value:X}" != f"{value:08X}"
    assert result.checksum == f"adler32:{value:08x}"
    assert (tmp_path / "z.bin").read_bytes() == data


# ---------------------------------------------------------------- wsgidav oc:checksums


@pytest.mark.parametrize("verify", ["source", "both"])
@pytest.mark.parametrize("alg", [None, "md5"])
async def test_oc_checksums_declared_by_wsgidav_are_verified(
        verify: str, alg: str | None, wsgidav_server: WsgidavServer,
        session: aiohttp.ClientSession, tmp_path: Path) -> None:
    data = os.urandom(4 * MiB + 3)
    put(wsgidav_server.root, "a/b.bin", data)
    result = await copy_file(HttpSource(f"dav://127.0.0.1:{wsgidav_server.port}/a/b.bin",
                                        session),
                             FileSink(url_of(tmp_path / "b.bin")), expected_checksum=alg,
                             verify=verify, policy=SMALL_CHUNKS)
    want = adler(data) if alg is None else f"md5:{hashlib.md5(data).hexdigest()}"
    assert result.checksum == want
    assert (tmp_path / "b.bin").read_bytes() == data


@pytest.mark.parametrize("alg", ["adler32", "md5"])
async def test_wrong_oc_checksum_is_a_mismatch_naming_both_values(
        alg: str, wsgidav_server: WsgidavServer, session: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 3)
    put(wsgidav_server.root, "w.bin", data)
    real = {"adler32": f"{zlib.adler32(data):08x}", "md5": hashlib.md5(data).hexdigest()}
    wrong = {"adler32": "0badc0de", "md5": hashlib.md5(b"not it").hexdigest()}
    # the declared value of the algorithm under test is wrong, the other one right
    declared = {a: wrong[a] if a == alg else real[a] for a in real}
    wsgidav_server.checksum_overrides["/w.bin"] = (
        f"MD5:{declared['md5']} ADLER32:{declared['adler32']}")
    dst = tmp_path / "w.bin"
    sink = FileSink(url_of(dst))
    with pytest.raises(errors.ChecksumMismatch) as caught:
        await copy_file(HttpSource(f"dav://127.0.0.1:{wsgidav_server.port}/w.bin", session),
                        sink, expected_checksum=alg, verify="source", policy=SMALL_CHUNKS)
    assert caught.value.error_class == "checksum"
    assert wrong[alg] in caught.value.reason and real[alg] in caught.value.reason
    assert not dst.exists()
    assert names(tmp_path) == []


# ---------------------------------------------------------------- many files at once


async def test_twenty_files_at_once_through_one_session(
        nginx_server: NginxServer, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    rng = random.Random(20)
    files = {f"set/f{i:02d}.bin": rng.randbytes(rng.randrange(0, 3 * MiB)) for i in range(20)}
    for rel, data in files.items():
        put(nginx_server.root, rel, data)
    results = await asyncio.gather(*(
        copy_file(HttpSource(f"{nginx_server.url}/{rel}", session),
                  FileSink(url_of(tmp_path / rel)), policy=SMALL_CHUNKS)
        for rel in files))
    for (rel, data), result in zip(files.items(), results, strict=True):
        assert (tmp_path / rel).read_bytes() == data, rel
        assert result.checksum == adler(data), rel
    assert names(tmp_path / "set") == sorted(p.split("/")[1] for p in files)


# ---------------------------------------------------------------- disk full


@pytest.fixture(params=["tmpfs", "rlimit"])
def small_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | None]:
    """A 4 MiB tmpfs; None for the RLIMIT_FSIZE variant, which is also the fallback
    where mounting is not permitted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = request.param == "tmpfs" and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True,
    ).returncode == 0
    yield mnt if mounted else None
    if mounted:
        subprocess.run(["umount", str(mnt)], check=True)


DISK_FULL_SCRIPT = """
import asyncio, resource, signal, sys
from transferd import errors
from workers.stream.engine import copy_file
from workers.stream.http import HttpSource, new_session
from workers.stream.local import FileSink, url_of

async def main():
    async with new_session() as session:
        sink = FileSink(url_of(sys.argv[2]))
        try:
            await copy_file(HttpSource(sys.argv[1], session), sink)
        except errors.TransferError as exc:
            await sink.abort(keep_partial=False)
            print(type(exc).__name__)
            print(exc.reason)

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))
asyncio.run(main())
"""


async def test_disk_full_is_a_clear_sentence_and_leaves_no_file(
        small_disk: Path | None, nginx_server: NginxServer, session: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    put(nginx_server.root, "big.bin", os.urandom(8 * MiB))
    url = f"{nginx_server.url}/big.bin"
    if small_disk is not None:
        dst = small_disk / "big.bin"
        sink = FileSink(url_of(dst))
        with pytest.raises(errors.DiskFull) as caught:
            await copy_file(HttpSource(url, session), sink, policy=SMALL_CHUNKS)
        kind, reason = type(caught.value).__name__, caught.value.reason
        assert caught.value.error_class == "disk_full"
        assert not dst.exists()
        await sink.abort(keep_partial=False)
        assert names(small_disk) == []
    else:
        dst = tmp_path / "limited" / "big.bin"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", DISK_FULL_SCRIPT, url, str(dst), cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        kind, reason = out.decode().splitlines()[:2]
        assert not dst.exists()
        assert names(dst.parent) == []
    assert kind == "DiskFull"
    assert reason.startswith("no space left")
    assert "big.bin" in reason
    assert len(reason.splitlines()) == 1
