"""A transferd node: API + scheduler (+ in-process workers, + embedded Redis).

``transferd serve`` with no Redis URL starts a private redis-server under the
state directory and runs worker threads in this process: one command gives a
working node.  With ``--redis-url`` it joins a shared Redis; ``--workers 0``
makes an API/scheduler-only node while ``transferd worker`` processes on other
machines move the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

import redis.asyncio
from aiohttp import web

from transferd.api import setup_api
from transferd.auth import Authenticator
from transferd.config import NodeConfig
from transferd.dashboard import setup_dashboard
from transferd.embedded import EmbeddedRedis
from transferd.ocm import note_listen_url, setup_ocm
from transferd.scheduler import Scheduler
from transferd.store import JobStore
from workers.broker import make_broker
from workers.runner import WorkerPool

log = logging.getLogger(__name__)

SCHEDULER: web.AppKey[Scheduler] = web.AppKey("scheduler", Scheduler)


def build_app(config: NodeConfig, redis_url: str) -> web.Application:
    """The aiohttp application with the API, the scheduler and (optionally) workers."""
    app = web.Application(client_max_size=256 * 1024 * 1024)
    client = redis.asyncio.Redis.from_url(redis_url)
    store = JobStore(client)
    auth = Authenticator(client, config)
    setup_api(app, store, auth, config)
    ocm_ctx = setup_ocm(app, config, client, store)
    setup_dashboard(app, store, auth, config)

    async def scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
        broker = make_broker(redis_url)
        scheduler = Scheduler(store, client, broker, link_limit=config.link_limit)
        app[SCHEDULER] = scheduler
        task = asyncio.create_task(scheduler.run(), name="scheduler")
        yield
        await scheduler.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        broker.close()

    async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
        pool = None
        if config.workers > 0:
            pool = WorkerPool(redis_url, config.workers)
            await asyncio.to_thread(pool.start)
        yield
        if pool is not None:
            await asyncio.to_thread(pool.stop)

    async def close_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await auth.close()
        await client.aclose()

    app.cleanup_ctx.extend([close_ctx, scheduler_ctx, workers_ctx])
    if ocm_ctx is not None:
        app.cleanup_ctx.append(ocm_ctx)
    return app


async def serve(config: NodeConfig) -> None:
    """Run a node until SIGTERM/SIGINT; prints the URL it listens on once ready."""
    embedded: EmbeddedRedis | None = None
    redis_url = config.redis_url
    if redis_url is None:
        embedded = EmbeddedRedis(config.state_dir)
        await asyncio.to_thread(embedded.start)
        redis_url = embedded.url
    try:
        app = build_app(config, redis_url)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        note_listen_url(app, f"http://{config.host}:{port}")
        print(f"transferd listening on http://{config.host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
        await runner.cleanup()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
