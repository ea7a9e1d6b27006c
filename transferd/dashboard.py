"""The operator dashboard: static page at ``/``, live events and read-only aggregates.

Routes:

- ``GET /`` and ``GET /static/{file}``: the single-page dashboard (plain
  HTML/CSS/JS shipped in ``transferd/static``; no build step, no third-party
  code).  The page holds no data until the user signs in with a token.
- ``GET /api/v1/summary``: tiles, throughput for the last hour, live jobs,
  active files, failures grouped by class and reason, and (operators only)
  queues per link and per backend.  Tenant-filtered like the jobs API.
- ``GET /api/v1/events``: server-sent events.  ``job`` and ``file`` events
  carry the event stream's id, so a client reconnecting with
  ``Last-Event-ID`` misses nothing still in the stream; ``progress`` events
  (no id) carry the caller's live jobs once a second while any are live; a
  comment line every ``KEEPALIVE_S`` keeps proxies from closing an idle
  stream.  The browser's ``EventSource`` cannot send an Authorization header,
  so the page reads the stream with ``fetch`` (the token never goes in a URL).

Also mounts ``/metrics`` (``transferd.metrics``) and runs the ``Sampler`` that
keeps the throughput history.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from transferd.api import API_PREFIX, PRINCIPAL_KEY
from transferd.auth import Authenticator
from transferd.config import NodeConfig
from transferd.links import LinkBook
from transferd.metrics import setup_metrics
from transferd.models import Principal
from transferd.overview import Overview, Sampler
from transferd.problem import Problem
from transferd.store import JobStore

__all__ = ["OVERVIEW_KEY", "STATIC_DIR", "setup_dashboard"]

STATIC_DIR = Path(__file__).parent / "static"
KEEPALIVE_S = 15.0
PROGRESS_INTERVAL_S = 1.0
EVENT_BLOCK_MS = 1000
_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'")

OVERVIEW_KEY = web.AppKey("transferd.overview", Overview)
_AUTH_KEY = web.AppKey("transferd.dashboard.auth", Authenticator)
_DASH_STORE_KEY = web.AppKey("transferd.dashboard.store", JobStore)
_STOPPING_KEY = web.AppKey("transferd.dashboard.stopping", asyncio.Event)


def setup_dashboard(
    app: web.Application, store: JobStore, auth: Authenticator, config: NodeConfig,
    links: LinkBook | None = None,
) -> None:
    """Mount the dashboard, its API routes and ``/metrics`` on ``app``; start the sampler."""
    overview = Overview(store.redis, link_limit=config.link_limit, namespace=store.ns,
                        targets=links.targets if links is not None else None)
    app[OVERVIEW_KEY] = overview
    app[_AUTH_KEY] = auth
    app[_DASH_STORE_KEY] = store
    app[_STOPPING_KEY] = asyncio.Event()
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get(f"{API_PREFIX}/summary", summary)
    app.router.add_get(f"{API_PREFIX}/events", events)
    setup_metrics(app, overview)

    async def on_shutdown(app: web.Application) -> None:
        # open event streams end within a second instead of holding up the shutdown
        app[_STOPPING_KEY].set()

    async def sampler_ctx(app: web.Application) -> AsyncIterator[None]:
        sampler = Sampler(store.redis, overview, namespace=store.ns)
        task = asyncio.create_task(sampler.run(), name="dashboard-sampler")
        yield
        app[_STOPPING_KEY].set()
        await sampler.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.on_shutdown.append(on_shutdown)
    app.cleanup_ctx.append(sampler_ctx)


async def _principal(request: web.Request) -> Principal:
    principal = await request.app[_AUTH_KEY].authenticate(request)
    request[PRINCIPAL_KEY] = principal
    return principal


# -- static ---------------------------------------------------------------------------------

_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript",
          ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}


def _static_response(path: Path) -> web.StreamResponse:
    return web.FileResponse(path, headers={
        "Content-Type": _TYPES.get(path.suffix, "application/octet-stream") + (
            "; charset=utf-8" if path.suffix in (".html", ".css", ".js", ".svg") else ""),
        "Content-Security-Policy": _CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    })


async def index(request: web.Request) -> web.StreamResponse:
    return _static_response(STATIC_DIR / "index.html")


async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = STATIC_DIR / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise web.HTTPNotFound()
    return _static_response(path)


# -- aggregates ------------------------------------------------------------------------------


async def summary(request: web.Request) -> web.Response:
    principal = await _principal(request)
    for key in request.query:
        raise Problem(400, f"{key}: unknown query parameter", kind="invalid-request")
    body = await request.app[OVERVIEW_KEY].summary(principal)
    return web.json_response(body, headers={"Cache-Control": "no-store"})


# -- server-sent events -----------------------------------------------------------------------


def _sse(event: str, data: Any, event_id: str | None = None) -> bytes:
    lines = [f"id: {event_id}"] if event_id else []
    lines += [f"event: {event}", f"data: {json.dumps(data, separators=(',', ':'))}"]
    return ("\n".join(lines) + "\n\n").encode()


async def _start_id(request: web.Request, store: JobStore) -> str:
    resume = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if resume:
        if not _EVENT_ID.match(resume):
            raise Problem(400, "Last-Event-ID: not an id this stream sent",
                          kind="invalid-request")
        return resume
    # "$" would only hold for one XREAD; pin the stream's current end instead
    newest = await store.redis.xrevrange(store.events_key, count=1)
    if not newest:
        return "0-0"
    entry_id = newest[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def events(request: web.Request) -> web.StreamResponse:
    principal = await _principal(request)
    for key in request.query:
        if key != "last_event_id":
            raise Problem(400, f"{key}: unknown query parameter", kind="invalid-request")
    store = request.app[_DASH_STORE_KEY]
    overview = request.app[OVERVIEW_KEY]
    stopping = request.app[_STOPPING_KEY]
    last_id = await _start_id(request, store)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",
    })
    await response.prepare(request)
    try:
        # the hello carries the stream position as its id: a client that loses the
        # connection before any event resumes from here, not from whatever is newest then
        await response.write(b"retry: 2000\n\n" + _sse("hello", {
            "tenant": principal.tenant, "role": principal.role.value,
            "all_tenants": principal.sees_all_tenants, "last_event_id": last_id,
        }, last_id))
        last_write = last_progress = time.monotonic()
        had_live = True
        while not stopping.is_set():
            entries = await store.events(last_id, count=500, block_ms=EVENT_BLOCK_MS)
            out = bytearray()
            for entry_id, fields in entries:
                last_id = entry_id
                job_id = fields.get("job_id", "")
                owner = await overview.owner_of(job_id)
                if owner is None or not (principal.sees_all_tenants or owner == principal.tenant):
                    continue
                data: dict[str, Any] = {
                    k: fields[k] for k in ("type", "id", "job_id", "state", "error_class")
                    if k in fields
                }
                data["ts"] = float(fields.get("ts") or 0)
                out += _sse(fields.get("type", "event"), data, entry_id)
            now = time.monotonic()
            if now - last_progress >= PROGRESS_INTERVAL_S:
                last_progress = now
                live = await overview.live_jobs(principal)
                if live or had_live:
                    out += _sse("progress", {"jobs": [j.progress_json() for j in live[:200]],
                                             "ts": time.time()})
                had_live = bool(live)
            if not out and now - last_write >= KEEPALIVE_S:
                out += b": keepalive\n\n"
            if out:
                await response.write(bytes(out))
                last_write = now
    except ConnectionError:
        # the browser went away: nothing to report
        return response
    return response
