"""The OCM protocol routes peers call: discovery, shares, notifications, invites, tokens.

Errors take the spec's shape ``{message, validationErrors: [{name, message}]}``.
Order of checks for a share: body (400) → kind (501) → sender trusted (403) →
signature (401; required by ``must-use-http-sig``) → recipient (400) → job.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from transferd.ocm import outgoing
from transferd.ocm.discovery import discovery_document, host_of, split_address
from transferd.ocm.service import OcmError, OcmService
from transferd.ocm.shares import ShareInvalid, ShareUnsupported, parse_share
from transferd.ocm.webdav import PREFIX, ExportHandler

__all__ = ["OCM_KEY", "add_routes"]

log = logging.getLogger(__name__)
OCM_KEY = web.AppKey("transferd.ocm", OcmService)
MAX_OCM_BODY = 1 << 20
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(exc: OcmError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status, headers=exc.headers)


def _guard(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except OcmError as exc:
            log.info("%s %s refused: %d %s", request.method, request.path, exc.status,
                     exc.message)
            return _error(exc)

    return wrapped


async def _body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_OCM_BODY:
        raise OcmError(413, "the body is too large")
    raw = await request.content.read(MAX_OCM_BODY + 1)
    if len(raw) > MAX_OCM_BODY:
        raise OcmError(413, "the body is too large")
    return raw


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise OcmError(400, "the body is not JSON", [("body", "not JSON")]) from None


def _headers(request: web.Request) -> dict[str, list[str]]:
    return {k.lower(): request.headers.getall(k) for k in set(request.headers.keys())}


async def well_known(request: web.Request) -> web.Response:
    svc = request.app[OCM_KEY]
    doc = discovery_document(svc.base_url, svc.ocm.provider, svc.ocm.criteria,
                             public_key_pem=svc.public_key_pem())
    return web.json_response(doc)


async def jwks(request: web.Request) -> web.Response:
    return web.json_response(request.app[OCM_KEY].jwks())


async def post_share(request: web.Request) -> web.Response:
    svc = request.app[OCM_KEY]
    raw = await _body(request)
    try:
        share = parse_share(_json(raw))
    except ShareInvalid as exc:
        raise OcmError(400, "invalid share", exc.errors) from None
    except ShareUnsupported as exc:
        raise OcmError(501, str(exc)) from None
    if not svc.trusted.is_trusted(share.sender_host):
        raise OcmError(403, f"{share.sender_host} is not in the trusted directory")
    verified = await svc.verify(request.method, request.raw_path, _headers(request), raw,
                                share.sender_host)
    answer = await svc.receive(share, verified)
    return web.json_response(answer, status=201)


async def post_notification(request: web.Request) -> web.Response:
    svc = request.app[OCM_KEY]
    raw = await _body(request)
    body = _json(raw)
    if not isinstance(body, dict):
        raise OcmError(400, "expected a JSON object", [("body", "not an object")])
    kind, provider_id = body.get("notificationType"), body.get("providerId")
    errors = [(n, "required") for n, v in (("notificationType", kind), ("providerId", provider_id))
              if not isinstance(v, str) or not v]
    if errors:
        raise OcmError(400, "invalid notification", errors)
    assert isinstance(kind, str) and isinstance(provider_id, str)
    verified = await svc.verify(request.method, request.raw_path, _headers(request), raw, None)
    detail = body.get("notification") if isinstance(body.get("notification"), dict) else {}
    secret = detail.get("sharedSecret") if isinstance(detail, dict) else None
    # A notification about a share we sent (the recipient accepted, declined, finished)
    sent = await svc.registry.get_sent(provider_id)
    if sent is not None and kind != "SHARE_UNSHARED":
        _, to_host = split_address(sent.to)
        proven = verified.host == to_host or (
            isinstance(secret, str) and await svc.registry.sent_secret_matches(sent.id, secret)
        )
        if not proven:
            raise OcmError(403, "the notification is not signed by the share's recipient")
        await svc.registry.note_notification(sent.id, {"type": kind, "from": verified.host,
                                                       "detail": detail})
        state = {"SHARE_ACCEPTED": "accepted", "SHARE_DECLINED": "declined",
                 "TRANSFER_COMPLETED": "completed"}.get(kind)
        if state:
            await svc.registry.set_sent_state(sent.id, state)
        return web.json_response({}, status=201)
    # A notification about a share we received
    record = None
    if verified.host is not None:
        share_id = await svc.registry.share_for_remote(verified.host, provider_id)
        record = await svc.registry.get_share(share_id) if share_id else None
    if record is None and verified.host is None:
        raise OcmError(403, "unsigned notifications are not accepted for received shares")
    if record is None:
        raise OcmError(400, f"no share {provider_id!r} from this provider",
                       [("providerId", "unknown share")])
    if kind == "SHARE_UNSHARED":
        await svc.unshared(record)
    else:
        raise OcmError(501, f"{kind} is not handled by a transfer service")
    return web.json_response({}, status=201)


async def post_invite_accepted(request: web.Request) -> web.Response:
    svc = request.app[OCM_KEY]
    raw = await _body(request)
    body = _json(raw)
    if not isinstance(body, dict):
        raise OcmError(400, "expected a JSON object", [("body", "not an object")])
    errors = [(n, "required") for n in ("recipientProvider", "token", "userID")
              if not isinstance(body.get(n), str) or not body.get(n)]
    if errors:
        raise OcmError(400, "invalid invite acceptance", errors)
    provider = host_of("https://" + body["recipientProvider"].split("://")[-1])
    if not svc.trusted.is_trusted(provider):
        raise OcmError(403, f"{provider} is not in the trusted directory")
    verified = await svc.verify(request.method, request.raw_path, _headers(request), raw,
                                provider)
    if verified.host not in (None, provider):
        raise OcmError(403, "signed by another provider than recipientProvider")
    invite = await svc.registry.get_invite(body["token"])
    if invite is None:
        raise OcmError(400, "unknown or expired invite token", [("token", "invalid")])
    if not await svc.registry.mark_invite(body["token"], f"{body['userID']}@{provider}"):
        raise OcmError(409, "the invite was already accepted")
    await svc.registry.add_contact(invite["tenant"], {
        "userID": body["userID"], "provider": provider,
        "name": str(body.get("name") or body["userID"]), "email": str(body.get("email") or ""),
    })
    return web.json_response({"userID": invite["user"], "email": "", "name": invite["user"]})


async def post_token(request: web.Request) -> web.Response:
    svc = request.app[OCM_KEY]
    raw = await _body(request)
    if request.content_type == "application/json":
        body = _json(raw)
        fields = body if isinstance(body, dict) else {}
    else:
        from urllib.parse import parse_qs

        fields = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
    try:
        answer = await outgoing.grant_token(svc, str(fields.get("grant_type", "")),
                                            str(fields.get("code", "")))
    except OcmError as exc:
        return web.json_response({"error": exc.message}, status=exc.status)
    return web.json_response(answer, headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application, svc: OcmService) -> None:
    app[OCM_KEY] = svc
    app.router.add_get("/.well-known/ocm", well_known)
    app.router.add_get("/ocm-provider", well_known)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_post("/ocm/shares", _guard(post_share))
    app.router.add_post("/ocm/notifications", _guard(post_notification))
    app.router.add_post("/ocm/invite-accepted", _guard(post_invite_accepted))
    app.router.add_post("/ocm/token", post_token)
    export = ExportHandler(svc.registry)
    for method in ("GET", "HEAD", "PROPFIND", "OPTIONS"):
        app.router.add_route(method, PREFIX + "/{share_id}", export.handle)
        app.router.add_route(method, PREFIX + "/{share_id}/{path:.*}", export.handle)
