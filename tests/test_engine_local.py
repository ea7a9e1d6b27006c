"""The engine copying file:// → file://: integrity, resume, cancel, disk full."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import redis.asyncio

from policies.chunking import ChunkPolicy, MiB
from tests.manifests import cancel_after
from transferd import errors
from workers.stream.engine import copy_file, expand
from workers.stream.local import FileSink, FileSource, url_of
from workers.stream.manifest import (
    ChunkRecord,
    Manifest,
    ManifestHeader,
    ManifestStore,
    RedisManifestStore,
    SidecarManifestStore,
    sidecar_path,
)

SMALL_CHUNKS = ChunkPolicy(chunk_size_bytes=MiB, min_chunk_bytes=MiB, max_streams=4)


def make_file(path: Path, size: int, seed: int = 0) -> bytes:
    data = os.urandom(size) if seed == 0 else bytes((i * seed) % 251 for i in range(size))
    path.write_bytes(data)
    return data


def adler(data: bytes) -> str:
    return f"adler32:{zlib.adler32(data):08x}"


async def interrupted_copy(src: Path, dst: Path, store: ManifestStore, after_chunks: int,
                           policy: ChunkPolicy) -> None:
    """Copy until ``after_chunks`` chunks are done, then cancel, keeping the partial."""
    cancel = asyncio.Event()
    sink = FileSink(url_of(dst))
    with pytest.raises(errors.Canceled):
        await copy_file(FileSource(url_of(src)), sink, manifest=cancel_after(store, after_chunks,
                        cancel), policy=policy, cancel=cancel)
    await sink.abort(keep_partial=True)
    assert not dst.exists()


@pytest.mark.parametrize(
    ("size", "policy"),
    [
        (0, ChunkPolicy()),
        (1, ChunkPolicy()),
        (5 * MiB + 123, SMALL_CHUNKS),  # not a multiple of the chunk size
        (9 * MiB, ChunkPolicy(chunk_size_bytes=MiB, min_chunk_bytes=MiB, max_streams=1)),
        (20 * MiB + 7, SMALL_CHUNKS),  # many chunks, 4 in parallel
    ],
)
async def test_copy_sizes(tmp_path: Path, size: int, policy: ChunkPolicy) -> None:
    data = make_file(tmp_path / "src", size)
    dst = tmp_path / "out" / "dst"
    result = await copy_file(FileSource(url_of(tmp_path / "src")), FileSink(url_of(dst)),
                             policy=policy)
    assert dst.read_bytes() == data
    assert result.checksum == adler(data)
    assert (result.size, result.bytes_fetched, result.chunks_reused) == (size, size, 0)
    assert sorted(p.name for p in dst.parent.iterdir()) == ["dst"]


@pytest.mark.parametrize("alg", ["md5", "sha256", "crc32c", "crc32", "sha1"])
@pytest.mark.parametrize("streams", [1, 4])
async def test_other_algorithms_parallel_and_sequential(tmp_path: Path, alg: str,
                                                        streams: int) -> None:
    data = make_file(tmp_path / "src", 6 * MiB + 5)
    expected = hashlib.new(alg, data).hexdigest() if alg not in ("crc32c", "crc32") else None
    if alg == "crc32":
        expected = f"{zlib.crc32(data):08x}"
    if alg == "crc32c":
        import crc32c

        expected = f"{crc32c.crc32c(data):08x}"
    policy = ChunkPolicy(chunk_size_bytes=MiB, min_chunk_bytes=MiB, max_streams=streams)
    result = await copy_file(FileSource(url_of(tmp_path / "src")),
                             FileSink(url_of(tmp_path / "dst")),
                             expected_checksum=f"{alg.upper()}:{expected}", policy=policy)
    assert result.checksum == f"{alg}:{expected}"
    assert (tmp_path / "dst").read_bytes() == data


async def test_wrong_expected_checksum_leaves_no_file(tmp_path: Path, aredis: redis.asyncio.Redis
                                                      ) -> None:
    data = make_file(tmp_path / "src", 3 * MiB)
    store = RedisManifestStore(aredis, "td:manifest:j.0")
    wrong = f"{(zlib.adler32(data) + 1) & 0xFFFFFFFF:08x}"
    with pytest.raises(errors.ChecksumMismatch) as caught:
        await copy_file(FileSource(url_of(tmp_path / "src")), FileSink(url_of(tmp_path / "dst")),
                        expected_checksum=f"adler32:{wrong}", manifest=store, policy=SMALL_CHUNKS)
    assert wrong in caught.value.reason and f"{zlib.adler32(data):08x}" in caught.value.reason
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert await aredis.exists("td:manifest:j.0") == 0


async def test_leading_zeros_do_not_matter(tmp_path: Path) -> None:
    data = b"\x00" * 10  # adler32 0x000a0001: a value sites write as "a0001"
    (tmp_path / "src").write_bytes(data)
    result = await copy_file(FileSource(url_of(tmp_path / "src")),
                             FileSink(url_of(tmp_path / "dst")), expected_checksum="adler32:a0001")
    assert result.checksum == "adler32:000a0001"


async def test_resume_with_redis_fetches_only_missing_chunks(
    tmp_path: Path, aredis: redis.asyncio.Redis
) -> None:
    policy = ChunkPolicy(chunk_size_bytes=MiB, min_chunk_bytes=MiB, max_streams=2)
    size = 16 * MiB + 100
    data = make_file(tmp_path / "src", size)
    dst = tmp_path / "dst"
    store = RedisManifestStore(aredis, "td:manifest:job.1")
    await interrupted_copy(tmp_path / "src", dst, store, 5, policy)
    done = (await store.load())
    assert done is not None and 5 <= len(done.chunks) < 17

    result = await copy_file(FileSource(url_of(tmp_path / "src")), FileSink(url_of(dst)),
                             manifest=store, policy=policy)
    assert result.chunks_reused == len(done.chunks)
    assert result.bytes_fetched == size - sum(c.length for c in done.chunks.values())
    assert dst.read_bytes() == data
    assert result.checksum == adler(data)
    assert await aredis.exists("td:manifest:job.1") == 0


async def test_resume_with_sidecar(tmp_path: Path) -> None:
    policy = ChunkPolicy(chunk_size_bytes=MiB, min_chunk_bytes=MiB, max_streams=1)
    data = make_file(tmp_path / "src", 8 * MiB)
    dst = tmp_path / "dst"
    store = SidecarManifestStore(sidecar_path(dst))
    await interrupted_copy(tmp_path / "src", dst, store, 3, policy)
    assert sidecar_path(dst).exists()
    result = await copy_file(FileSource(url_of(tmp_path / "src")), FileSink(url_of(dst)),
                             manifest=SidecarManifestStore(sidecar_path(dst)), policy=policy)
    assert result.chunks_reused >= 3
    assert result.bytes_fetched == 8 * MiB - result.chunks_reused * MiB
    assert dst.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


async def test_changed_source_restarts_from_zero(tmp_path: Path,
                                                 aredis: redis.asyncio.Redis) -> None:
    policy = ChunkPolicy(chunk_size_bytes=MiB, min_chunk_bytes=MiB, max_streams=1)
    make_file(tmp_path / "src", 8 * MiB)
    dst = tmp_path / "dst"
    store = RedisManifestStore(aredis, "td:manifest:job.2")
    await interrupted_copy(tmp_path / "src", dst, store, 3, policy)
    new = make_file(tmp_path / "src", 8 * MiB)  # same size, new content and mtime
    result = await copy_file(FileSource(url_of(tmp_path / "src")), FileSink(url_of(dst)),
                             manifest=store, policy=policy)
    assert (result.chunks_reused, result.bytes_fetched) == (0, 8 * MiB)
    assert dst.read_bytes() == new


async def test_damaged_partial_chunk_is_fetched_again(tmp_path: Path,
                                                      aredis: redis.asyncio.Redis) -> None:
    policy = ChunkPolicy(chunk_size_bytes=MiB, min_chunk_bytes=MiB, max_streams=1)
    data = make_file(tmp_path / "src", 8 * MiB)
    dst = tmp_path / "dst"
    store = RedisManifestStore(aredis, "td:manifest:job.3")
    await interrupted_copy(tmp_path / "src", dst, store, 3, policy)
    manifest = await store.load()
    assert manifest is not None
    # As if an OS crash lost chunk 0's pages although the manifest lists it.
    with open(dst.with_name("dst.part"), "r+b") as f:
        f.write(b"\x00" * 4096)
    result = await copy_file(FileSource(url_of(tmp_path / "src")), FileSink(url_of(dst)),
                             manifest=store, policy=policy)
    assert result.chunks_reused == len(manifest.chunks) - 1
    assert dst.read_bytes() == data


async def test_cancel_leaves_nothing_at_the_final_name(tmp_path: Path) -> None:
    make_file(tmp_path / "src", 32 * MiB)
    dst = tmp_path / "dst"
    cancel = asyncio.Event()
    sink = FileSink(url_of(dst))
    store = cancel_after(SidecarManifestStore(sidecar_path(dst)), 1, cancel)
    with pytest.raises(errors.Canceled):
        await copy_file(FileSource(url_of(tmp_path / "src")), sink, manifest=store,
                        policy=SMALL_CHUNKS, cancel=cancel)
    assert not dst.exists()
    await sink.abort(keep_partial=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


async def test_existing_destination_is_kept_without_overwrite(tmp_path: Path) -> None:
    make_file(tmp_path / "src", 1000)
    (tmp_path / "dst").write_bytes(b"precious")
    with pytest.raises(errors.PermanentError, match="destination exists"):
        await copy_file(FileSource(url_of(tmp_path / "src")), FileSink(url_of(tmp_path / "dst")))
    assert (tmp_path / "dst").read_bytes() == b"precious"
    result = await copy_file(FileSource(url_of(tmp_path / "src")),
                             FileSink(url_of(tmp_path / "dst"), overwrite=True))
    assert result.size == 1000 and (tmp_path / "dst").stat().st_size == 1000


async def test_missing_source_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(errors.NotFound):
        await copy_file(FileSource(url_of(tmp_path / "nope")), FileSink(url_of(tmp_path / "d")))


async def test_progress_reports_bytes_and_rate(tmp_path: Path) -> None:
    make_file(tmp_path / "src", 4 * MiB)
    seen: list[tuple[int, float]] = []
    cancel = asyncio.Event()

    async def progress(bytes_done: int, rate_bps: float) -> None:
        seen.append((bytes_done, rate_bps))
        cancel.set()  # one report is enough; it proves the cadence

    # One chunk per MiB and a manifest that holds the copy after the first chunk
    # until the progress callback has been heard.
    class HoldAfterFirst(SidecarManifestStore):
        async def record(self, index: int, chunk: ChunkRecord) -> None:
            await super().record(index, chunk)
            await cancel.wait()

    dst = tmp_path / "dst"
    sink = FileSink(url_of(dst))
    with pytest.raises(errors.Canceled):
        await copy_file(FileSource(url_of(tmp_path / "src")), sink,
                        manifest=HoldAfterFirst(sidecar_path(dst)), policy=SMALL_CHUNKS,
                        progress=progress, cancel=cancel)
    await sink.abort(keep_partial=False)
    assert seen and seen[0][0] >= MiB and seen[0][1] >= 0


async def test_expand_folder_and_file(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a").write_bytes(b"a")
    (tmp_path / "d" / "sub" / "b c").write_bytes(b"bc")
    entries = await expand(FileSource(url_of(tmp_path / "d")))
    assert [(e.relative_path, e.info.size) for e in entries] == [("a", 1), ("sub/b c", 2)]
    (single,) = await expand(FileSource(url_of(tmp_path / "d" / "sub" / "b c")))
    assert single.relative_path == "b c"


DISK_FULL_SCRIPT = """
import asyncio, resource, signal, sys
from transferd import errors
from workers.stream.engine import copy_file
from workers.stream.local import FileSink, FileSource, url_of
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    asyncio.run(copy_file(FileSource(url_of(sys.argv[1])), FileSink(url_of(sys.argv[2]))))
except errors.TransferError as exc:
    print(exc.error_class)
    print(exc.reason)
"""


def test_disk_full_is_a_clear_permanent_error(tmp_path: Path) -> None:
    make_file(tmp_path / "src", 4 * MiB)
    proc = subprocess.run(
        [sys.executable, "-c", DISK_FULL_SCRIPT, str(tmp_path / "src"), str(tmp_path / "dst")],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent,
    )
    error_class, reason = proc.stdout.splitlines()[:2]
    assert error_class == "disk_full"
    assert reason.startswith("no space left")
    assert not (tmp_path / "dst").exists()


class CountingStore(SidecarManifestStore):
    """A sidecar store that counts how often it is used."""

    calls = 0

    async def load(self) -> Manifest | None:
        type(self).calls += 1
        return await super().load()

    async def reset(self, header: ManifestHeader) -> None:
        type(self).calls += 1
        await super().reset(header)

    async def record(self, index: int, chunk: ChunkRecord) -> None:
        type(self).calls += 1
        await super().record(index, chunk)


async def test_one_chunk_file_needs_no_manifest(tmp_path: Path) -> None:
    data = make_file(tmp_path / "src", 3 * MiB)
    dst = tmp_path / "dst"
    CountingStore.calls = 0
    result = await copy_file(FileSource(url_of(tmp_path / "src")), FileSink(url_of(dst)),
                             manifest=CountingStore(sidecar_path(dst)))
    assert result.checksum == adler(data) and dst.read_bytes() == data
    assert CountingStore.calls == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]
    # A file of several chunks keeps its resume manifest.
    make_file(tmp_path / "src2", 3 * MiB)
    await copy_file(FileSource(url_of(tmp_path / "src2")), FileSink(url_of(tmp_path / "dst2")),
                    manifest=CountingStore(sidecar_path(tmp_path / "dst2")), policy=SMALL_CHUNKS)
    assert CountingStore.calls == 1 + 1 + 3  # load, reset, one record per chunk


async def test_many_commits_into_one_directory(tmp_path: Path) -> None:
    # Concurrent commits share directory fsyncs; each file still lands whole.
    blobs = {f"f{i}": os.urandom(1000 + i) for i in range(40)}
    for name, data in blobs.items():
        (tmp_path / f"{name}.src").write_bytes(data)
    (tmp_path / "out").mkdir()
    results = await asyncio.gather(*(
        copy_file(FileSource(url_of(tmp_path / f"{name}.src")),
                  FileSink(url_of(tmp_path / "out" / name)))
        for name in blobs))
    assert [r.checksum for r in results] == [adler(d) for d in blobs.values()]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(blobs)
    for name, data in blobs.items():
        assert (tmp_path / "out" / name).read_bytes() == data
