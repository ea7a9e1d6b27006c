"""Open Cloud Mesh for transferd: receive datatx shares as jobs, and send them.

``setup_ocm`` mounts the protocol routes (``/.well-known/ocm``, ``/ocm/...``,
the WebDAV export) and the REST routes, and returns the cleanup context that
starts and stops the service's background work.  Modules:

    discovery   our discovery document; finding remote providers (cached)
    directory   the trusted directory (CS3 ProviderInfo list or OCM Directory Service)
    signatures  RFC 9421 (ed25519) signing/verifying, draft-cavage rsa-sha256 verifying
    shares      reading an incoming share (both datatx shapes), pure
    exchange    token exchange and the workers' per-job credentials hook
    registry    OCM records in Redis
    service     received shares → jobs, accept/decline/unshare, completion notices
    outgoing    sending shares, revoking, our token endpoint, invites
    webdav      the read-only export of sent shares
    server      protocol routes;  api  REST routes;  cs3  TxInfo view;  cli  commands
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from aiohttp import web
from redis.asyncio import Redis

from transferd.config import NodeConfig
from transferd.store import JobStore

__all__ = ["note_listen_url", "setup_ocm"]

CleanupCtx = Callable[[web.Application], AbstractAsyncContextManager[None]]


def setup_ocm(
    app: web.Application, config: NodeConfig, redis: Redis, store: JobStore
) -> Callable[[web.Application], AsyncIterator[None]] | None:
    """Mount OCM when ``[ocm]`` is configured; returns its cleanup ctx (None when off)."""
    if config.ocm is None:
        return None
    from transferd.ocm.api import add_api_routes
    from transferd.ocm.server import add_routes
    from transferd.ocm.service import OcmService

    svc = OcmService(config, config.ocm, redis, store)
    add_routes(app, svc)
    add_api_routes(app)

    async def ocm_ctx(app: web.Application) -> AsyncIterator[None]:
        await svc.start()
        yield
        await svc.close()

    return ocm_ctx


def note_listen_url(app: web.Application, url: str) -> None:
    """Tell the OCM service the URL the node listens on (used when no public_url is set)."""
    from transferd.ocm.server import OCM_KEY

    if OCM_KEY in app:
        app[OCM_KEY].listen_url = url
