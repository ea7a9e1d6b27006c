"""aiohttp peers for behaviour the stock servers do not show, each in its own thread and loop.

``http_server`` -> HttpPeer, files kept in memory (``peer.files[name] = bytes``):
    /f/NAME          honours Range and If-Range (strong ETag from the content), HEAD,
                     Repr-Digest / Digest when asked with Want-Repr-Digest / Want-Digest
    /norange/NAME    ignores Range (always 200, no Accept-Ranges)
    /truncate/NAME   announces the full length, sends half of it, closes
    /auth/NAME       like /f/ but needs ``Authorization: Bearer <peer.token>``
    /status/CODE     answers CODE (``?retry_after=`` sets Retry-After)
    Replacing ``peer.files[name]`` changes the ETag and Last-Modified.

``nc_server`` -> NcPeer: a small Nextcloud-style WebDAV tree under
``/remote.php/dav/files/<user>/`` on disk (``peer.root``), with Nextcloud
chunking v2 (``/remote.php/dav/uploads/<user>/<id>``: MKCOL, numbered chunk PUTs,
MOVE ``.file`` with Destination + OC-Total-Length) and TUS 1.0.0 (OPTIONS,
POST creation with Upload-Length + Upload-Metadata filename, PATCH, HEAD, DELETE).
``peer.chunking`` / ``peer.tus`` switch each protocol off.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import os
import shutil
import threading
import time
import uuid
import zlib
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit
from xml.sax.saxutils import escape

import pytest
from aiohttp import web

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running in a daemon thread, so servers live apart from the test's loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="peers", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


async def _start_app(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    port: int = server.sockets[0].getsockname()[1]
    return runner, port


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single ``bytes=`` range, None when unsatisfiable."""
    spec = header.removeprefix("bytes=").split(",")[0].strip()
    first, _, last = spec.partition("-")
    if first == "":
        n = int(last)
        return (max(0, size - n), size - 1) if n else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if start <= end else None


# ---------------------------------------------------------------- HttpPeer


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class HttpPeer:
    port: int = 0
    files: dict[str, bytes] = field(default_factory=dict)
    token: str = "secret-token"
    requests: list[Recorded] = field(default_factory=list)
    _mtimes: dict[int, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def etag(self, name: str) -> str:
        return '"' + hashlib.sha1(self.files[name]).hexdigest()[:20] + '"'

    def last_modified(self, name: str) -> str:
        # one timestamp per content, later for newer contents
        key = hash(self.files[name])
        if key not in self._mtimes:
            self._mtimes[key] = time.time() + len(self._mtimes)
        return email.utils.formatdate(self._mtimes[key], usegmt=True)

    def _headers(self, name: str, req: web.Request, ranges: bool) -> dict[str, str]:
        data = self.files[name]
        h = {"ETag": self.etag(name), "Last-Modified": self.last_modified(name)}
        if ranges:
            h["Accept-Ranges"] = "bytes"
        if "Want-Repr-Digest" in req.headers:
            h["Repr-Digest"] = (f"sha-256=:{_b64(hashlib.sha256(data).digest())}:, "
                                f"md5=:{_b64(hashlib.md5(data).digest())}:")
        if "Want-Digest" in req.headers:
            h["Digest"] = (f"MD5={_b64(hashlib.md5(data).digest())}, "
                           f"ADLER32={zlib.adler32(data):08x}")
        return h

    async def handle(self, req: web.Request) -> web.StreamResponse:
        self.requests.append(Recorded(req.method, req.path, dict(req.headers)))
        kind, _, name = req.match_info["tail"].partition("/")
        if kind == "status":
            extra = {}
            if "retry_after" in req.query:
                extra["Retry-After"] = req.query["retry_after"]
            return web.Response(status=int(name), headers=extra)
        if kind == "auth" and req.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
        if name not in self.files:
            return web.Response(status=404)
        data = self.files[name]
        ranges = kind in ("f", "auth", "truncate")
        headers = self._headers(name, req, ranges)
        start, end, status = 0, len(data) - 1, 200
        rng = req.headers.get("Range")
        if ranges and rng:
            if_range = req.headers.get("If-Range")
            if if_range is None or if_range in (headers["ETag"], headers["Last-Modified"]):
                span = _parse_range(rng, len(data))
                if span is None:
                    return web.Response(status=416,
                                        headers={"Content-Range": f"bytes */{len(data)}"})
                start, end = span
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        body = data[start:end + 1]
        if req.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return web.Response(status=status, headers=headers)
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = len(body)
        await resp.prepare(req)
        if kind == "truncate":
            await resp.write(body[: len(body) // 2])
            assert req.transport is not None
            req.transport.close()
            return resp
        view = memoryview(body)
        for i in range(0, len(body), 1 << 20):
            await resp.write(view[i:i + (1 << 20)])
        await resp.write_eof()
        return resp


@pytest.fixture
def http_server(loop_thread: Any) -> Iterator[HttpPeer]:
    peer = HttpPeer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", peer.handle)
    runner, peer.port = loop_thread.run(_start_app(app))
    yield peer
    loop_thread.run(runner.cleanup())


# ---------------------------------------------------------------- NcPeer

DAV_PREFIX = "/remote.php/dav"


@dataclass
class TusUpload:
    path: Path  # where the data collects
    final: Path  # where the completed file goes
    length: int
    offset: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class NcPeer:
    root: Path  # the user's files
    uploads: Path  # chunk folders
    user: str = "alice"
    port: int = 0
    chunking: bool = True
    tus: bool = True
    requests: list[Recorded] = field(default_factory=list)
    tus_uploads: dict[str, TusUpload] = field(default_factory=dict)
    patch_bytes: int = 0  # bytes received by TUS PATCH requests
    chunk_puts: list[str] = field(default_factory=list)  # chunk names PUT, in arrival order

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def files_url(self, rel: str = "") -> str:
        return f"{self.url}{DAV_PREFIX}/files/{self.user}/{quote(rel)}"

    def _fs(self, path: str) -> Path | None:
        """Map a request path to disk (files or uploads); None outside both trees."""
        for tree, base in (("files", self.root), ("uploads", self.uploads)):
            prefix = f"{DAV_PREFIX}/{tree}/{self.user}"
            if path == prefix or path.startswith(prefix + "/"):
                rel = unquote(path[len(prefix):]).strip("/")
                if ".." in rel.split("/"):
                    return None
                return base / rel if rel else base
        return None

    def _propentry(self, href: str, p: Path) -> str:
        st = p.stat()
        if p.is_dir():
            props = "<d:resourcetype><d:collection/></d:resourcetype>"
            href = href.rstrip("/") + "/"
        else:
            props = (f"<d:resourcetype/><d:getcontentlength>{st.st_size}</d:getcontentlength>"
                     f'<d:getetag>"{st.st_mtime_ns:x}-{st.st_size:x}"</d:getetag>')
        props += ("<d:getlastmodified>"
                  f"{email.utils.formatdate(st.st_mtime, usegmt=True)}</d:getlastmodified>")
        return (f"<d:response><d:href>{escape(href)}</d:href><d:propstat><d:prop>{props}"
                "</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>")

    async def handle(self, req: web.Request) -> web.StreamResponse:
        self.requests.append(Recorded(req.method, req.path, dict(req.headers)))
        if req.path.startswith("/tus/"):
            return await self._tus(req, req.path.removeprefix("/tus/"))
        p = self._fs(req.path)
        if p is None:
            return web.Response(status=404)
        in_uploads = req.path.startswith(f"{DAV_PREFIX}/uploads/")
        if in_uploads and not self.chunking:
            return web.Response(status=404)
        m = req.method
        if m == "OPTIONS":
            h = {"DAV": "1, 2", "Allow": "GET, HEAD, PUT, DELETE, MKCOL, MOVE, PROPFIND"}
            if self.tus:
                h.update({"Tus-Resumable": "1.0.0", "Tus-Version": "1.0.0",
                          "Tus-Extension": "creation,termination"})
            return web.Response(status=200, headers=h)
        if m == "POST" and self.tus:
            return await self._tus_create(req, p)
        if m in ("GET", "HEAD"):
            if not p.is_file():
                return web.Response(status=404 if not p.exists() else 200)
            return web.FileResponse(p)
        if m == "PROPFIND":
            if not p.exists():
                return web.Response(status=404)
            depth = req.headers.get("Depth", "1")
            parts = [self._propentry(req.path, p)]
            if p.is_dir() and depth != "0":
                for child in sorted(p.iterdir()):
                    href = req.path.rstrip("/") + "/" + quote(child.name)
                    parts.append(self._propentry(href, child))
            body = ('<?xml version="1.0"?><d:multistatus xmlns:d="DAV:">'
                    + "".join(parts) + "</d:multistatus>")
            return web.Response(status=207, text=body, content_type="application/xml")
        if m == "MKCOL":
            if p.exists():
                return web.Response(status=405)
            if not p.parent.is_dir():
                return web.Response(status=409)
            p.mkdir()
            return web.Response(status=201)
        if m == "PUT":
            if not p.parent.is_dir():
                return web.Response(status=409)
            if in_uploads:
                self.chunk_puts.append(p.name)
            existed = p.exists()
            tmp = p.with_name(p.name + ".upload-" + uuid.uuid4().hex)
            with tmp.open("wb") as f:
                async for block in req.content.iter_any():
                    f.write(block)
            tmp.replace(p)
            return web.Response(status=204 if existed else 201)
        if m == "DELETE":
            if not p.exists():
                return web.Response(status=404)
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            return web.Response(status=204)
        if m == "MOVE":
            return self._move(req, p, in_uploads)
        return web.Response(status=405)

    def _move(self, req: web.Request, p: Path, in_uploads: bool) -> web.Response:
        dest = self._fs(urlsplit(req.headers.get("Destination", "")).path)
        if dest is None:
            return web.Response(status=400)
        if not dest.parent.is_dir():
            return web.Response(status=409)
        existed = dest.exists()
        if existed and req.headers.get("Overwrite", "T") == "F":
            return web.Response(status=412)
        if in_uploads and p.name == ".file":
            chunks = sorted((c for c in p.parent.iterdir() if c.name.isdigit()),
                            key=lambda c: int(c.name))
            total = sum(c.stat().st_size for c in chunks)
            expected = req.headers.get("OC-Total-Length")
            if expected is not None and int(expected) != total:
                return web.Response(status=400, text="OC-Total-Length mismatch")
            tmp = dest.with_name(dest.name + ".assembling")
            with tmp.open("wb") as out:
                for c in chunks:
                    with c.open("rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
            tmp.replace(dest)
            shutil.rmtree(p.parent)
        else:
            if not p.exists():
                return web.Response(status=404)
            os.replace(p, dest)
        return web.Response(status=204 if existed else 201)

    async def _tus_create(self, req: web.Request, folder: Path) -> web.Response:
        if req.headers.get("Tus-Resumable") != "1.0.0" or "Upload-Length" not in req.headers:
            return web.Response(status=400)
        meta = dict(item.strip().split(" ", 1)
                    for item in req.headers.get("Upload-Metadata", "").split(",") if item)
        if "filename" not in meta or not folder.is_dir():
            return web.Response(status=400 if folder.is_dir() else 404)
        name = base64.b64decode(meta["filename"]).decode()
        uid = uuid.uuid4().hex
        data = self.uploads / f"tus-{uid}"
        data.touch()
        self.tus_uploads[uid] = TusUpload(data, folder / name, int(req.headers["Upload-Length"]))
        return web.Response(status=201, headers={"Location": f"{self.url}/tus/{uid}",
                                                 "Tus-Resumable": "1.0.0"})

    async def _tus(self, req: web.Request, uid: str) -> web.Response:
        up = self.tus_uploads.get(uid)
        if up is None:
            return web.Response(status=404)
        tus = {"Tus-Resumable": "1.0.0"}
        if req.method == "HEAD":
            async with up.lock:  # wait for a PATCH still being received
                return web.Response(status=200, headers={
                    **tus, "Upload-Offset": str(up.offset), "Upload-Length": str(up.length),
                    "Cache-Control": "no-store"})
        if req.method == "DELETE":
            async with up.lock:
                del self.tus_uploads[uid]
                up.path.unlink(missing_ok=True)
            return web.Response(status=204, headers=tus)
        if req.method != "PATCH":
            return web.Response(status=405)
        if req.headers.get("Content-Type") != "application/offset+octet-stream":
            return web.Response(status=415)
        async with up.lock:
            if int(req.headers.get("Upload-Offset", "-1")) != up.offset:
                return web.Response(status=409, headers=tus)
            with up.path.open("ab") as f:
                try:
                    async for block in req.content.iter_any():
                        if up.offset + len(block) > up.length:
                            return web.Response(status=400, headers=tus)
                        f.write(block)
                        f.flush()
                        up.offset += len(block)
                        self.patch_bytes += len(block)
                except Exception:
                    return web.Response(status=400, headers=tus)
            offset = up.offset
            if offset == up.length:
                up.final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(up.path, up.final)
        return web.Response(status=204, headers={**tus, "Upload-Offset": str(offset)})


@pytest.fixture
def nc_server(loop_thread: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NcPeer]:
    base = tmp_path_factory.mktemp("nc")
    peer = NcPeer(base / "files", base / "uploads")
    peer.root.mkdir()
    peer.uploads.mkdir()
    app = web.Application(client_max_size=0)
    app.router.add_route("*", "/{tail:.*}", peer.handle)
    runner, peer.port = loop_thread.run(_start_app(app))
    yield peer
    loop_thread.run(runner.cleanup())
