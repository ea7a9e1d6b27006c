"""The dav(s):// / http(s):// destination: write beside the final name, verify, then MOVE.

Three ways in, chosen by ``prepare()`` from what the server offers:

    "nc"   Nextcloud chunking v2: MKCOL /remote.php/dav/uploads/<user>/<id>, PUT numbered
           chunks in any order (random_access), MOVE <id>/.file to the .part name.
    "tus"  TUS 1.0.0 (OPTIONS says Tus-Resumable + creation): POST creation in the parent
           folder naming the .part file, PATCH in order; after a failure HEAD gives the
           offset to go on from (``resume_offset``).  The engine keeps the upload URL
           in the manifest store (``upload_url``/``upload_key``), so a redelivery or a
           re-run in another process goes on with the same upload.
    "put"  one streamed PUT of the whole file to the .part name.

In every mode the bytes first land at ``<name>.<tag>.part`` (``tag`` derived from the
resume key, so a retry finds its own upload), ``read_back`` GETs them for the
whole-file checksum, and ``commit`` MOVEs them to the final name (Overwrite per the
flag). A partial or unverified file never appears under the final name.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Literal

import aiohttp
from yarl import URL

from transferd.errors import NotFound, PermanentError, RetryableError, TransferError
from workers.stream.base import HeaderProvider, SourceInfo, no_headers
from workers.stream.http import READ_PIECE_BYTES, HttpClient, HttpSource, Target

__all__ = ["DavSink"]

log = logging.getLogger(__name__)

UploadMode = Literal["put", "nc", "tus"]
_NC_FILES = re.compile(r"^(?P<prefix>.*)/remote\.php/dav/files/(?P<user>[^/]+)/(?P<rest>.+)$")
TUS_VERSION = "1.0.0"
_OK = (200, 201, 204)
DELETE_LOCKED_ATTEMPTS = 30
# upload URLs of TUS sessions opened by this process, by (final URL, tag, upload_key):
# lets a retry in the same worker resume; across processes the engine keeps the URL in
# the manifest store (base.ResumableUpload), or pass ``tus_upload_url``
_TUS_SESSIONS: dict[tuple[str, str, str | None], str] = {}


def _parent(target: Target) -> Target | None:
    """The collection holding ``target`` (trailing slash), None at the root."""
    path = target.http_url.path.rstrip("/")
    if not path:
        return None
    parent_path = path.rsplit("/", 1)[0] + "/"
    url = target.http_url.with_path(parent_path, encoded=False).with_query(None)
    shown = target.display.rstrip("/").rsplit("/", 1)[0] + "/"
    return Target(url, shown, target.basic, target.is_dav)


def _sibling(target: Target, name: str) -> Target:
    parent = _parent(target)
    assert parent is not None
    return parent.join(name)


class DavSink:
    """Writes one file to a WebDAV server (see the module docstring for the modes)."""

    def __init__(self, url: str, session: aiohttp.ClientSession,
                 headers: HeaderProvider = no_headers, overwrite: bool = False, *,
                 chunked_uploads: bool = True, tus_upload_url: str | None = None,
                 connect_timeout_s: float = 30.0, read_timeout_s: float = 120.0) -> None:
        self.target = Target.parse(url)
        if self.target.http_url.path.endswith("/"):
            raise PermanentError(f"{self.target.display}: a destination file name is needed")
        self.url = self.target.display
        self.overwrite = overwrite
        self.random_access = False  # final once prepare() returned
        self.mode: UploadMode = "put"
        # TUS: bytes the server already holds after prepare(); see write_stream(offset=)
        self.resume_offset = 0
        # TUS: the upload's URL; keep it with the resume key to resume in another process
        # (pass it back as ``tus_upload_url`` with the same resume key)
        self.upload_url: str | None = tus_upload_url
        # names the bytes being uploaded (see base.ResumableUpload): a session opened
        # in this process under another key is not resumed
        self.upload_key: str | None = None
        self._chunked_uploads = chunked_uploads
        self._client = HttpClient(session, headers, self.target.basic,
                                  connect_timeout_s=connect_timeout_s,
                                  read_timeout_s=read_timeout_s)
        self._name = self.target.http_url.name
        self._size: int | None = None
        self._tag = ""
        self._part = self.target
        self._nc_upload: Target | None = None
        self._assembled = False
        # True when prepare() found the chunk folder of an earlier attempt with the same
        # resume key (see base.Sink): only then may the engine skip chunks it lists as done
        self.resumed = False

    # -- Sink protocol

    async def exists(self) -> bool:
        t = self.target
        async with self._client.request("HEAD", t.http_url, t.display,
                                        expect=(200, 404, 410, 405, 501)) as resp:
            status = resp.status
        if status in (200, 404, 410):
            return status == 200
        try:
            return bool(await self._client.propfind(t.http_url, t.display, "0"))
        except NotFound:
            return False

    async def prepare(self, size: int | None, resume_key: str | None) -> None:
        self._size = size
        self._tag = (hashlib.sha256(resume_key.encode()).hexdigest()[:12] if resume_key
                     else uuid.uuid4().hex[:12])
        self._part = _sibling(self.target, f"{self._name}.{self._tag}.part")
        parent = _parent(self.target)
        if parent is not None:
            await self._ensure_collection(parent)
        self.mode, self.random_access, self.resume_offset = "put", False, 0
        self.resumed = False
        if not self._chunked_uploads or size is None:
            self.upload_url = None
        elif await self._open_nc_upload():
            self.mode, self.random_access, self.upload_url = "nc", True, None
        elif await self._open_tus_upload(size):
            self.mode = "tus"
        else:
            self.upload_url = None

    async def write_chunk(self, index: int, offset: int, data: AsyncIterator[bytes]) -> None:
        if self._nc_upload is None:
            raise PermanentError(f"{self.url}: chunks need a chunked upload (mode {self.mode})")
        chunk = self._nc_upload.join(f"{index + 1:05d}")
        extra = {"Destination": str(self._part.http_url)}
        if self._size is not None:
            extra["OC-Total-Length"] = str(self._size)
        await self._send("PUT", chunk, data, extra, size=None)

    async def write_stream(self, data: AsyncIterator[bytes], *, offset: int = 0) -> None:
        """Write the file in order; ``data`` starts at byte ``offset`` of the file.

        An engine that knows ``resume_offset`` passes it and feeds only the missing
        bytes; one that does not feeds from 0 and the sink drops what the server has.
        """
        if offset and (self.mode != "tus" or offset > self.resume_offset):
            raise PermanentError(f"{self.url}: cannot start writing at byte {offset}")
        if self.mode == "nc":
            await self.write_chunk(0, 0, data)
        elif self.mode == "tus":
            await self._tus_patch(data, self.resume_offset - offset)
        else:
            extra = {"Content-Type": "application/octet-stream"}
            await self._send("PUT", self._part, data, extra, size=self._size)

    async def read_back(self) -> AsyncIterator[bytes]:
        if self.mode == "nc" and not self._assembled and self.resumed:
            # the engine checks reused chunks before the missing ones are written:
            # read the chunks in place, assembling now would end the upload
            async for piece in self._nc_read_chunks():
                yield piece
            return
        if self.mode == "nc" and not self._assembled:
            await self._nc_assemble()
        src = HttpSource.for_target(self._part, self._client, READ_PIECE_BYTES)
        src.ask_digests = False  # our own upload: its bytes are what we hash
        async for piece in src.read(SourceInfo(url=self._part.display, size=self._size), 0,
                                    None):
            yield piece

    async def commit(self) -> None:
        if self.mode == "nc" and not self._assembled:
            await self._nc_assemble()
        t, part = self.target, self._part
        move = {"Destination": str(t.http_url), "Overwrite": "T" if self.overwrite else "F"}
        async with self._client.request("MOVE", part.http_url, part.display,
                                        expect=(*_OK, 412), headers=move,
                                        redirects=False) as resp:
            if resp.status == 412:
                raise PermanentError(f"{t.display} exists and overwrite is off")
        _TUS_SESSIONS.pop(self._session_key, None)

    async def abort(self, *, keep_partial: bool) -> None:
        if keep_partial and self.mode in ("nc", "tus"):
            return
        if self.mode == "nc" and self._nc_upload is not None:
            await self._delete(self._nc_upload)
        if self.mode == "tus" and self.upload_url:
            await self._delete(Target.parse(self.upload_url), {"Tus-Resumable": TUS_VERSION})
            _TUS_SESSIONS.pop(self._session_key, None)
        if self._part is not self.target:
            await self._delete(self._part)

    # -- folders

    async def _ensure_collection(self, coll: Target) -> None:
        """Make ``coll`` and its missing parents; one PROPFIND when it exists."""
        if coll.http_url.path in ("", "/"):
            return
        try:
            entries = await self._client.propfind(coll.http_url, coll.display, "0")
        except NotFound:
            entries = []
        if entries:
            if not entries[0].is_collection:
                raise PermanentError(f"{coll.display} is a file, not a folder")
            return
        if entries is not None:  # 404: make the parents first
            parent = _parent(coll)
            if parent is not None:
                await self._ensure_collection(parent)
        if await self._mkcol(coll) == 409:
            parent = _parent(coll)
            if parent is None:
                raise PermanentError(f"MKCOL {coll.display} answered HTTP 409")
            await self._ensure_collection(parent)
            if await self._mkcol(coll) == 409:
                raise PermanentError(f"MKCOL {coll.display} answered HTTP 409")

    async def _mkcol(self, coll: Target, extra: dict[str, str] | None = None) -> int:
        async with self._client.request("MKCOL", coll.http_url, coll.display,
                                        expect=(201, 405, 409), headers=extra,
                                        redirects=False) as resp:
            return resp.status  # 405: it exists already

    async def _delete(self, target: Target, extra: dict[str, str] | None = None) -> None:
        # 423: the server still holds the file of an upload we just broke off (rclone
        # does until its handler notices); it lets go within moments
        delay_s = 0.02
        try:
            for _ in range(DELETE_LOCKED_ATTEMPTS):
                async with self._client.request(
                        "DELETE", target.http_url, target.display, headers=extra,
                        expect=(*_OK, 404, 405, 410, 423), redirects=False) as resp:
                    if resp.status != 423:
                        return
                await asyncio.sleep(delay_s)
                delay_s = min(2 * delay_s, 0.5)
            log.warning("cleanup failed: %s stayed locked", target.display)
        except TransferError as exc:  # best effort: never hide the failure that led here
            log.warning("cleanup failed: %s", exc.reason)

    # -- sending bodies

    async def _send(self, method: str, target: Target, data: AsyncIterator[bytes],
                    extra: dict[str, str], *, size: int | None, skip: int = 0,
                    expect: tuple[int, ...] = _OK) -> aiohttp.ClientResponse:
        failures: list[BaseException] = []
        headers = dict(extra)
        if size is not None:
            headers["Content-Length"] = str(size)
        body = _guarded(data, failures, skip=skip, size=size, where=target.display)
        try:
            async with self._client.request(method, target.http_url, target.display,
                                            expect=expect, headers=headers, data=body,
                                            redirects=False) as resp:
                return resp
        except TransferError:
            if failures:  # the source failed mid-body: that is the real cause
                raise failures[0] from None
            raise

    # -- Nextcloud chunking v2

    async def _open_nc_upload(self) -> bool:
        m = _NC_FILES.match(self.target.http_url.path)
        if m is None:
            return False
        t = self.target
        uploads = t.http_url.with_path(
            f"{m['prefix']}/remote.php/dav/uploads/{m['user']}/transferd-{self._tag}/",
            encoded=False).with_query(None)
        upload = Target(uploads, str(uploads), t.basic, t.is_dav)
        async with self._client.request(
            "MKCOL", upload.http_url, upload.display, redirects=False,
            expect=(201, 405, 400, 404, 409, 501),
            headers={"Destination": str(self._part.http_url)},
        ) as resp:
            if resp.status not in (201, 405):
                return False
            self.resumed = resp.status == 405  # the folder of an earlier attempt
        self._nc_upload = upload
        return True

    async def _nc_read_chunks(self) -> AsyncIterator[bytes]:
        """The uploaded chunks' bytes in order, up to the first missing chunk."""
        assert self._nc_upload is not None
        up = self._nc_upload
        listed = await self._client.propfind(up.http_url, up.display, "1") or []
        present = {p.path.rstrip("/").rsplit("/", 1)[-1] for p in listed if not p.is_collection}
        number = 1
        while f"{number:05d}" in present:
            chunk = up.join(f"{number:05d}")
            src = HttpSource.for_target(chunk, self._client, READ_PIECE_BYTES)
            async for piece in src.read(SourceInfo(url=chunk.display, size=None), 0, None):
                yield piece
            number += 1

    async def _nc_assemble(self) -> None:
        assert self._nc_upload is not None
        done = self._nc_upload.join(".file")
        extra = {"Destination": str(self._part.http_url), "Overwrite": "T"}
        if self._size is not None:
            extra["OC-Total-Length"] = str(self._size)
        async with self._client.request("MOVE", done.http_url, done.display, expect=_OK,
                                        headers=extra, redirects=False):
            pass
        self._assembled = True

    # -- TUS

    async def _open_tus_upload(self, size: int) -> bool:
        parent = _parent(self.target)
        if parent is None:
            return False
        tus = {"Tus-Resumable": TUS_VERSION}
        known = self.upload_url or _TUS_SESSIONS.get(self._session_key)
        if known:
            offset = await self._tus_offset(known, size)
            if offset is not None:
                self.upload_url, self.resume_offset = known, offset
                return True
        async with self._client.request("OPTIONS", parent.http_url, parent.display,
                                        expect=(200, 204, 400, 401, 403, 404, 405, 501),
                                        headers=tus) as resp:
            offered = resp.status in (200, 204) and "Tus-Resumable" in resp.headers
            extensions = resp.headers.get("Tus-Extension", "").replace(" ", "").split(",")
        if not offered or "creation" not in extensions:
            return False
        name_b64 = base64.b64encode(self._part.http_url.name.encode()).decode()
        create = {**tus, "Upload-Length": str(size), "Upload-Metadata": f"filename {name_b64}"}
        async with self._client.request("POST", parent.http_url, parent.display,
                                        expect=(201,), headers=create, data=b"",
                                        redirects=False) as resp:
            location = resp.headers.get("Location")
        if not location:
            raise PermanentError(f"TUS creation at {parent.display} gave no Location")
        self.upload_url = str(parent.http_url.join(URL(location)))
        self.resume_offset = 0
        _TUS_SESSIONS[self._session_key] = self.upload_url
        return True

    @property
    def _session_key(self) -> tuple[str, str, str | None]:
        return (self.url, self._tag, self.upload_key)

    async def _tus_offset(self, upload_url: str, size: int) -> int | None:
        """The server's offset for an existing upload, None when it is gone or differs."""
        up = Target.parse(upload_url)
        async with self._client.request("HEAD", up.http_url, up.display,
                                        expect=(200, 204, 404, 410),
                                        headers={"Tus-Resumable": TUS_VERSION}) as resp:
            if resp.status in (404, 410):
                return None
            offset, length = resp.headers.get("Upload-Offset"), resp.headers.get("Upload-Length")
        if offset is None or not offset.isdigit() or (length is not None and int(length) != size):
            return None
        return int(offset)

    async def _tus_patch(self, data: AsyncIterator[bytes], skip: int) -> None:
        assert self.upload_url is not None and self._size is not None
        up = Target.parse(self.upload_url)
        extra = {"Tus-Resumable": TUS_VERSION, "Upload-Offset": str(self.resume_offset),
                 "Content-Type": "application/offset+octet-stream"}
        remaining = self._size - self.resume_offset
        try:
            resp = await self._send("PATCH", up, data, extra, size=remaining,
                                    skip=skip, expect=(204, 409))
        except (RetryableError, PermanentError):
            self.resume_offset = await self._tus_offset(self.upload_url, self._size) or 0
            raise
        if resp.status == 409:
            self.resume_offset = await self._tus_offset(self.upload_url, self._size) or 0
            raise RetryableError(f"TUS offset of {up.display} moved; resume from "
                                 f"{self.resume_offset}")
        self.resume_offset = self._size


async def _guarded(data: AsyncIterator[bytes], failures: list[BaseException], *,
                   skip: int, size: int | None, where: str) -> AsyncIterator[bytes]:
    """``data`` as a request body: drops ``skip`` leading bytes, checks the length, and
    records the source's own exception (the HTTP client would only say "connection lost")."""
    sent = 0
    try:
        async for piece in data:
            if skip:
                if len(piece) <= skip:
                    skip -= len(piece)
                    continue
                piece = piece[skip:]
                skip = 0
            sent += len(piece)
            if size is not None and sent > size:
                raise PermanentError(f"upload to {where}: the source gave more than {size} bytes")
            yield piece
        if size is not None and sent != size:
            raise RetryableError(f"upload to {where}: the source ended at {sent} of {size} bytes")
    except Exception as exc:
        failures.append(exc)
        raise
