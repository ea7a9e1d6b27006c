"""The streaming mover's engine: copy one file from a Source into a Sink, verified.

Chunks run ``streams`` at a time; each one is read, hashed and written by
``workers.stream.chunk_copy`` (which also tries a chunk again in place after a
transient failure).

Every chunk gets a crc32c and, when the whole-file algorithm combines
(adler32, crc32, crc32c), its own value of that algorithm; the whole-file value
is combined from the chunks, so chunks can run in parallel and out of order and
chunks reused from an earlier attempt need not be read again.  md5/sha* need
the bytes in order: they are hashed inline when the file runs as one stream,
else by reading the unfinished file back once.

A file that is one chunk (smaller than the policy's chunk size) has nothing to
resume: it gets no manifest at all, and when a folder listing already gave
its size (``copy_file(info=...)``) no separate stat request either.

Nothing reaches the final name unless every comparison asked for passed; a
mismatch removes the partial and resets the manifest.  On any other failure
(including ``Canceled``) the partial and manifest are left for a resume and the
caller decides: ``await sink.abort(keep_partial=...)``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import posixpath
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from policies.chunking import ChunkPlan, ChunkPolicy, plan
from transferd import errors
from workers.stream import checksums
from workers.stream.base import Entry, ResumableUpload, Sink, Source, SourceInfo
from workers.stream.checksums import crc32c_update
from workers.stream.chunk_copy import HASH_BATCH_BYTES, copy_chunk, race
from workers.stream.limiter import TokenBucket
from workers.stream.manifest import (
    ChunkRecord,
    Manifest,
    ManifestHeader,
    ManifestStore,
    UploadSessionStore,
)

VERIFY_MODES = ("both", "source", "target", "none")
RATE_WINDOW_S = 5.0  # the span the reported rate averages over
PROGRESS_INTERVAL_S = 0.5

ProgressCallback = Callable[[int, float], Awaitable[None]]


@dataclass(frozen=True)
class CopyResult:
    """What one successful copy did."""

    size: int
    checksum: str  # "alg:value", verified as the verify mode asked
    bytes_fetched: int  # bytes read from the source in this attempt
    chunks_reused: int  # chunks an earlier attempt had finished
    elapsed_s: float


class _Copy:
    """The state of one copy attempt; ``run`` walks stat → plan → chunks → verify → commit."""

    def __init__(
        self,
        source: Source,
        sink: Sink,
        expected: checksums.ChecksumSpec | None,
        verify: str,
        manifest: ManifestStore | None,
        policy: ChunkPolicy,
        resume_key: str | None,
        known: SourceInfo | None = None,
        limiter: TokenBucket | None = None,
    ) -> None:
        self.known = known
        self.limiter = limiter
        self.source = source
        self.sink = sink
        self.expected = expected
        self.verify = verify
        self.manifest = manifest
        self.policy = policy
        self.resume_key = resume_key
        self.started = time.monotonic()
        self.bytes_done = 0
        self.bytes_fetched = 0
        # the manifest store, once it was asked for an upload session (see _restore_upload)
        self.session_store: ManifestStore | None = None

    # --- progress -----------------------------------------------------------

    async def report_progress(self, progress: ProgressCallback) -> None:
        """Call ``progress(bytes_done, rate_bps)`` every PROGRESS_INTERVAL_S until cancelled."""
        # Bytes arrive in multi-MiB batches: a rate over one interval would
        # flicker between 0 and double on a slow link, so average over a window.
        window: collections.deque[tuple[float, int]] = collections.deque()
        window.append((time.monotonic(), self.bytes_done))
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            now, done = time.monotonic(), self.bytes_done
            window.append((now, done))
            while len(window) > 2 and now - window[1][0] >= RATE_WINDOW_S:
                window.popleft()
            first_t, first_bytes = window[0]
            rate_bps = (done - first_bytes) / (now - first_t) if now > first_t else 0.0
            await progress(done, rate_bps)

    # --- the attempt --------------------------------------------------------

    async def _stat(self) -> SourceInfo:
        """The source's info: from the folder listing when it says enough, else asked."""
        known = self.known
        if known is not None and known.size is not None and (
            known.accepts_ranges or len(plan(known.size, self.policy).chunks) == 1
        ):
            # A one-chunk file is read with one GET whatever we know of ranges;
            # its response is checked against the listed size and validators.
            return known
        return await self.source.stat()

    async def run(self) -> CopyResult:
        info = await self._stat()
        primary = self.expected.algorithm if self.expected else checksums.DEFAULT_ALGORITHM
        declared = {
            checksums.normalise_algorithm(k): v
            for k, v in info.checksums.items()
            if _known(k)
        }
        source_alg = self._pick_source_algorithm(primary, declared)
        self._precheck(primary, declared)
        combined_alg = primary if primary in checksums.COMBINABLE else ""
        wanted = {primary} | ({source_alg} if source_alg else set())
        ordered_algs = sorted(wanted - {combined_alg, "crc32c"})

        # A sink learns what the server offers (e.g. chunked uploads, which make
        # it random-access) in prepare(), so prepare before planning.
        stored_upload = await self._restore_upload(info)
        await self.sink.prepare(info.size, self.resume_key)
        await self._keep_upload(stored_upload)
        sequential = not self.sink.random_access or not info.accepts_ranges or info.size is None
        # A file that is one chunk has nothing to resume: no manifest to load,
        # write and remove (they cost more than the copy of a small file).
        one_chunk = len(plan(info.size, self.policy, ranges=not sequential).chunks) == 1
        manifest = None if one_chunk or sequential else self.manifest
        old = await manifest.load() if manifest is not None else None
        usable = old is not None and _reusable(old, info, combined_alg)
        resume_chunk = old.header.chunk_size_bytes if old is not None and usable else None
        chunk_plan = plan(
            info.size, self.policy, ranges=not sequential, chunk_size_bytes=resume_chunk
        )
        reused: dict[int, ChunkRecord] = {}
        if old is not None and usable and getattr(self.sink, "resumed", False):
            reused = {
                c.index: old.chunks[c.index]
                for c in chunk_plan.chunks
                if c.index in old.chunks and old.chunks[c.index].length == c.length
            }
            if reused:
                reused = await self._check_reused(reused, chunk_plan)
        elif resume_chunk is not None:
            chunk_plan = plan(info.size, self.policy)
        if manifest is not None and not reused:
            await manifest.reset(
                ManifestHeader(chunk_plan.chunk_size_bytes, info.validator, combined_alg,
                               info.size if info.size is not None else -1)
            )
        self.bytes_done = sum(r.length for r in reused.values())

        inline = chunk_plan.streams == 1 and not reused
        ordered = [checksums.new_hasher(a) for a in ordered_algs] if inline else []
        try:
            records = await self._run_chunks(info, chunk_plan, reused, combined_alg, ordered,
                                             manifest)
            size = sum(r.length for r in records)
            computed = self._combine(records, combined_alg)
            if ordered_algs and not inline:
                ordered = [checksums.new_hasher(a) for a in ordered_algs]
                await self._read_back(ordered, size)
            computed.update({h.algorithm: h.hexdigest() for h in ordered})
            if not declared:
                # Without a HEAD, the GET's own Digest/Repr-Digest headers are
                # the source's declaration.
                late = getattr(self.source, "response_checksums", None) or {}
                declared = {
                    checksums.normalise_algorithm(k): v for k, v in late.items() if _known(k)
                }
                source_alg = self._pick_source_algorithm(primary, declared)
                if source_alg and source_alg not in computed:
                    extra = [checksums.new_hasher(source_alg)]
                    await self._read_back(extra, size)
                    computed[source_alg] = extra[0].hexdigest()
            self._verify(computed, primary, source_alg, declared)
        except (errors.ChecksumMismatch, errors.SourceChanged):
            await self.sink.abort(keep_partial=False)
            await self._forget(manifest)
            raise
        await self.sink.commit()
        await self._forget(manifest)
        return CopyResult(
            size=size,
            checksum=checksums.format_checksum(primary, computed[primary]),
            bytes_fetched=self.bytes_fetched,
            chunks_reused=len(reused),
            elapsed_s=time.monotonic() - self.started,
        )

    async def _restore_upload(self, info: SourceInfo) -> str | None:
        """Give a resumable-upload sink the session an earlier process stored for
        these very bytes; returns that session's URL (None when there is none)."""
        sink, store = self.sink, self.manifest
        if not isinstance(sink, ResumableUpload) or not isinstance(store, UploadSessionStore):
            return None
        if not (info.etag or info.last_modified):
            return None  # size alone does not name the bytes (as in _reusable)
        sink.upload_key = hashlib.sha256(
            f"{self.source.url}\n{self.sink.url}\n{self.resume_key}\n{info.validator}".encode()
        ).hexdigest()[:32]
        self.session_store = store
        stored = await store.load_upload(sink.upload_key)
        if stored is not None:
            sink.upload_url = stored
        return stored

    async def _keep_upload(self, stored: str | None) -> None:
        """Store the session prepare() opened, before its first byte is sent, so a
        kill -9 from here on still leaves it for the next process."""
        sink, store = self.sink, self.manifest
        if (
            self.session_store is None
            or not isinstance(sink, ResumableUpload)
            or not isinstance(store, UploadSessionStore)
            or sink.upload_key is None
            or sink.upload_url is None
            or sink.upload_url == stored
        ):
            return
        await store.save_upload(sink.upload_key, sink.upload_url)

    async def _forget(self, manifest: ManifestStore | None) -> None:
        """Drop the chunk manifest and upload session: the file is committed or discarded."""
        store = manifest if manifest is not None else self.session_store
        if store is not None:
            await store.clear()

    async def _check_reused(
        self, reused: dict[int, ChunkRecord], chunk_plan: ChunkPlan
    ) -> dict[int, ChunkRecord]:
        """The reused chunks whose bytes in the partial still match their crc32c.

        Chunks are recorded once written, not once durable; after an OS crash
        the partial may miss some, and trusting the manifest would combine a
        whole-file checksum for bytes that are not there.  Re-reading the
        partial locally costs far less than fetching it again.
        """
        spans = [(c.offset, c.offset + (c.length or 0), c.index) for c in chunk_plan.chunks
                 if c.index in reused]
        end_bytes = max(hi for _, hi, _ in spans)
        crcs = dict.fromkeys(reused, 0)

        def update(pieces: list[tuple[int, bytes]]) -> None:
            for pos, piece in pieces:
                view = memoryview(piece)
                for lo, hi, index in spans:
                    a, b = max(lo, pos), min(hi, pos + len(view))
                    if a < b:
                        crcs[index] = crc32c_update(view[a - pos : b - pos], crcs[index])

        pos = 0
        batch: list[tuple[int, bytes]] = []
        batch_bytes = 0
        stream = self.sink.read_back()
        try:
            async for piece in stream:
                batch.append((pos, piece))
                batch_bytes += len(piece)
                pos += len(piece)
                if batch_bytes >= HASH_BATCH_BYTES or pos >= end_bytes:
                    await asyncio.to_thread(update, batch)
                    batch, batch_bytes = [], 0
                if pos >= end_bytes:
                    break
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        return {i: r for i, r in reused.items() if crcs[i] == r.crc32c}

    def _pick_source_algorithm(self, primary: str, declared: dict[str, str]) -> str:
        """Which of the source's declared checksums to verify against ("" for none)."""
        if self.verify not in ("both", "source") or not declared:
            return ""
        if primary in declared:
            return primary
        # Prefer what is cheapest to compute beside the primary one.
        for alg in ("crc32c", "adler32", "crc32", "sha1", "sha256", "md5"):
            if alg in declared:
                return alg
        return ""

    def _precheck(self, primary: str, declared: dict[str, str]) -> None:
        """Fail before moving any byte when the request and the source already disagree."""
        if self.verify != "both" or not self.expected or not self.expected.value:
            return
        if primary in declared and not checksums.values_equal(
            primary, self.expected.value, declared[primary]
        ):
            raise errors.ChecksumMismatch(
                primary, self.expected.value, declared[primary], where="source declares"
            )

    async def _run_chunks(
        self,
        info: SourceInfo,
        chunk_plan: ChunkPlan,
        reused: dict[int, ChunkRecord],
        combined_alg: str,
        ordered: list[checksums.Hasher],
        manifest: ManifestStore | None,
    ) -> list[ChunkRecord]:
        """Copy every chunk not reused, ``streams`` at a time; records in chunk order."""
        records = dict(reused)
        todo = collections.deque(c for c in chunk_plan.chunks if c.index not in reused)
        sequential = not self.sink.random_access or not info.accepts_ranges or info.size is None

        async def worker() -> None:
            while todo:
                chunk = todo.popleft()
                record = await copy_chunk(self, info, chunk, combined_alg, ordered, sequential,
                                          self.policy.chunk_tries)
                records[chunk.index] = record
                if manifest is not None:
                    await manifest.record(chunk.index, record)

        workers = min(chunk_plan.streams, max(len(todo), 1))
        if workers == 1:
            await worker()
        else:
            await race([worker() for _ in range(workers)])
        return [records[c.index] for c in chunk_plan.chunks]

    def _combine(self, records: list[ChunkRecord], combined_alg: str) -> dict[str, str]:
        """Whole-file crc32c (always) and the combinable algorithm's value, from the chunks."""
        crc = checksums.combine_all("crc32c", [(r.crc32c, r.length) for r in records])
        computed = {"crc32c": checksums.format_value("crc32c", crc)}
        if combined_alg and combined_alg != "crc32c":
            pieces = []
            for r in records:
                if r.value is None:
                    raise errors.TransferError(f"manifest lacks {combined_alg} chunk values")
                pieces.append((r.value, r.length))
            value = checksums.combine_all(combined_alg, pieces)
            computed[combined_alg] = checksums.format_value(combined_alg, value)
        return computed

    async def _read_back(self, hashers: list[checksums.Hasher], size: int) -> None:
        """Feed the in-order hashers from the written data (parallel or resumed copies)."""
        batch: list[bytes] = []
        batch_bytes = total = 0

        def update(pieces: list[bytes]) -> None:
            for piece in pieces:
                for h in hashers:
                    h.update(piece)

        async for piece in self.sink.read_back():
            batch.append(piece)
            batch_bytes += len(piece)
            total += len(piece)
            if batch_bytes >= HASH_BATCH_BYTES:
                await asyncio.to_thread(update, batch)
                batch, batch_bytes = [], 0
        if batch:
            await asyncio.to_thread(update, batch)
        if total != size:
            raise errors.RetryableError(f"read back {total} bytes of the {size} written")

    def _verify(
        self, computed: dict[str, str], primary: str, source_alg: str, declared: dict[str, str]
    ) -> None:
        want = self.expected.value if self.expected else None
        if (
            self.verify in ("both", "target")
            and want
            and not checksums.values_equal(primary, want, computed[primary])
        ):
            raise errors.ChecksumMismatch(primary, want, computed[primary], where="requested value")
        if source_alg and not checksums.values_equal(
            source_alg, declared[source_alg], computed[source_alg]
        ):
            raise errors.ChecksumMismatch(
                source_alg, declared[source_alg], computed[source_alg], where="source declares"
            )


def _known(name: str) -> bool:
    try:
        checksums.normalise_algorithm(name)
    except ValueError:
        return False
    return True


def _reusable(old: Manifest, info: SourceInfo, combined_alg: str) -> bool:
    """Whether an earlier attempt's chunks may be trusted for this source now.

    A size alone does not identify content, so a source with neither ETag nor
    Last-Modified is never resumed.
    """
    h = old.header
    return (
        bool(info.etag or info.last_modified)
        and h.validator == info.validator
        and h.size == info.size
        and h.algorithm == combined_alg
    )


async def copy_file(
    source: Source,
    sink: Sink,
    *,
    expected_checksum: str | None = None,
    verify: str = "both",
    manifest: ManifestStore | None = None,
    policy: ChunkPolicy | None = None,
    progress: ProgressCallback | None = None,
    cancel: asyncio.Event | None = None,
    resume_key: str | None = None,
    info: SourceInfo | None = None,
    limiter: TokenBucket | None = None,
) -> CopyResult:
    """Copy ``source`` into ``sink``, verify it, and commit it to the final name.

    ``expected_checksum`` is "alg" or "alg:value"; its algorithm (adler32 when
    absent) is the one reported.  ``verify`` chooses the comparisons:
    "both" (the requested value and the source's declared checksum), "source"
    (the source's declared checksum only), "target" (the requested value only)
    or "none" (computed and reported, compared with nothing).

    ``manifest`` makes the copy resumable: chunks it lists as done (for the
    same source validator) are not fetched again.  ``progress`` is awaited
    every ~0.5 s with (bytes_done, rate in bytes/s); an exception it raises
    stops the copy.  Setting ``cancel`` stops the copy within a second with
    ``errors.Canceled``.

    ``info`` is what a folder listing already said of the source (``expand``):
    when it gives the size and the file is one chunk (or ranges are known to
    work), no separate stat request (HEAD/PROPFIND) is sent; the GET's
    response is checked against it instead.

    ``limiter`` caps the read rate; share one among the files of a link to cap the link.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, not {verify!r}")
    expected = checksums.parse_spec(expected_checksum) if expected_checksum else None
    if cancel is not None and cancel.is_set():
        raise errors.Canceled("the transfer was canceled before it started")
    if resume_key is None:
        resume_key = hashlib.sha256(f"{source.url}\n{sink.url}".encode()).hexdigest()[:32]
    job = _Copy(source, sink, expected, verify, manifest, policy or ChunkPolicy(), resume_key,
                info, limiter)
    main = asyncio.ensure_future(job.run())
    watchers: list[asyncio.Future[Any]] = []
    if cancel is not None:
        watchers.append(asyncio.ensure_future(cancel.wait()))
    if progress is not None:
        watchers.append(asyncio.ensure_future(job.report_progress(progress)))
    try:
        done, _ = await asyncio.wait([main, *watchers], return_when=asyncio.FIRST_COMPLETED)
        if main in done:
            return main.result()
        main.cancel()
        await asyncio.gather(main, return_exceptions=True)
        for w in watchers:
            if w in done and not w.cancelled() and w.exception() is not None:
                raise w.exception()  # type: ignore[misc]
        raise errors.Canceled("the transfer was canceled")
    finally:
        for fut in (main, *watchers):
            fut.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(main, *watchers, return_exceptions=True)


async def expand(source: Source) -> list[Entry]:
    """The files to copy for ``source``: every file under a folder (relative paths
    kept), or the file itself under its own name."""
    entries = await source.list()
    if entries is not None:
        return entries
    info = await source.stat()
    name = posixpath.basename(unquote(urlsplit(source.url).path).rstrip("/")) or "file"
    return [Entry(name, info)]
