"""One event loop per worker process, shared by all of dramatiq's worker threads.

dramatiq runs actors in threads; our movers are asyncio.  Rather than start a
loop, an HTTP session and a Redis client per message (costly for 10,000 small
files), each process keeps one loop in a thread with one keep-alive
``aiohttp.ClientSession`` and one Redis client, and actors hand it coroutines.
The runtime also knows every file it is moving, so SIGTERM can release them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import uuid
from collections import OrderedDict
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import aiohttp
import redis.asyncio

from policies.chunking import ChunkPolicy
from transferd.models import JobParams
from transferd.store import JobStore
from workers.stream.http import new_session

log = logging.getLogger(__name__)
T = TypeVar("T")
PARAMS_CACHE_SIZE = 1000


class StopReason:
    """Why a running file is being stopped by its worker (not by the file's own state)."""

    RELEASE = "release"  # shutting down: hand the file back, attempt not counted


class WorkerRuntime:
    """Loop thread + shared clients + the registry of files in flight."""

    def __init__(
        self, redis_url: str, *, lease_s: float = 30.0, chunk_policy: ChunkPolicy | None = None
    ) -> None:
        self.redis_url = redis_url
        self.lease_s = lease_s
        self.chunk_policy = chunk_policy or ChunkPolicy()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="transferd-worker-loop", daemon=True)
        self._ready = threading.Event()
        self.redis: redis.asyncio.Redis | None = None
        self.session: aiohttp.ClientSession | None = None
        self.store: JobStore | None = None
        # file_id -> (cancel event, stop reason holder)
        self.running: dict[str, tuple[asyncio.Event, list[str]]] = {}
        self.accepting = True
        self._params: OrderedDict[str, JobParams] = OrderedDict()

    async def job_params(self, job_id: str) -> JobParams | None:
        """A job's params (immutable after submission), cached: a job of 10,000
        small files should not cost 10,000 job reads."""
        if job_id in self._params:
            self._params.move_to_end(job_id)
            return self._params[job_id]
        assert self.store is not None
        job = await self.store.get_job(job_id)
        if job is None:
            return None
        self._params[job_id] = job.params
        while len(self._params) > PARAMS_CACHE_SIZE:
            self._params.popitem(last=False)
        return job.params

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._open())
        self._ready.set()
        self.loop.run_forever()

    async def _open(self) -> None:
        self.redis = redis.asyncio.Redis.from_url(self.redis_url)
        self.session = new_session()
        self.store = JobStore(self.redis)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(30)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it (from a worker thread)."""
        return self.submit(coro).result()

    def release_all(self) -> None:
        """Stop every running file and hand it back to the queue (SIGTERM)."""
        self.accepting = False

        def _stop() -> None:
            for event, reason in self.running.values():
                reason.append(StopReason.RELEASE)
                event.set()

        self.loop.call_soon_threadsafe(_stop)

    def close(self, timeout_s: float = 10.0) -> None:
        async def _close() -> None:
            if self.session is not None:
                await self.session.close()
            if self.redis is not None:
                await self.redis.aclose()

        if self._thread.is_alive():
            try:
                self.submit(_close()).result(timeout_s)
            except Exception:  # closing is best effort at shutdown
                log.debug("closing worker runtime", exc_info=True)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout_s)
