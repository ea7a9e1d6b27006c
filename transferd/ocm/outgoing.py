"""The sending side: share a local folder with a remote user, revoke it, grant tokens, invites.

``send_share`` exports the path read-only under ``/ocm/webdav/<share-id>/``
(see ``transferd.ocm.webdav``) and posts a datatx share of the current shape
(``protocol.webdav`` with ``accessTypes: ["datatx"]``) to the recipient's
discovered endpoint.  Only the SHA-256 of the share's secret is kept.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from transferd.models import Principal
from transferd.ocm.discovery import DiscoveryError, split_address
from transferd.ocm.registry import SentShare
from transferd.ocm.service import OcmError, OcmService

__all__ = [
    "accept_invite",
    "create_invite",
    "decode_invite",
    "grant_token",
    "revoke_share",
    "send_share",
]


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                total += (Path(folder) / name).stat().st_size
            except OSError:
                continue
    return total


def _inside(path: Path, roots: list[Path]) -> bool:
    real = path.resolve()
    return any(real == r.resolve() or real.is_relative_to(r.resolve()) for r in roots)


async def _remote(svc: OcmService, host: str) -> Any:
    if not svc.trusted.is_trusted(host):
        raise OcmError(403, f"{host} is not in the trusted directory")
    try:
        return await svc.discovery.provider(host)
    except DiscoveryError as exc:
        raise OcmError(502, str(exc)) from None


async def send_share(
    svc: OcmService, principal: Principal, to: str, path: str, expires_s: float | None
) -> SentShare:
    """Export ``path`` and share it with ``to`` (user@provider)."""
    try:
        _, host = split_address(to)
    except ValueError as exc:
        raise OcmError(400, str(exc), [("to", "expected user@provider")]) from None
    local = Path(path)
    if not local.is_absolute() or ".." in local.parts:
        raise OcmError(400, "path: an absolute path without '..'", [("path", "not absolute")])
    if not _inside(local, svc.config.roots_for(principal.tenant)):
        raise OcmError(403, "path: outside the directories this tenant may share",
                       [("path", "not allowed")])
    if not local.exists():
        raise OcmError(400, "path: does not exist", [("path", "does not exist")])
    remote = await _remote(svc, host)
    share_id = str(uuid.uuid4())
    secret = secrets.token_urlsafe(32)
    now = time.time()
    expires_at = now + expires_s if expires_s else None
    must_exchange = "must-exchange-token" in svc.ocm.criteria
    is_dir = local.is_dir()
    me = f"{svc.user_for_tenant(principal.tenant)}@{svc.host}"
    sent = SentShare(
        id=share_id, tenant=principal.tenant, path=str(local.resolve()), to=to,
        name=local.name, remote_endpoint=remote.endpoint, created_at=now,
        expires_at=expires_at, state="sent", must_exchange=must_exchange, notifications=[],
    )
    await svc.registry.add_sent(sent, secret)
    webdav: dict[str, Any] = {
        "uri": f"{svc.base_url}/ocm/webdav/{share_id}" + ("/" if is_dir else ""),
        "sharedSecret": secret,
        "permissions": ["read"],
        "accessTypes": ["datatx"],
        "size": await asyncio.to_thread(_tree_size, local),
    }
    if must_exchange:
        webdav["requirements"] = ["must-exchange-token"]
    body: dict[str, Any] = {
        "shareWith": to, "name": local.name, "providerId": share_id, "owner": me,
        "sender": me, "ownerDisplayName": me, "senderDisplayName": me,
        "shareType": "user", "resourceType": "folder" if is_dir else "file",
        "description": "", "protocol": {"name": "multi", "webdav": webdav},
    }
    if expires_at is not None:
        body["expiration"] = int(expires_at)
    try:
        status, answer = await svc.post_signed(f"{remote.endpoint}/shares", body)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        await svc.registry.delete_sent(share_id)
        raise OcmError(502, f"{host} did not take the share: {type(exc).__name__}") from None
    if status not in (200, 201):
        await svc.registry.delete_sent(share_id)
        why = answer.get("message") if isinstance(answer, dict) else None
        raise OcmError(502, f"{host} refused the share ({status}): {why or 'no reason given'}")
    fresh = await svc.registry.get_sent(share_id)
    assert fresh is not None
    return fresh


async def revoke_share(svc: OcmService, sent: SentShare) -> SentShare:
    """Stop exporting and tell the recipient (SHARE_UNSHARED)."""
    if sent.state != "revoked":
        await svc.registry.set_sent_state(sent.id, "revoked")
        kind = "folder" if Path(sent.path).is_dir() else "file"
        await svc.notify(sent.remote_endpoint, "SHARE_UNSHARED", kind, sent.id)
    fresh = await svc.registry.get_sent(sent.id)
    assert fresh is not None
    return fresh


async def grant_token(svc: OcmService, grant_type: str, code: str) -> dict[str, Any]:
    """Our tokenEndPoint: exchange a sent share's secret for a short-lived token."""
    if grant_type not in ("authorization_code", "ocm_authorization_code"):
        raise OcmError(400, "unsupported_grant_type")
    share_id = await svc.registry.sent_for_secret(code) if code else None
    sent = await svc.registry.get_sent(share_id) if share_id else None
    if sent is None or sent.state == "revoked" or (
        sent.expires_at is not None and sent.expires_at < time.time()
    ):
        raise OcmError(400, "invalid_grant")
    token = await svc.registry.issue_token(sent.id, svc.ocm.token_ttl_s)
    return {"access_token": token, "token_type": "Bearer",
            "expires_in": int(svc.ocm.token_ttl_s)}


# -- invites -----------------------------------------------------------------------------


async def create_invite(svc: OcmService, principal: Principal) -> dict[str, str]:
    user = svc.user_for_tenant(principal.tenant)
    token = await svc.registry.create_invite(principal.tenant, user)
    invite = base64.b64encode(f"{token}@{svc.host}".encode()).decode()
    return {"invite": invite, "token": token, "provider": svc.host, "user": user}


def decode_invite(invite: str) -> tuple[str, str]:
    """(token, provider host) from an invite string base64(token@provider)."""
    try:
        text = base64.b64decode(invite.strip(), validate=True).decode()
        return split_address(text)
    except (ValueError, UnicodeDecodeError):
        raise OcmError(400, "not an invite string", [("invite", "expected base64(token@provider)")]
                       ) from None


async def accept_invite(svc: OcmService, principal: Principal, invite: str) -> dict[str, str]:
    """Tell the inviter we accept; the inviter becomes one of our contacts."""
    token, host = decode_invite(invite)
    remote = await _remote(svc, host)
    user = svc.user_for_tenant(principal.tenant)
    body = {"recipientProvider": svc.host, "token": token, "userID": user,
            "email": "", "name": user}
    try:
        status, answer = await svc.post_signed(f"{remote.endpoint}/invite-accepted", body)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise OcmError(502, f"{host} unreachable: {type(exc).__name__}") from None
    if status != 200 or not isinstance(answer, dict) or not answer.get("userID"):
        why = answer.get("message") if isinstance(answer, dict) else None
        raise OcmError(409 if status == 409 else 502,
                       f"{host} refused the invite ({status}): {why or 'no reason given'}")
    contact = {"userID": str(answer["userID"]), "provider": host,
               "name": str(answer.get("name") or answer["userID"]),
               "email": str(answer.get("email") or "")}
    await svc.registry.add_contact(principal.tenant, contact)
    return contact
