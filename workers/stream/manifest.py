"""The resume manifest: which chunks of a file are already written, and their checksums.

A retried or redelivered file fetches only the chunks its manifest does not
list as done.  Each done chunk carries its crc32c and its value of the
combinable whole-file checksum (adler32 by default), so the whole-file value is
combined without reading reused chunks again.  The manifest is only trusted
while the source validator (size + ETag + Last-Modified), the chunk size and
the algorithm are unchanged; otherwise it is reset and the copy starts clean.

Two stores: Redis (``td:manifest:{file_id}``, for the daemon's workers, one
HSET per finished chunk so a crash loses at most the chunks in flight) and a
JSON sidecar beside the ``.part`` file (for ``transferd cp`` without Redis,
rewritten atomically through a temporary file and rename).

Both also keep a sequential sink's resumable upload session (a TUS upload URL),
so an upload interrupted by ``kill -9`` goes on in the next process.  It is
stored under a key the engine derives from the source validator: a changed
source never resumes an upload of the old bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # only typed here: ``transferd cp`` never loads Redis (~40 ms at start)
    import redis.asyncio

_HEADER_FIELDS = ("chunk_size_bytes", "validator", "algorithm", "size")
_UPLOAD_KEY, _UPLOAD_URL = "upload_key", "upload_url"  # Redis fields / sidecar keys


@dataclass(frozen=True)
class ChunkRecord:
    """A finished chunk: its length, crc32c, and value of the manifest's algorithm."""

    length: int
    crc32c: int
    value: int | None  # None when the whole-file algorithm does not combine

    def encode(self) -> str:
        value = "" if self.value is None else f"{self.value:08x}"
        return f"{self.length}:{self.crc32c:08x}:{value}"

    @classmethod
    def decode(cls, text: str) -> ChunkRecord:
        length, crc, value = text.split(":")
        return cls(int(length), int(crc, 16), int(value, 16) if value else None)


@dataclass(frozen=True)
class ManifestHeader:
    """What a manifest is valid for; any difference means its chunks cannot be reused."""

    chunk_size_bytes: int
    validator: str
    algorithm: str  # the combinable algorithm of ChunkRecord.value, or "" when none
    size: int


@dataclass
class Manifest:
    header: ManifestHeader
    chunks: dict[int, ChunkRecord] = field(default_factory=dict)

    @property
    def done(self) -> frozenset[int]:
        """The done-bitmap, as the set of finished chunk indices."""
        return frozenset(self.chunks)


class ManifestStore(Protocol):
    """Where a file's manifest lives between attempts."""

    async def load(self) -> Manifest | None:
        """The stored manifest, or None when there is none (or it is unreadable)."""
        ...

    async def reset(self, header: ManifestHeader) -> None:
        """Start a fresh manifest for ``header`` with no chunk done."""
        ...

    async def record(self, index: int, chunk: ChunkRecord) -> None:
        """Mark chunk ``index`` done (atomically, once its bytes are written)."""
        ...

    async def clear(self) -> None:
        """Remove the manifest (the file is committed, or its partial was discarded)."""
        ...


@runtime_checkable
class UploadSessionStore(Protocol):
    """A manifest store that also keeps a resumable upload session between processes.

    ``clear()`` removes the session with the manifest.
    """

    async def load_upload(self, key: str) -> str | None:
        """The upload URL saved under ``key``; None when none, or saved under another key."""
        ...

    async def save_upload(self, key: str, upload_url: str) -> None:
        """Remember ``upload_url`` for ``key``, replacing any earlier session."""
        ...


def manifest_key(file_id: str) -> str:
    return f"td:manifest:{file_id}"


class RedisManifestStore:
    """The manifest as a Redis hash: header fields plus one ``c:{index}`` field per chunk.

    A ``TTL`` keeps abandoned manifests from piling up; ``record`` refreshes it.
    """

    def __init__(self, client: redis.asyncio.Redis, key: str, *, ttl_s: int = 7 * 86400) -> None:
        self._redis = client
        self.key = key
        self._ttl_s = ttl_s

    async def load(self) -> Manifest | None:
        raw: dict[Any, Any] = await self._redis.hgetall(self.key)
        fields = {_text(k): _text(v) for k, v in raw.items()}
        try:
            header = ManifestHeader(
                chunk_size_bytes=int(fields["chunk_size_bytes"]),
                validator=fields["validator"],
                algorithm=fields["algorithm"],
                size=int(fields["size"]),
            )
            chunks = {
                int(k[2:]): ChunkRecord.decode(v) for k, v in fields.items() if k.startswith("c:")
            }
        except (KeyError, ValueError):
            return None
        return Manifest(header, chunks)

    async def reset(self, header: ManifestHeader) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.key)
            pipe.hset(
                self.key,
                mapping={
                    "chunk_size_bytes": header.chunk_size_bytes,
                    "validator": header.validator,
                    "algorithm": header.algorithm,
                    "size": header.size,
                },
            )
            pipe.expire(self.key, self._ttl_s)
            await pipe.execute()

    async def record(self, index: int, chunk: ChunkRecord) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key, f"c:{index}", chunk.encode())
            pipe.expire(self.key, self._ttl_s)
            await pipe.execute()

    async def clear(self) -> None:
        await self._redis.delete(self.key)

    async def load_upload(self, key: str) -> str | None:
        stored_key, url = await self._redis.hmget(self.key, [_UPLOAD_KEY, _UPLOAD_URL])
        if stored_key is None or url is None or _text(stored_key) != key:
            return None
        return _text(url)

    async def save_upload(self, key: str, upload_url: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key, mapping={_UPLOAD_KEY: key, _UPLOAD_URL: upload_url})
            pipe.expire(self.key, self._ttl_s)
            await pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _finish_even_if_cancelled(write: Callable[[Manifest | None], None],
                                    m: Manifest | None) -> None:
    """Run ``write`` in a thread and wait for it even when cancelled, so a write
    never lands after the caller has moved on (e.g. removed the sidecar)."""
    fut = asyncio.ensure_future(asyncio.to_thread(write, m))
    try:
        await asyncio.shield(fut)
    except asyncio.CancelledError:
        await fut
        raise


def sidecar_path(final_path: str | os.PathLike[str]) -> Path:
    """Where ``transferd cp`` keeps the manifest for ``final_path`` (beside its ``.part``)."""
    p = Path(final_path)
    return p.with_name(p.name + ".part.manifest")


class SidecarManifestStore:
    """The manifest as a JSON file, rewritten atomically (temp file + fsync + rename).

    Rewriting the whole file per chunk is fine: a manifest has at most a few
    thousand short entries and chunks take seconds each.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._manifest: Manifest | None = None
        self._upload: tuple[str, str] | None = None  # (key, upload URL)
        self._lock = asyncio.Lock()

    async def load(self) -> Manifest | None:
        self._manifest = await asyncio.to_thread(self._read)
        return self._manifest

    def _read_doc(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def _read(self) -> Manifest | None:
        doc = self._read_doc()
        self._upload = _upload_of(doc)
        if doc is None:
            return None
        try:
            header = ManifestHeader(**{k: doc[k] for k in _HEADER_FIELDS})
            chunks = {int(k): ChunkRecord.decode(v) for k, v in doc["chunks"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return Manifest(header, chunks)

    async def load_upload(self, key: str) -> str | None:
        async with self._lock:
            self._upload = _upload_of(await asyncio.to_thread(self._read_doc))
        if self._upload is None or self._upload[0] != key:
            return None
        return self._upload[1]

    async def save_upload(self, key: str, upload_url: str) -> None:
        async with self._lock:
            self._upload = (key, upload_url)
            await _finish_even_if_cancelled(self._write, self._manifest)

    async def reset(self, header: ManifestHeader) -> None:
        async with self._lock:
            self._manifest = Manifest(header)
            self._upload = None
            await _finish_even_if_cancelled(self._write, self._manifest)

    async def record(self, index: int, chunk: ChunkRecord) -> None:
        async with self._lock:
            if self._manifest is None:
                raise RuntimeError("record() before reset() or load()")
            self._manifest.chunks[index] = chunk
            await _finish_even_if_cancelled(self._write, self._manifest)

    def _write(self, manifest: Manifest | None) -> None:
        doc: dict[str, Any] = {}
        if manifest is not None:
            h = manifest.header
            doc.update({
                "chunk_size_bytes": h.chunk_size_bytes,
                "validator": h.validator,
                "algorithm": h.algorithm,
                "size": h.size,
                "chunks": {str(i): c.encode() for i, c in sorted(manifest.chunks.items())},
            })
        if self._upload is not None:
            doc[_UPLOAD_KEY], doc[_UPLOAD_URL] = self._upload
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    async def clear(self) -> None:
        async with self._lock:
            self._manifest = None
            self._upload = None
            await asyncio.to_thread(self._remove)

    def _remove(self) -> None:
        for p in (self.path, self.path.with_name(self.path.name + ".tmp")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _upload_of(doc: dict[str, Any] | None) -> tuple[str, str] | None:
    """The (key, upload URL) a sidecar document holds, if any."""
    if doc is None:
        return None
    key, url = doc.get(_UPLOAD_KEY), doc.get(_UPLOAD_URL)
    return (key, url) if isinstance(key, str) and isinstance(url, str) else None
