"""A transferd node: API + scheduler (+ in-process workers, + embedded Redis).

``transferd serve`` with no Redis URL starts a private redis-server under the
state directory and runs worker threads in this process: one command gives a
working node.  With ``--redis-url`` it joins a shared Redis; ``--workers 0``
makes an API/scheduler-only node while ``transferd worker`` processes on other
machines move the data.

The policy (``policies/default.toml`` overlaid with ``--policy FILE``) is held by
a :class:`PolicyHolder`; SIGHUP re-reads the file.  A bad file on reload is
logged and the policy in force stays; nothing running is interrupted, because
every reader (scheduler round, API, workers via ``td:policy``) asks for the
current policy each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from policies.policy import Policy, PolicyError, load_policy
from transferd import redis_conn
from transferd.api import setup_api
from transferd.auth import Authenticator
from transferd.config import NodeConfig
from transferd.dashboard import setup_dashboard
from transferd.embedded import EmbeddedRedis
from transferd.fts3 import setup_fts3
from transferd.links import LinkBook, publish_policy
from transferd.ocm import note_listen_url, setup_ocm
from transferd.scheduler import Scheduler
from transferd.store import JobStore
from workers.broker import make_broker
from workers.runner import WorkerPool

log = logging.getLogger(__name__)

SCHEDULER: web.AppKey[Scheduler] = web.AppKey("scheduler", Scheduler)


class PolicyHolder:
    """The policy in force and the file it came from; :meth:`reload` re-reads it."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = path
        self.policy: Policy = load_policy(path)  # PolicyError at start-up names the key

    def __call__(self) -> Policy:
        return self.policy

    def reload(self) -> Policy:
        """Re-read the file; on a PolicyError the old policy stays and the error propagates."""
        self.policy = load_policy(self.path)
        return self.policy


POLICY: web.AppKey[PolicyHolder] = web.AppKey("policy", PolicyHolder)


def build_app(
    config: NodeConfig, redis_url: str, policy: PolicyHolder | None = None
) -> web.Application:
    """The aiohttp application with the API, the scheduler and (optionally) workers."""
    app = web.Application(client_max_size=256 * 1024 * 1024)
    holder = policy or PolicyHolder()
    app[POLICY] = holder
    client = redis_conn.connect(redis_url)
    store = JobStore(client, routing_rules=lambda: holder().routing)
    auth = Authenticator(client, config)
    book = LinkBook(client, holder, config.link_limit, namespace=store.ns)
    setup_api(app, store, auth, config, policy=holder, links=book)
    setup_fts3(app, store, auth, config)
    ocm_ctx = setup_ocm(app, config, client, store)
    setup_dashboard(app, store, auth, config, links=book)

    async def scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
        broker = make_broker(redis_url)
        await publish_policy(client, holder(), store.ns)
        scheduler = Scheduler(store, client, broker, link_limit=config.link_limit, policy=holder)
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


async def reload_policy(app: web.Application) -> None:
    """SIGHUP: re-read the policy file and publish it; a bad file keeps the old policy."""
    holder = app[POLICY]
    try:
        policy = holder.reload()
    except PolicyError as exc:
        log.error("policy not reloaded, the one in force stays: %s", exc)
        print(f"policy not reloaded: {exc}", flush=True)
        return
    client = redis_conn.connect(app[REDIS_URL])
    try:
        await publish_policy(client, policy)
    finally:
        await client.aclose()
    log.info("policy reloaded from %s", policy.source)
    print(f"policy reloaded from {policy.source}", flush=True)


REDIS_URL: web.AppKey[str] = web.AppKey("redis_url", str)


async def serve(config: NodeConfig, policy: PolicyHolder | None = None) -> None:
    """Run a node until SIGTERM/SIGINT; prints the URL it listens on once ready."""
    embedded: EmbeddedRedis | None = None
    redis_url = config.redis_url
    if redis_url is None:
        embedded = EmbeddedRedis(config.state_dir)
        await asyncio.to_thread(embedded.start)
        redis_url = embedded.url
    try:
        app = build_app(config, redis_url, policy)
        app[REDIS_URL] = redis_url
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
        reloads: set[asyncio.Task[None]] = set()

        def on_hup() -> None:
            task = asyncio.ensure_future(reload_policy(app))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        await stop.wait()
        log.info("shutting down")
        await runner.cleanup()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
