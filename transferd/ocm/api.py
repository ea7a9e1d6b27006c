"""REST routes for OCM under ``/api/v1`` (bearer auth, problem+json errors).

- ``GET /shares?state=pending`` → ``{"shares": [share]}`` (received shares of the caller's tenant)
- ``POST /shares/{id}/accept|decline`` → the share
- ``GET|POST /ocm/sent``, ``DELETE /ocm/sent/{id}`` → shares we send (revoke: SHARE_UNSHARED)
- ``POST /ocm/invites``, ``POST /ocm/invites/accept``, ``GET /ocm/contacts``
- ``GET /transfers?share_id=``, ``GET /transfers/{id}`` → CS3 ``TxInfo``
A share JSON is ``{id, name, owner, sender, provider, size, state, job_id, created_at, ...}``;
secrets never appear in an answer.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from transferd.api import API_PREFIX, AUTH_KEY, PRINCIPAL_KEY, STORE_KEY
from transferd.models import Principal, Role
from transferd.ocm import outgoing
from transferd.ocm.cs3 import tx_info
from transferd.ocm.registry import SentShare, ShareRecord
from transferd.ocm.server import OCM_KEY
from transferd.ocm.service import OcmError
from transferd.problem import FieldError, Problem

__all__ = ["add_api_routes"]

SHARE_STATES = ("pending", "accepted", "declined", "unshared")


async def _principal(request: web.Request, *, write: bool) -> Principal:
    principal = await request.app[AUTH_KEY].authenticate(request)
    request[PRINCIPAL_KEY] = principal
    if write and principal.role is Role.READER:
        raise Problem(403, "this credential may only read", kind="forbidden")
    return principal


def _problem(exc: OcmError) -> Problem:
    errors = [FieldError(n, m) for n, m in exc.errors]
    return Problem(exc.status, exc.message, kind="ocm", errors=errors)


def _visible(principal: Principal, tenant: str) -> bool:
    return principal.sees_all_tenants or tenant == principal.tenant


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        raise Problem(400, "body: not valid JSON", kind="invalid-request") from None
    if not isinstance(body, dict):
        raise Problem(400, "body: expected a JSON object", kind="invalid-request")
    return body


async def list_shares(request: web.Request) -> web.Response:
    principal = await _principal(request, write=False)
    state = request.query.get("state") or None
    if state is not None and state not in SHARE_STATES:
        raise Problem(400, f"state: expected one of {', '.join(SHARE_STATES)}",
                      kind="invalid-request", errors=[FieldError("state", "unknown state")])
    records = await request.app[OCM_KEY].registry.list_shares()
    shares = [r.to_json() for r in records
              if _visible(principal, r.tenant) and (state is None or r.state == state)]
    return web.json_response({"shares": shares})


async def _share(request: web.Request, principal: Principal) -> ShareRecord:
    share_id = request.match_info["share_id"]
    record = await request.app[OCM_KEY].registry.get_share(share_id)
    if record is None or not _visible(principal, record.tenant):
        raise Problem(404, f"no share {share_id!r}", kind="not-found")
    return record


async def accept_share(request: web.Request) -> web.Response:
    principal = await _principal(request, write=True)
    record = await _share(request, principal)
    try:
        record = await request.app[OCM_KEY].accept(record)
    except OcmError as exc:
        raise _problem(exc) from None
    return web.json_response(record.to_json())


async def decline_share(request: web.Request) -> web.Response:
    principal = await _principal(request, write=True)
    record = await _share(request, principal)
    try:
        record = await request.app[OCM_KEY].decline(record)
    except OcmError as exc:
        raise _problem(exc) from None
    return web.json_response(record.to_json())


async def send_share(request: web.Request) -> web.Response:
    principal = await _principal(request, write=True)
    body = await _json_body(request)
    to, path, expires_s = body.get("to"), body.get("path"), body.get("expires_s")
    if not isinstance(to, str) or not isinstance(path, str):
        raise Problem(400, "to and path are required strings", kind="invalid-request",
                      errors=[FieldError("to" if not isinstance(to, str) else "path",
                                         "required")])
    if expires_s is not None and (
        isinstance(expires_s, bool) or not isinstance(expires_s, int | float) or expires_s <= 0
    ):
        raise Problem(400, "expires_s: a positive number of seconds", kind="invalid-request",
                      errors=[FieldError("expires_s", "not a positive number")])
    try:
        sent = await outgoing.send_share(request.app[OCM_KEY], principal, to, path,
                                         float(expires_s) if expires_s else None)
    except OcmError as exc:
        raise _problem(exc) from None
    return web.json_response(sent.to_json(), status=201)


async def list_sent(request: web.Request) -> web.Response:
    principal = await _principal(request, write=False)
    sent = await request.app[OCM_KEY].registry.list_sent()
    return web.json_response({"shares": [s.to_json() for s in sent
                                         if _visible(principal, s.tenant)]})


async def _sent(request: web.Request, principal: Principal) -> SentShare:
    share_id = request.match_info["share_id"]
    sent = await request.app[OCM_KEY].registry.get_sent(share_id)
    if sent is None or not _visible(principal, sent.tenant):
        raise Problem(404, f"no sent share {share_id!r}", kind="not-found")
    return sent


async def get_sent(request: web.Request) -> web.Response:
    principal = await _principal(request, write=False)
    return web.json_response((await _sent(request, principal)).to_json())


async def revoke_sent(request: web.Request) -> web.Response:
    principal = await _principal(request, write=True)
    sent = await _sent(request, principal)
    revoked = await outgoing.revoke_share(request.app[OCM_KEY], sent)
    return web.json_response(revoked.to_json())


async def create_invite(request: web.Request) -> web.Response:
    principal = await _principal(request, write=True)
    answer = await outgoing.create_invite(request.app[OCM_KEY], principal)
    return web.json_response(answer, status=201)


async def accept_invite(request: web.Request) -> web.Response:
    principal = await _principal(request, write=True)
    body = await _json_body(request)
    invite = body.get("invite")
    if not isinstance(invite, str) or not invite:
        raise Problem(400, "invite: required", kind="invalid-request",
                      errors=[FieldError("invite", "required")])
    try:
        contact = await outgoing.accept_invite(request.app[OCM_KEY], principal, invite)
    except OcmError as exc:
        raise _problem(exc) from None
    return web.json_response(contact)


async def contacts(request: web.Request) -> web.Response:
    principal = await _principal(request, write=False)
    found = await request.app[OCM_KEY].registry.contacts(principal.tenant)
    return web.json_response({"contacts": found})


async def get_transfer(request: web.Request) -> web.Response:
    principal = await _principal(request, write=False)
    tx_id = request.match_info["tx_id"]
    job = await request.app[STORE_KEY].get_job(tx_id)
    if job is None or not _visible(principal, job.owner):
        raise Problem(404, f"no transfer {tx_id!r}", kind="not-found")
    record = await request.app[OCM_KEY].registry.get_share(tx_id)
    return web.json_response(tx_info(job, record.id if record else None,
                                     record.share_with if record else None))


async def list_transfers(request: web.Request) -> web.Response:
    principal = await _principal(request, write=False)
    share_id = request.query.get("share_id") or None
    registry, store = request.app[OCM_KEY].registry, request.app[STORE_KEY]
    records = await registry.list_shares()
    out = []
    for record in records:
        if share_id is not None and record.id != share_id:
            continue
        job = await store.get_job(record.job_id)
        if job is not None and _visible(principal, job.owner):
            out.append(tx_info(job, record.id, record.share_with))
    return web.json_response({"transfers": out})


def add_api_routes(app: web.Application) -> None:
    p = API_PREFIX
    app.router.add_get(f"{p}/shares", list_shares)
    app.router.add_post(f"{p}/shares/{{share_id}}/accept", accept_share)
    app.router.add_post(f"{p}/shares/{{share_id}}/decline", decline_share)
    app.router.add_get(f"{p}/ocm/sent", list_sent)
    app.router.add_post(f"{p}/ocm/sent", send_share)
    app.router.add_get(f"{p}/ocm/sent/{{share_id}}", get_sent)
    app.router.add_delete(f"{p}/ocm/sent/{{share_id}}", revoke_sent)
    app.router.add_post(f"{p}/ocm/invites", create_invite)
    app.router.add_post(f"{p}/ocm/invites/accept", accept_invite)
    app.router.add_get(f"{p}/ocm/contacts", contacts)
    app.router.add_get(f"{p}/transfers", list_transfers)
    app.router.add_get(f"{p}/transfers/{{tx_id}}", get_transfer)
