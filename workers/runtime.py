"""One event loop per worker process, shared by all of dramatiq's worker threads.

dramatiq runs actors in threads; our movers are asyncio.  Rather than start a
loop, an HTTP session and a Redis client per message (costly for 10,000 small
files), each process keeps one loop in a thread with one keep-alive
``aiohttp.ClientSession`` and one Redis client, and actors hand it coroutines.
The runtime also knows every file it is moving, so SIGTERM can release them.

It follows the policy the node publishes in Redis (``td:policy``, re-read every
``POLICY_REFRESH_S``): the retry classes, the chunking settings and the
per-link bandwidth caps.  A cap is cluster-wide: each worker process announces
itself in ``td:workers:live`` and enforces ``cap / live worker processes``
with one token bucket per link shared by all its files.

Apart from that, each process says it is up every ``PRESENCE_INTERVAL_S``,
busy or idle, in ``td:workers:seen`` (``/metrics`` lists the workers from it).
It is a key of its own because a process announced there while idle must not
take a share of a bandwidth cap it is not using.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import aiohttp
import redis.asyncio

from policies.chunking import ChunkPolicy, LinkStats
from policies.policy import Policy, PolicyError, policy_from_json
from transferd import redis_conn
from transferd.models import JobParams
from transferd.store import JobStore
from workers.stream.http import new_session
from workers.stream.limiter import TokenBucket

log = logging.getLogger(__name__)
T = TypeVar("T")
PARAMS_CACHE_SIZE = 1000
POLICY_REFRESH_S = 2.0
LIVE_WORKERS_KEY = "td:workers:live"
LIVE_WINDOW_S = 15.0  # a worker process not seen for this long no longer shares a cap
PRESENCE_KEY = "td:workers:seen"  # worker id -> unix seconds of its last presence beat
PRESENCE_INTERVAL_S = 5.0
PRESENCE_WINDOW_S = 15.0  # three missed beats: the process is gone


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
        # an explicit chunk policy (`transferd worker --chunk-size/--streams`) wins over
        # the per-link tuning of policies.chunking.tune
        self.chunk_policy_fixed = chunk_policy is not None
        self.chunk_policy = chunk_policy or ChunkPolicy()
        self.policy = Policy()
        self._policy_at = -POLICY_REFRESH_S
        self._live_workers = 1
        self.limiters: dict[str, TokenBucket] = {}
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="transferd-worker-loop", daemon=True)
        self._ready = threading.Event()
        self.redis: redis.asyncio.Redis | None = None
        self.session: aiohttp.ClientSession | None = None
        self.store: JobStore | None = None
        self._presence: asyncio.Task[None] | None = None
        # file_id -> (cancel event, stop reason holder)
        self.running: dict[str, tuple[asyncio.Event, list[str]]] = {}
        self.accepting = True
        self._params: OrderedDict[str, JobParams] = OrderedDict()
        # run on the loop at close, newest first: backends' helpers (an rclone rcd child)
        self.closers: list[Callable[[], Awaitable[None]]] = []
        self._shared: dict[str, Any] = {}
        self._shared_locks: dict[str, asyncio.Lock] = {}

    async def shared(self, name: str, open_: Callable[[], Awaitable[T]],
                     close: Callable[[T], Awaitable[None]] | None = None) -> T:
        """The process's one ``name`` (a backend's client or helper process): opened by
        the first file that needs it while the others wait, closed with the runtime."""
        async with self._shared_locks.setdefault(name, asyncio.Lock()):
            if name not in self._shared:
                value = await open_()
                self._shared[name] = value
                if close is not None:
                    async def _close() -> None:
                        self._shared.pop(name, None)
                        await close(value)

                    self.closers.append(_close)
            found: T = self._shared[name]
            return found

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

    async def current_policy(self) -> Policy:
        """The node's published policy, re-read at most every POLICY_REFRESH_S; also
        renews this process's place among the live workers."""
        now = time.monotonic()
        if now - self._policy_at < POLICY_REFRESH_S:
            return self.policy
        self._policy_at = now
        assert self.redis is not None
        wall = time.time()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zadd(LIVE_WORKERS_KEY, {self.worker_id: wall})
                pipe.zremrangebyscore(LIVE_WORKERS_KEY, "-inf", wall - LIVE_WINDOW_S)
                pipe.zcard(LIVE_WORKERS_KEY)
                pipe.get("td:policy")
                _, _, live, raw = await pipe.execute()
            self._live_workers = max(1, int(live))
            if raw:
                self.policy = policy_from_json(json.loads(raw))
        except (PolicyError, ValueError):
            log.warning("the published policy is unreadable; keeping %s", self.policy.source)
        except Exception:  # Redis blip: keep the last policy
            log.warning("could not refresh the policy", exc_info=True)
        return self.policy

    async def limiter_for(self, link: str) -> TokenBucket | None:
        """The link's shared token bucket, or None when the link has no bandwidth cap."""
        policy = await self.current_policy()
        cap = policy.limits.bandwidth_bps(link)
        if cap is None:
            self.limiters.pop(link, None)
            return None
        rate = cap / self._live_workers
        bucket = self.limiters.get(link)
        if bucket is None:
            bucket = self.limiters[link] = TokenBucket(rate)
        bucket.set_rate(rate)
        return bucket

    async def link_stats(self, link: str) -> LinkStats:
        """What the optimizer last recorded of ``link`` (transferd/links.py)."""
        assert self.redis is not None
        ema, target, rtt = await self.redis.hmget(f"td:opt:{link}", ["ema_bps", "target", "rtt_s"])
        return LinkStats(
            throughput_bps=float(ema) if ema else None,
            rtt_s=float(rtt) if rtt else None,
            active=int(target) if target else 0,
        )

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._open())
        self._ready.set()
        self.loop.run_forever()

    async def _open(self) -> None:
        self.redis = redis_conn.connect(self.redis_url)
        self.session = new_session()
        self.store = JobStore(self.redis)
        self._presence = self.loop.create_task(self._announce_presence())

    async def _announce_presence(self) -> None:
        """Mark this process up every PRESENCE_INTERVAL_S, and drop the long-silent ones."""
        assert self.redis is not None
        while True:
            wall = time.time()
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.zadd(PRESENCE_KEY, {self.worker_id: wall})
                    pipe.zremrangebyscore(PRESENCE_KEY, "-inf", wall - PRESENCE_WINDOW_S)
                    await pipe.execute()
            except Exception:  # Redis blip: the next beat tries again
                log.warning("could not announce this worker's presence", exc_info=True)
            await asyncio.sleep(PRESENCE_INTERVAL_S)

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
            for closer in reversed(self.closers):
                try:
                    await closer()
                except Exception:  # one helper failing to stop must not keep the rest open
                    log.warning("closing a backend helper failed", exc_info=True)
            if self._presence is not None:
                self._presence.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._presence
            if self.session is not None:
                await self.session.close()
            if self.redis is not None:
                with contextlib.suppress(Exception):  # gone from /metrics now, not in 15 s
                    await self.redis.zrem(PRESENCE_KEY, self.worker_id)
                await self.redis.aclose()

        if self._thread.is_alive():
            try:
                self.submit(_close()).result(timeout_s)
            except Exception:  # closing is best effort at shutdown
                log.debug("closing worker runtime", exc_info=True)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout_s)
