"""OCM records in Redis: received shares, sent shares, issued tokens, invites, contacts.

Keys (namespace ``td``; see docs/contracts.md):
- ``td:ocm:share:{id}`` hash, a received share (``id`` is also its job id)
- ``td:ocm:secret:{id}`` the received share's secret, in clear: a worker on
  another machine must present it; deleted when the share ends
- ``td:ocm:shares`` zset id → created_at; ``td:ocm:share:by-remote:{host}:{providerId}`` → id
- ``td:ocm:watch`` set of accepted share ids whose job is followed to its end
- ``td:ocm:out:{id}`` hash, a sent share: only the SHA-256 of its secret is stored
- ``td:ocm:outs`` zset id → created_at; ``td:ocm:out:by-secret:{sha256}`` → id
- ``td:ocm:xtoken:{sha256}`` → sent share id, with the token's lifetime as TTL
- ``td:ocm:invite:{token}`` hash (tenant, user, created_at, accepted_by), 30 days TTL
- ``td:ocm:contacts:{tenant}`` hash ``user@provider`` → JSON {userID, provider, name, email}
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

__all__ = ["Registry", "SentShare", "ShareRecord", "secret_digest"]

INVITE_TTL_S = 30 * 86_400


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


@dataclass
class ShareRecord:
    """A received share, as shown (never with its secret)."""

    id: str
    name: str
    owner: str
    sender: str
    provider: str  # sender host[:port]
    provider_id: str
    share_with: str
    tenant: str
    size: int | None
    state: str  # pending | accepted | declined | unshared
    job_id: str
    created_at: float
    expiration: float | None
    resource_type: str
    source: str
    remote_endpoint: str
    must_exchange: bool
    completion_sent: bool

    @classmethod
    def from_hash(cls, h: Mapping[str, str]) -> ShareRecord:
        return cls(
            id=h["id"], name=h["name"], owner=h["owner"], sender=h["sender"],
            provider=h["provider"], provider_id=h["provider_id"], share_with=h["share_with"],
            tenant=h["tenant"], size=int(h["size"]) if h.get("size") else None,
            state=h["state"], job_id=h["job_id"], created_at=float(h["created_at"]),
            expiration=float(h["expiration"]) if h.get("expiration") else None,
            resource_type=h["resource_type"], source=h["source"],
            remote_endpoint=h["remote_endpoint"], must_exchange=h.get("must_exchange") == "1",
            completion_sent=h.get("completion_sent") == "1",
        )

    def to_hash(self) -> dict[Any, Any]:
        return {
            "id": self.id, "name": self.name, "owner": self.owner, "sender": self.sender,
            "provider": self.provider, "provider_id": self.provider_id,
            "share_with": self.share_with, "tenant": self.tenant,
            "size": "" if self.size is None else str(self.size), "state": self.state,
            "job_id": self.job_id, "created_at": repr(self.created_at),
            "expiration": "" if self.expiration is None else repr(self.expiration),
            "resource_type": self.resource_type, "source": self.source,
            "remote_endpoint": self.remote_endpoint,
            "must_exchange": "1" if self.must_exchange else "0",
            "completion_sent": "1" if self.completion_sent else "0",
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "owner": self.owner, "sender": self.sender,
            "provider": self.provider, "size": self.size, "state": self.state,
            "job_id": self.job_id, "created_at": self.created_at,
            "share_with": self.share_with, "resource_type": self.resource_type,
            "expiration": self.expiration,
        }


@dataclass
class SentShare:
    """A share we sent: a local folder or file exported read-only over WebDAV."""

    id: str
    tenant: str
    path: str  # absolute local path
    to: str  # user@provider
    name: str
    remote_endpoint: str
    created_at: float
    expires_at: float | None
    state: str  # sent | accepted | declined | completed | revoked
    must_exchange: bool
    notifications: list[dict[str, Any]]
    tokens_issued: int = 0  # exchanged tokens granted for this share so far

    @classmethod
    def from_hash(cls, h: Mapping[str, str]) -> SentShare:
        return cls(
            id=h["id"], tenant=h["tenant"], path=h["path"], to=h["to"], name=h["name"],
            remote_endpoint=h["remote_endpoint"], created_at=float(h["created_at"]),
            expires_at=float(h["expires_at"]) if h.get("expires_at") else None,
            state=h["state"], must_exchange=h.get("must_exchange") == "1",
            notifications=json.loads(h.get("notifications") or "[]"),
            tokens_issued=int(h.get("tokens_issued") or 0),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "tenant": self.tenant, "path": self.path, "to": self.to,
            "name": self.name, "created_at": self.created_at, "expires_at": self.expires_at,
            "state": self.state, "must_exchange": self.must_exchange,
            "notifications": self.notifications, "tokens_issued": self.tokens_issued,
        }


class Registry:
    """Typed access to the OCM keys above."""

    def __init__(self, redis: Redis, namespace: str = "td") -> None:
        self.redis = redis
        self.ns = namespace

    def _k(self, *parts: str) -> str:
        return ":".join((self.ns, "ocm", *parts))

    # -- received shares
    async def share_for_remote(self, host: str, provider_id: str) -> str | None:
        value = await self.redis.get(self._k("share", "by-remote", host, provider_id))
        return _text(value) if value is not None else None

    async def add_share(self, record: ShareRecord, secret: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._k("share", record.id), mapping=record.to_hash())
            pipe.set(self._k("secret", record.id), secret)
            pipe.zadd(self._k("shares"), {record.id: record.created_at})
            pipe.set(self._k("share", "by-remote", record.provider, record.provider_id),
                     record.id)
            await pipe.execute()

    async def set_share_fields(self, share_id: str, **fields: str) -> None:
        mapping: dict[Any, Any] = dict(fields)
        await self.redis.hset(self._k("share", share_id), mapping=mapping)

    async def get_share(self, share_id: str) -> ShareRecord | None:
        raw = await self.redis.hgetall(self._k("share", share_id))
        return ShareRecord.from_hash(_hash(raw)) if raw else None

    async def list_shares(self) -> list[ShareRecord]:
        ids = [_text(i) for i in await self.redis.zrevrange(self._k("shares"), 0, 9999)]
        out = []
        for share_id in ids:
            if (record := await self.get_share(share_id)) is not None:
                out.append(record)
        return out

    async def forget_secret(self, share_id: str) -> None:
        await self.redis.delete(self._k("secret", share_id))

    async def watch(self, share_id: str) -> None:
        await self.redis.sadd(self._k("watch"), share_id)

    async def watched(self) -> list[str]:
        return sorted(_text(m) for m in await self.redis.smembers(self._k("watch")))

    async def unwatch(self, share_id: str) -> bool:
        """True for the one caller that removed it (several nodes may race)."""
        return bool(await self.redis.srem(self._k("watch"), share_id))

    # -- sent shares
    async def add_sent(self, sent: SentShare, secret: str) -> None:
        mapping: dict[Any, Any] = {
            "id": sent.id, "tenant": sent.tenant, "path": sent.path, "to": sent.to,
            "name": sent.name, "remote_endpoint": sent.remote_endpoint,
            "created_at": repr(sent.created_at),
            "expires_at": "" if sent.expires_at is None else repr(sent.expires_at),
            "state": sent.state, "must_exchange": "1" if sent.must_exchange else "0",
            "notifications": "[]", "secret_sha256": secret_digest(secret),
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._k("out", sent.id), mapping=mapping)
            pipe.zadd(self._k("outs"), {sent.id: sent.created_at})
            pipe.set(self._k("out", "by-secret", secret_digest(secret)), sent.id)
            await pipe.execute()

    async def sent_for_secret(self, secret: str) -> str | None:
        value = await self.redis.get(self._k("out", "by-secret", secret_digest(secret)))
        return _text(value) if value is not None else None

    async def get_sent(self, share_id: str) -> SentShare | None:
        raw = await self.redis.hgetall(self._k("out", share_id))
        return SentShare.from_hash(_hash(raw)) if raw else None

    async def sent_secret_matches(self, share_id: str, secret: str) -> bool:
        stored = await self.redis.hget(self._k("out", share_id), "secret_sha256")
        return stored is not None and secrets.compare_digest(
            _text(stored), secret_digest(secret)
        )

    async def list_sent(self) -> list[SentShare]:
        ids = [_text(i) for i in await self.redis.zrevrange(self._k("outs"), 0, 9999)]
        out = []
        for share_id in ids:
            if (sent := await self.get_sent(share_id)) is not None:
                out.append(sent)
        return out

    async def set_sent_state(self, share_id: str, state: str) -> None:
        await self.redis.hset(self._k("out", share_id), "state", state)

    async def note_notification(self, share_id: str, entry: dict[str, Any]) -> None:
        key = self._k("out", share_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(key, "notifications")
            (raw,) = await pipe.execute()
        items = json.loads(_text(raw)) if raw else []
        items.append(entry)
        await self.redis.hset(key, "notifications", json.dumps(items[-50:]))

    async def delete_sent(self, share_id: str) -> None:
        await self.redis.delete(self._k("out", share_id))
        await self.redis.zrem(self._k("outs"), share_id)

    # -- exchanged tokens we issued
    async def issue_token(self, share_id: str, ttl_s: float) -> str:
        token = "ocmx_" + secrets.token_urlsafe(32)
        await self.redis.hincrby(self._k("out", share_id), "tokens_issued", 1)
        await self.redis.set(self._k("xtoken", secret_digest(token)), share_id,
                             px=max(1, int(ttl_s * 1000)))
        return token

    async def token_share(self, token: str) -> str | None:
        value = await self.redis.get(self._k("xtoken", secret_digest(token)))
        return _text(value) if value is not None else None

    # -- invites and contacts
    async def create_invite(self, tenant: str, user: str) -> str:
        token = secrets.token_urlsafe(24)
        key = self._k("invite", token)
        mapping: dict[Any, Any] = {
            "tenant": tenant, "user": user, "created_at": repr(time.time()), "accepted_by": "",
        }
        await self.redis.hset(key, mapping=mapping)
        await self.redis.expire(key, INVITE_TTL_S)
        return token

    async def get_invite(self, token: str) -> dict[str, str] | None:
        raw = await self.redis.hgetall(self._k("invite", token))
        return _hash(raw) if raw else None

    async def mark_invite(self, token: str, accepted_by: str) -> bool:
        """Record who accepted; False when someone already had."""
        key = self._k("invite", token)
        return bool(await self.redis.eval(
            "if redis.call('HGET', KEYS[1], 'accepted_by') == '' then "
            "redis.call('HSET', KEYS[1], 'accepted_by', ARGV[1]) return 1 end return 0",
            1, key, accepted_by,
        ))

    async def add_contact(self, tenant: str, contact: dict[str, str]) -> None:
        ident = f"{contact['userID']}@{contact['provider']}"
        await self.redis.hset(self._k("contacts", tenant), ident, json.dumps(contact))

    async def contacts(self, tenant: str) -> list[dict[str, str]]:
        raw = await self.redis.hgetall(self._k("contacts", tenant))
        return sorted((json.loads(_text(v)) for v in raw.values()),
                      key=lambda c: (c.get("provider", ""), c.get("userID", "")))
