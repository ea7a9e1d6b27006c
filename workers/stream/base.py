"""The contracts between the streaming mover's engine and its endpoints.

A ``Source`` is something we read byte ranges from (file://, http(s)://, dav(s)://);
a ``Sink`` is something we write a file into (file://, dav(s)://).  The engine
(workers/stream/engine.py) plans chunks, runs them in parallel, checksums them,
keeps the resume manifest and decides; endpoints only translate to I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

# Called before each request: returns the headers (e.g. Authorization) to send.
# A callable, not a dict, so a token exchanged again mid-transfer is picked up
# without restarting the file.
HeaderProvider = Callable[[], Awaitable[Mapping[str, str]]]


async def no_headers() -> Mapping[str, str]:
    return {}


@dataclass(frozen=True)
class SourceInfo:
    """What we know of a source file before copying it."""

    url: str
    size: int | None
    etag: str | None = None
    last_modified: str | None = None
    # normalised algorithm name ("adler32", "md5", "sha256", "crc32c", "sha1") -> lowercase hex
    checksums: Mapping[str, str] = field(default_factory=dict)
    accepts_ranges: bool = False

    @property
    def validator(self) -> str:
        """size + ETag + Last-Modified: if any differs, the bytes may differ."""
        return f"{self.size}|{self.etag or ''}|{self.last_modified or ''}"


@dataclass(frozen=True)
class Entry:
    """One file found when a folder source is expanded."""

    relative_path: str  # "sub/dir/file.tar", "/"-separated, never starting with "/"
    info: SourceInfo


class Source(Protocol):
    url: str

    @property
    def rtt_s(self) -> float | None:
        """The quickest response (request sent → headers in) seen so far: a round-trip
        estimate for the link's chunk tuning; None for local files or before a request."""
        ...

    async def stat(self) -> SourceInfo:
        """Size, validators, server checksums.  Raises NotFound, AuthError, RetryableError."""
        ...

    def read(self, info: SourceInfo, offset: int, length: int | None) -> AsyncIterator[bytes]:
        """Yield the bytes [offset, offset+length) (to the end when length is None).

        Ranged reads send ``If-Range`` with the validator; a full 200 body to a
        ranged request means the source changed (raise SourceChanged) unless the
        server ignores ranges altogether.  Fewer bytes than asked → RetryableError.
        """
        ...

    async def list(self) -> list[Entry] | None:
        """The files under this source when it is a folder (recursive), else None."""
        ...

    async def aclose(self) -> None: ...


class Sink(Protocol):
    """Where a file is written.

    Optional attribute ``resumed: bool`` (read with ``getattr``, default False):
    True when ``prepare()`` kept the partial data of an earlier attempt under the
    same ``resume_key``.  Only then does the engine skip the chunks the resume
    manifest lists as done; a sink without it always restarts from zero.

    ``abort`` may be called after a failure the engine raised, and again:
    ``abort(keep_partial=True)`` followed by ``abort(keep_partial=False)`` must work.
    """

    url: str
    # True when chunks may be written in any order (file://, chunked uploads);
    # False for a plain streamed PUT, which the engine feeds in order.
    random_access: bool

    async def exists(self) -> bool:
        """Whether the final name already holds a file (for overwrite=False)."""
        ...

    async def prepare(self, size: int | None, resume_key: str | None) -> None:
        """Make parents, preallocate / open an upload session.  ``resume_key`` is
        stable across attempts of the same file (keeps the same .part or upload id)."""
        ...

    async def write_chunk(self, index: int, offset: int, data: AsyncIterator[bytes]) -> None:
        """Write one chunk's bytes at ``offset`` (random_access sinks)."""
        ...

    async def write_stream(self, data: AsyncIterator[bytes]) -> None:
        """Write the whole file in order (sequential sinks)."""
        ...

    def read_back(self) -> AsyncIterator[bytes]:
        """The written (not yet committed) bytes in order, for whole-file hashes."""
        ...

    async def commit(self) -> None:
        """Make the verified file appear at its final name atomically."""
        ...

    async def abort(self, *, keep_partial: bool) -> None:
        """Stop; keep the partial data for a resume (True) or remove every trace (False)."""
        ...


@runtime_checkable
class ResumableUpload(Protocol):
    """A sink whose upload session can outlive the process (DavSink over TUS).

    Before ``prepare()`` the engine sets ``upload_key`` (it names the bytes: source,
    destination and source validator) and, when the manifest store kept one under that
    key, ``upload_url``; ``prepare()`` goes on with that session if the server still has
    it and leaves ``upload_url`` naming the session in use (None when there is none),
    which the engine stores before the first byte is sent.
    """

    upload_url: str | None
    upload_key: str | None
