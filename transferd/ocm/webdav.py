"""The sending side's read-only WebDAV export: ``/ocm/webdav/<share-id>/...``.

Each sent share exports one local folder (or file).  A request is authorized
only by that share's secret, or by a token our ``tokenEndPoint`` exchanged for
it (the only way in when the share requires an exchange).  PROPFIND answers
depth 0, 1 and infinity with size, ETag, Last-Modified and ``oc:checksums``
(adler32); GET and HEAD serve ranges, ``If-Range`` and ETag through aiohttp's
file response.  Paths never leave the exported folder: ``..`` (also
percent-encoded) is refused before the filesystem is touched, and the resolved
path must stay below the resolved root, so a symlink cannot lead out either.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import zlib
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote, unquote
from xml.sax.saxutils import escape

from aiohttp import web

from transferd.ocm.registry import Registry

__all__ = ["ExportHandler", "adler32_of"]

PREFIX = "/ocm/webdav"
READ_BYTES = 4 << 20
MAX_LISTED = 100_000


def adler32_of(path: Path) -> str:
    value = 1
    with path.open("rb") as fh:
        while block := fh.read(READ_BYTES):
            value = zlib.adler32(block, value)
    return f"{value:08x}"


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def _plain(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers=headers)


class ExportHandler:
    """aiohttp handler for every method under the export prefix."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._sums: dict[tuple[str, int, int], str] = {}

    async def _authorize(self, request: web.Request, share_id: str) -> Path | web.Response:
        sent = await self.registry.get_sent(share_id)
        if sent is None or sent.state in ("revoked", "declined"):
            return _plain(404, "no such share")
        if sent.expires_at is not None and sent.expires_at < time.time():
            return _plain(404, "the share has expired")
        auth = request.headers.get("Authorization", "")
        scheme, _, credential = auth.partition(" ")
        credential = credential.strip()
        allowed = False
        if scheme.lower() == "bearer" and credential:
            token_share = await self.registry.token_share(credential)
            if token_share is not None:
                allowed = secrets.compare_digest(token_share, share_id)
            elif not sent.must_exchange:
                allowed = await self.registry.sent_secret_matches(share_id, credential)
        if not allowed:
            return _plain(401, "this share needs its secret or an exchanged token",
                          {"WWW-Authenticate": 'Bearer realm="ocm"'})
        return Path(sent.path)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        share_id = request.match_info["share_id"]
        raw_rest = request.raw_path.split("?", 1)[0][len(PREFIX) + 1 + len(share_id):]
        decoded = unquote(raw_rest)
        parts = [p for p in decoded.split("/") if p]
        if any(p in (".", "..") or "\x00" in p or "\\" in p for p in parts):
            return _plain(400, "path segments '.' and '..' are not allowed")
        root_or_error = await self._authorize(request, share_id)
        if isinstance(root_or_error, web.Response):
            return root_or_error
        root = root_or_error
        if request.method == "OPTIONS":
            return web.Response(headers={"DAV": "1", "Allow": "OPTIONS, GET, HEAD, PROPFIND"})
        try:
            real_root = root.resolve(strict=True)
            target = real_root.joinpath(*parts).resolve(strict=True)
        except (OSError, RuntimeError):
            return _plain(404, "not found")
        if target != real_root and not target.is_relative_to(
            real_root if real_root.is_dir() else real_root.parent
        ):
            return _plain(403, "outside the shared folder")
        if real_root.is_file() and parts:
            return _plain(404, "not found")
        base_href = f"{PREFIX}/{share_id}"
        href = base_href + "".join("/" + quote(p) for p in parts)
        if request.method in ("GET", "HEAD"):
            if target.is_dir():
                return _plain(405, "a folder cannot be downloaded; use PROPFIND",
                              {"Allow": "OPTIONS, PROPFIND"})
            return web.FileResponse(target, headers={"Accept-Ranges": "bytes"})
        if request.method == "PROPFIND":
            depth = request.headers.get("Depth", "infinity").strip().lower()
            if depth not in ("0", "1", "infinity"):
                return _plain(400, "Depth must be 0, 1 or infinity")
            body = await asyncio.to_thread(self._multistatus, target, href, depth)
            return web.Response(status=207, body=body,
                                content_type="application/xml", charset="utf-8")
        return _plain(405, "read-only export", {"Allow": "OPTIONS, GET, HEAD, PROPFIND"})

    def _checksum(self, path: Path, st: os.stat_result) -> str:
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._sums:
            if len(self._sums) > 100_000:
                self._sums.clear()
            self._sums[key] = adler32_of(path)
        return self._sums[key]

    def _entry(self, path: Path, href: str) -> str:
        st = path.stat()
        modified = formatdate(st.st_mtime, usegmt=True)
        if path.is_dir():
            props = ("<d:resourcetype><d:collection/></d:resourcetype>"
                     f"<d:getlastmodified>{modified}</d:getlastmodified>")
            href = href if href.endswith("/") else href + "/"
        else:
            props = (
                "<d:resourcetype/>"
                f"<d:getcontentlength>{st.st_size}</d:getcontentlength>"
                f"<d:getetag>{escape(_etag(st))}</d:getetag>"
                f"<d:getlastmodified>{modified}</d:getlastmodified>"
                f"<oc:checksums><oc:checksum>ADLER32:{self._checksum(path, st)}</oc:checksum>"
                "</oc:checksums>"
            )
        return (f"<d:response><d:href>{escape(href)}</d:href><d:propstat><d:prop>{props}"
                "</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>")

    def _multistatus(self, target: Path, href: str, depth: str) -> bytes:
        out = [self._entry(target, href)]
        if target.is_dir() and depth != "0":
            stack = [(target, href.rstrip("/"))]
            while stack and len(out) < MAX_LISTED:
                folder, folder_href = stack.pop()
                for child in sorted(folder.iterdir()):
                    if child.is_symlink() and not child.resolve().is_relative_to(target):
                        continue  # a link out of the export is not listed
                    child_href = f"{folder_href}/{quote(child.name)}"
                    out.append(self._entry(child, child_href))
                    if depth == "infinity" and child.is_dir():
                        stack.append((child, child_href))
        return ('<?xml version="1.0" encoding="utf-8"?>'
                '<d:multistatus xmlns:d="DAV:" xmlns:oc="http://owncloud.org/ns">'
                + "".join(out) + "</d:multistatus>").encode()
