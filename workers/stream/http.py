"""The http(s):// and dav(s):// source, and the HTTP plumbing the WebDAV sink shares.

Error mapping for every request (``error_for_status``):

    connection refused/reset, timeout, 5xx, 429  → RetryableError (Retry-After honoured)
    401, 403                                      → AuthError
    404, 410                                      → NotFound
    other 4xx, unexpected 3xx                     → PermanentError

Reasons name the method, the URL without userinfo and the status, never a
header value: request headers carry bearer tokens and passwords.

The parsers of what servers answer (digest headers, Retry-After, PROPFIND
multistatus) are pure and live in ``workers.stream.http_parse``.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import time
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
from yarl import URL

from transferd.errors import (
    AuthError,
    NotFound,
    PermanentError,
    RetryableError,
    SourceChanged,
    TransferError,
)
from workers.stream.base import Entry, HeaderProvider, SourceInfo, no_headers
from workers.stream.http_parse import (
    DavProps,
    parse_checksum_list,
    parse_digest_header,
    parse_multistatus,
    parse_retry_after,
)

__all__ = [
    "HttpClient",
    "HttpSource",
    "Target",
    "error_for_status",
    "new_session",
]

MIB = 1 << 20
# Pieces handed to the engine: big enough that per-piece costs (hash call,
# pwrite, task switch) vanish beside the bytes.
MIN_PIECE_BYTES = 1 * MIB
READ_PIECE_BYTES = 1 * MIB
# aiohttp stops reading a connection once this much (times two) waits unread:
# the per-connection share of the bounded memory.
READ_BUFSIZE = 2 * MIB
LIST_CONCURRENCY = 8

PROPFIND_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>'
    b'<d:propfind xmlns:d="DAV:" xmlns:oc="http://owncloud.org/ns"><d:prop>'
    b"<d:resourcetype/><d:getcontentlength/><d:getetag/><d:getlastmodified/>"
    b"<oc:checksums/></d:prop></d:propfind>"
)
WANT_REPR_DIGEST = "sha-256=5, md5=3, adler=2, crc32c=2, sha=1"
WANT_DIGEST = "adler32;q=1, md5;q=0.8, sha-256;q=0.6, crc32c;q=0.5, sha;q=0.3"


def new_session(*, connections: int = 64, read_bufsize: int = READ_BUFSIZE,
                ) -> aiohttp.ClientSession:
    """The session transfers should share: keep-alive pool, no decompression, big reads."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections,
                                     ttl_dns_cache=300, enable_cleanup_closed=True)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                 read_bufsize=read_bufsize,
                                 timeout=aiohttp.ClientTimeout(total=None))


# ---------------------------------------------------------------- pure helpers


def error_for_status(method: str, display_url: str, status: int,
                     retry_after: str | None = None) -> TransferError:
    """The exception for an HTTP status; the reason names method, URL and status only."""
    reason = f"{method} {display_url} answered HTTP {status}"
    if status in (401, 403):
        return AuthError(reason)
    if status in (404, 410):
        return NotFound(reason)
    if status == 429 or status >= 500:
        return RetryableError(reason, retry_after_s=parse_retry_after(retry_after))
    return PermanentError(reason)


def _is_weak(etag: str) -> bool:
    return etag.startswith("W/")


# ---------------------------------------------------------------- URL + requests


@dataclass(frozen=True)
class Target:
    """A user-given URL split into what we request, what we print and the Basic credentials."""

    http_url: URL  # http(s) scheme, no userinfo
    display: str  # for messages: original scheme, no userinfo, no query
    basic: str | None  # "Basic …" from user:pass@, else None
    is_dav: bool

    @classmethod
    def parse(cls, url: str) -> Target:
        u = URL(url)
        scheme = {"dav": "http", "davs": "https"}.get(u.scheme, u.scheme)
        if scheme not in ("http", "https"):
            raise PermanentError(f"unsupported URL scheme {u.scheme!r}")
        basic = None
        if u.user is not None:
            pair = f"{u.user}:{u.password or ''}".encode()
            basic = "Basic " + base64.b64encode(pair).decode("ascii")
        clean = u.with_user(None).with_password(None)
        display = str(clean.with_query(None).with_fragment(None))
        return cls(clean.with_scheme(scheme), display, basic, u.scheme in ("dav", "davs"))

    def join(self, relative_path: str, *, collection: bool = False) -> Target:
        """The target ``relative_path`` below this one (a "/"-separated, unquoted path)."""
        base = str(self.http_url.with_query(None)).rstrip("/")
        rel = quote(relative_path.strip("/"))
        http_url = URL(f"{base}/{rel}{'/' if collection else ''}", encoded=True)
        shown = f"{self.display.rstrip('/')}/{relative_path.strip('/')}"
        return Target(http_url, shown, self.basic, self.is_dav)


class HttpClient:
    """Sends one request with fresh headers and maps every failure to a TransferError."""

    def __init__(self, session: aiohttp.ClientSession, headers: HeaderProvider,
                 basic: str | None, *, connect_timeout_s: float = 30.0,
                 read_timeout_s: float = 120.0) -> None:
        self.session = session
        self._headers = headers
        self._basic = basic
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s,
                                             sock_read=read_timeout_s)
        # the quickest response seen (request sent → status and headers in): the
        # link's round trip plus the server's least think time
        self.fastest_response_s: float | None = None

    async def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        # identity: ranges must address the stored bytes, and a compressed body would
        # only cost CPU on both ends (we never decompress)
        h = {"Accept-Encoding": "identity"}
        h.update(await self._headers())
        if self._basic and not any(k.lower() == "authorization" for k in h):
            h["Authorization"] = self._basic
        if extra:
            h.update(extra)
        return h

    @asynccontextmanager
    async def request(self, method: str, url: URL, display: str, *,
                      expect: Collection[int], headers: Mapping[str, str] | None = None,
                      data: Any = None, redirects: bool = True,
                      ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response when its status is in ``expect``; else the mapped error is raised."""
        hdrs = await self.headers(headers)
        sent = time.monotonic()
        try:
            resp = await self.session.request(
                method, url, headers=hdrs, data=data, allow_redirects=redirects,
                timeout=self.timeout, auto_decompress=False)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RetryableError(f"{method} {display} failed: {_describe(exc)}") from None
        if data is None:  # an upload's answer waits for the body: no round-trip sample
            took = time.monotonic() - sent
            if self.fastest_response_s is None or took < self.fastest_response_s:
                self.fastest_response_s = took
        try:
            if resp.status not in expect:
                raise error_for_status(method, display, resp.status,
                                       resp.headers.get("Retry-After"))
            yield resp
        finally:
            resp.release()

    async def propfind(self, url: URL, display: str, depth: str) -> list[DavProps] | None:
        """The multistatus entries, or None when the server does not do PROPFIND."""
        async with self.request(
            # 200: a plain HTTP server that took PROPFIND for GET
            "PROPFIND", url, display, expect=(200, 207, 400, 405, 501),
            headers={"Depth": depth, "Content-Type": "application/xml; charset=utf-8"},
            data=PROPFIND_BODY,
        ) as resp:
            if resp.status != 207:
                return None
            try:
                body = await resp.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise RetryableError(f"PROPFIND {display} failed: {_describe(exc)}") from None
        return parse_multistatus(body)


def _describe(exc: BaseException) -> str:
    """A short, header-free description of a client-side failure."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _same_path(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


# ---------------------------------------------------------------- the source


class HttpSource:
    """Reads a file (or lists a folder) over HTTP(S)/WebDAV."""

    def __init__(self, url: str, session: aiohttp.ClientSession,
                 headers: HeaderProvider = no_headers, *,
                 read_piece_bytes: int = READ_PIECE_BYTES,
                 connect_timeout_s: float = 30.0, read_timeout_s: float = 120.0) -> None:
        self.target = Target.parse(url)
        self.url = self.target.display
        self._client = HttpClient(session, headers, self.target.basic,
                                  connect_timeout_s=connect_timeout_s,
                                  read_timeout_s=read_timeout_s)
        self._piece_bytes = max(read_piece_bytes, MIN_PIECE_BYTES)
        # The digests the last whole-file GET's response declared (see read()).
        self.response_checksums: dict[str, str] = {}
        # Whether a whole-file GET sends Want-Digest (off once stat()'s HEAD asked).
        self.ask_digests = True

    @property
    def rtt_s(self) -> float | None:
        return self._client.fastest_response_s

    @classmethod
    def for_target(cls, target: Target, client: HttpClient,
                   read_piece_bytes: int = READ_PIECE_BYTES) -> HttpSource:
        """A source on an already parsed target sharing ``client`` (headers, credentials)."""
        src = cls.__new__(cls)
        src.target = target
        src.url = target.display
        src._client = client
        src._piece_bytes = max(read_piece_bytes, MIN_PIECE_BYTES)
        src.response_checksums = {}
        src.ask_digests = True
        return src

    def child(self, relative_path: str) -> HttpSource:
        """The source of one file found by ``list()`` (same session, headers and credentials)."""
        return HttpSource.for_target(self.target.join(relative_path), self._client,
                                     self._piece_bytes)

    # -- stat

    async def stat(self) -> SourceInfo:
        t = self.target
        self.ask_digests = False  # the HEAD below asks; a GET need not ask again
        if t.is_dav:
            head, props = await asyncio.gather(self._head(), self._propfind_self())
        else:
            head, props = await self._head(), None
            if head is None or head.size is None:
                props = await self._propfind_self()
        if head is None and props is None:
            raise PermanentError(f"{t.display}: neither HEAD nor PROPFIND is allowed")
        size = head.size if head and head.size is not None else (props.size if props else None)
        checksums = {**(props.checksums if props else {}), **(head.checksums if head else {})}
        return SourceInfo(
            url=self.url,
            size=size,
            etag=(head.etag if head else None) or (props.etag if props else None),
            last_modified=(head.last_modified if head else None)
            or (props.last_modified if props else None),
            checksums=checksums,
            accepts_ranges=bool(head and head.accepts_ranges),
        )

    async def _head(self) -> SourceInfo | None:
        t = self.target
        want = {"Want-Repr-Digest": WANT_REPR_DIGEST, "Want-Digest": WANT_DIGEST}
        async with self._client.request("HEAD", t.http_url, t.display,
                                        expect=(200, 405, 501), headers=want) as resp:
            if resp.status != 200:
                return None
            h = resp.headers
            checksums = _header_checksums(resp)
            length = h.get("Content-Length")
            chunked = "chunked" in h.get("Transfer-Encoding", "").lower()
            return SourceInfo(
                url=self.url,
                size=int(length) if length is not None and not chunked else None,
                etag=h.get("ETag"),
                last_modified=h.get("Last-Modified"),
                checksums=checksums,
                accepts_ranges="bytes" in h.get("Accept-Ranges", "").lower(),
            )

    async def _propfind_self(self) -> DavProps | None:
        t = self.target
        entries = await self._client.propfind(t.http_url, t.display, "0")
        if not entries:
            return None
        return entries[0]

    # -- read

    async def read(self, info: SourceInfo, offset: int,
                   length: int | None) -> AsyncIterator[bytes]:
        if length == 0:
            return
        t = self.target
        ranged = offset > 0 or length is not None
        whole = offset == 0 and (length is None or (info.size is not None
                                                    and length >= info.size))
        extra: dict[str, str] = {}
        if whole and self.ask_digests and not info.checksums:
            # No HEAD asked yet (the info came from a folder listing): the GET
            # of the whole file asks for the server's digests instead.
            extra["Want-Repr-Digest"] = WANT_REPR_DIGEST
            extra["Want-Digest"] = WANT_DIGEST
        if ranged:
            last = "" if length is None else str(offset + length - 1)
            extra["Range"] = f"bytes={offset}-{last}"
            if info.etag and not _is_weak(info.etag):
                extra["If-Range"] = info.etag
            elif info.last_modified:
                extra["If-Range"] = info.last_modified
        async with self._client.request("GET", t.http_url, t.display,
                                        expect=(200, 206), headers=extra) as resp:
            skip = self._check_response(resp, info, offset, length, ranged)
            if whole:
                self.response_checksums = _header_checksums(resp)
            _read_larger(resp, self._piece_bytes)
            want = length
            if want is None:
                total = info.size if info.size is not None else _content_total(resp)
                want = None if total is None else total - offset
            async for piece in self._body(resp, skip, want):
                yield piece

    def _check_response(self, resp: aiohttp.ClientResponse, info: SourceInfo,
                        offset: int, length: int | None, ranged: bool) -> int:
        """How many leading body bytes to drop; raises SourceChanged when the bytes moved."""
        t = self.target
        etag = resp.headers.get("ETag")
        if info.etag and etag and etag != info.etag and not (
                _is_weak(etag) or _is_weak(info.etag)):
            raise SourceChanged(f"{t.display} changed: its ETag differs from the one planned")
        if resp.status == 206:
            crange = resp.headers.get("Content-Range", "")
            try:
                span, _, total = crange.removeprefix("bytes ").partition("/")
                start = int(span.split("-")[0])
            except ValueError:
                raise PermanentError(f"GET {t.display}: bad Content-Range in 206") from None
            if start != offset:
                raise PermanentError(f"GET {t.display}: asked bytes from {offset}, got {start}")
            if info.size is not None and total not in ("*", str(info.size)):
                raise SourceChanged(f"{t.display} changed size ({info.size} → {total})")
            return 0
        # 200: the whole file
        clen = resp.headers.get("Content-Length")
        if info.size is not None and clen is not None and int(clen) != info.size:
            raise SourceChanged(f"{t.display} changed size ({info.size} → {clen})")
        if not ranged:
            return 0
        covers = offset == 0 and (length is None or (info.size is not None
                                                     and length >= info.size))
        if covers:
            if _modified_since(resp, info):
                raise SourceChanged(f"{t.display} changed: its Last-Modified differs from the "
                                    "one planned")
            return 0
        if not info.accepts_ranges and _validators_match(resp, info):
            # the server ignores Range altogether: take our slice of the full body
            return offset
        raise SourceChanged(f"{t.display} changed: a ranged GET got the whole file (If-Range)")

    async def _body(self, resp: aiohttp.ClientResponse, skip: int,
                    want: int | None) -> AsyncIterator[bytes]:
        t = self.target
        got = 0
        parts: list[bytes] = []
        pending = 0
        content = resp.content
        while want is None or got < want:
            # readchunk hands over what the socket delivered as it is (no copy);
            # the pieces are then joined once into ≥ MIN_PIECE_BYTES.
            try:
                piece, _ = await content.readchunk()
            except (aiohttp.ClientPayloadError, aiohttp.ClientError, TimeoutError,
                    OSError) as exc:
                raise RetryableError(f"GET {t.display} truncated after {got} bytes: "
                                     f"{_describe(exc)}") from None
            if not piece:
                break
            if skip:
                if len(piece) <= skip:
                    skip -= len(piece)
                    continue
                piece = piece[skip:]
                skip = 0
            if want is not None and got + len(piece) > want:
                piece = piece[: want - got]
            got += len(piece)
            parts.append(piece)
            pending += len(piece)
            if pending >= self._piece_bytes:
                yield parts[0] if len(parts) == 1 else b"".join(parts)
                parts, pending = [], 0
        if parts:
            yield parts[0] if len(parts) == 1 else b"".join(parts)
        if want is not None and got < want:
            raise RetryableError(f"GET {t.display} truncated: got {got} of {want} bytes")

    # -- list

    async def list(self) -> list[Entry] | None:
        t = self.target
        base = t.http_url.with_query(None)
        entries = await self._client.propfind(base, t.display, "1")
        if entries is None:
            return None
        base_path = unquote(base.path)
        me = next((e for e in entries if _same_path(e.path, base_path)), None)
        if me is None or not me.is_collection:
            return None
        root = base_path.rstrip("/") + "/"
        found: list[Entry] = []
        pending = _take(t, entries, root, base_path, found)
        sem = asyncio.Semaphore(LIST_CONCURRENCY)

        async def walk(rel: str) -> list[str]:
            async with sem:
                sub = t.join(rel, collection=True)
                listed = await self._client.propfind(sub.http_url, sub.display, "1")
            return _take(t, listed or [], root, root + rel, found)

        while pending:
            results = await asyncio.gather(*(walk(rel) for rel in pending))
            pending = [rel for batch in results for rel in batch]
        found.sort(key=lambda e: e.relative_path)
        return found

    async def aclose(self) -> None:
        """The session belongs to the caller; nothing of ours to close."""


def _take(target: Target, entries: list[DavProps], root: str, here: str,
      found: list[Entry]) -> list[str]:
    """Add the files among ``entries`` to ``found``; return sub-collections to walk."""
    subdirs = []
    for e in entries:
        if _same_path(e.path, here) or not e.path.startswith(root):
            continue
        rel = e.path[len(root):].strip("/")
        if not rel or ".." in rel.split("/"):
            continue
        if e.is_collection:
            subdirs.append(rel)
            continue
        found.append(Entry(rel, SourceInfo(
            url=target.join(rel).display, size=e.size, etag=e.etag,
            last_modified=e.last_modified, checksums=e.checksums)))
    return subdirs


def _read_larger(resp: aiohttp.ClientResponse, size: int) -> None:
    """Let the connection's transport take up to ``size`` bytes per recv().

    asyncio reads at most 256 KiB per call; when the socket holds more (the
    mover is busy), one bigger read hands over a piece that needs no joining,
    so the bytes are copied once less on the event-loop thread.  Transports
    without the knob (e.g. uvloop's) are left alone.
    """
    conn = resp.connection
    transport = conn.transport if conn is not None else None
    current = getattr(transport, "max_size", None)
    if transport is not None and isinstance(current, int) and current < size:
        transport.max_size = size  # type: ignore[attr-defined]


def _header_checksums(resp: aiohttp.ClientResponse) -> dict[str, str]:
    """The server's digests of the whole file in a response's headers."""
    h = resp.headers
    checksums: dict[str, str] = {}
    for name in ("OC-Checksum", "Digest", "Repr-Digest"):  # later ones win
        for value in h.getall(name, []):
            parser = parse_checksum_list if name == "OC-Checksum" else parse_digest_header
            checksums.update(parser(value))
    return checksums


def _modified_since(resp: aiohttp.ClientResponse, info: SourceInfo) -> bool:
    """Whether the response's Last-Modified is a different time than the planned one."""
    lm = resp.headers.get("Last-Modified")
    if not info.last_modified or not lm or lm == info.last_modified:
        return False
    try:
        a = email.utils.parsedate_to_datetime(lm)
        b = email.utils.parsedate_to_datetime(info.last_modified)
    except (TypeError, ValueError):
        return False  # a format we cannot read proves nothing
    return a != b


def _content_total(resp: aiohttp.ClientResponse) -> int | None:
    if resp.status == 206:
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    clen = resp.headers.get("Content-Length")
    return int(clen) if clen is not None else None


def _validators_match(resp: aiohttp.ClientResponse, info: SourceInfo) -> bool:
    etag, lm = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
    if info.etag and etag:
        return etag == info.etag
    if info.last_modified and lm:
        return lm == info.last_modified
    return info.size is not None and resp.headers.get("Content-Length") == str(info.size)
