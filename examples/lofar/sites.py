"""The archive sites (SURF, FZJ) as HTTP servers on loopback, and a faulty link to one.

Each site is an aiohttp static file server (ranged GET, ETag, Last-Modified)
on 127.0.0.1 at an ephemeral port, run on one background event loop.  With
faults on, a small TCP proxy of this example's own sits in front of a site and
resets some connections part-way through a response, as a flaky WAN path does.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

__all__ = ["ArchiveSite", "FaultyLink", "ServerLoop"]

T = TypeVar("T")
_PIECE_BYTES = 1 << 16


class ServerLoop:
    """An asyncio loop in a daemon thread that the servers run on."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="sites", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


class ArchiveSite:
    """One archive site serving ``root`` over HTTP; ``url`` is its base URL."""

    def __init__(self, name: str, root: Path, loop: ServerLoop) -> None:
        self.name = name
        self.root = root
        self._loop = loop
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        async def _start() -> int:
            app = web.Application()
            app.router.add_static("/", self.root)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port: int = self._runner.addresses[0][1]
            return port

        self.port = self._loop.run(_start())

    def stop(self) -> None:
        if self._runner is not None:
            self._loop.run(self._runner.cleanup())
            self._runner = None


@dataclass
class LinkStats:
    connections: int = 0
    resets: int = 0
    bytes_to_client: int = 0


class FaultyLink:
    """A TCP proxy to ``upstream_port`` that resets connections now and then, mid-response.

    Along each connection (kept-alive ones carry many responses) a checkpoint
    falls every ``min_bytes``..``max_bytes`` response bytes; at each one the
    connection is reset (RST, no FIN) with ``reset_probability``.  The link's
    first checkpoint always resets, so every faulty run shows a recovery.
    """

    def __init__(self, upstream_port: int, loop: ServerLoop, *, reset_probability: float = 0.3,
                 min_bytes: int = 1 << 20, max_bytes: int = 8 << 20, seed: int = 19) -> None:
        self.upstream_port = upstream_port
        self.reset_probability = reset_probability
        self.min_bytes = min_bytes
        self.max_bytes = max_bytes
        self.stats = LinkStats()
        self._loop = loop
        self._random = random.Random(seed)
        self._checkpoints = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
            for writer in list(self._writers):
                writer.transport.abort()
            if self._server is not None:
                await self._server.wait_closed()
            self._server = None

        self._loop.run(_stop())

    def _next_checkpoint(self, after: int) -> int:
        return after + self._random.randint(self.min_bytes, self.max_bytes)

    def _fires(self) -> bool:
        self._checkpoints += 1
        return self._checkpoints == 1 or self._random.random() < self.reset_probability

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            self._reset(cwriter)
            return
        self._writers.update((cwriter, uwriter))

        async def up() -> None:
            while data := await creader.read(_PIECE_BYTES):
                uwriter.write(data)
                await uwriter.drain()
            if uwriter.can_write_eof():
                uwriter.write_eof()

        async def down() -> None:
            sent = 0
            checkpoint = self._next_checkpoint(0)
            while data := await ureader.read(_PIECE_BYTES):
                while sent + len(data) >= checkpoint:
                    if self._fires():
                        cwriter.write(data[: checkpoint - sent])
                        await cwriter.drain()
                        self.stats.bytes_to_client += checkpoint - sent
                        self.stats.resets += 1
                        raise ConnectionResetError("fault injected")
                    checkpoint = self._next_checkpoint(checkpoint)
                cwriter.write(data)
                await cwriter.drain()
                sent += len(data)
                self.stats.bytes_to_client += len(data)
            if cwriter.can_write_eof():
                cwriter.write_eof()

        tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            if any(not t.cancelled() and t.exception() for t in done):
                self._reset(cwriter)
                uwriter.transport.abort()
            else:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for writer in (cwriter, uwriter):
                writer.transport.close()
                self._writers.discard(writer)
