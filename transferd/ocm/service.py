"""The OCM side of a node: who we are, whom we trust, and what a received share becomes.

``OcmService`` holds our signing key, the discovery client, the trusted
directory and the Redis registry.  It turns a received datatx share into a
job (folder expanded by PROPFIND with the share's credentials; AWAITING_ACCEPTANCE
unless the recipient auto-accepts), accepts and declines shares (telling the
sender), stops a transfer on SHARE_UNSHARED, and follows accepted shares to
their end to send the completion notification for one-off (expiring) shares.
Outgoing requests to peers are signed (RFC 9421, label ``ocm``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from redis.asyncio import Redis

from transferd.config import NodeConfig, OcmConfig
from transferd.errors import TransferError
from transferd.models import FileSpec, JobParams, JobRequest, Principal, Role
from transferd.ocm import signatures
from transferd.ocm.directory import TrustedProviders
from transferd.ocm.discovery import Discovery, DiscoveryError, host_of
from transferd.ocm.exchange import TokenExchanger
from transferd.ocm.registry import Registry, ShareRecord
from transferd.ocm.shares import IncomingShare, source_url
from transferd.states import JobState
from transferd.store import JobStore

__all__ = ["OcmError", "OcmService"]

log = logging.getLogger(__name__)
WATCH_INTERVAL_S = 1.0
NOTIFY_TIMEOUT_S = 15.0


class OcmError(Exception):
    """An OCM request we refuse: HTTP status, message and the spec's validationErrors."""

    def __init__(
        self, status: int, message: str, errors: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = list(errors)
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"message": self.message,
                "validationErrors": [{"name": n, "message": m} for n, m in self.errors]}


@dataclass(frozen=True)
class Verified:
    """Who signed a request (None: unsigned, allowed because signatures are optional)."""

    host: str | None


class OcmService:
    """Everything the OCM routes, the REST routes and the completion watcher share."""

    def __init__(self, config: NodeConfig, ocm: OcmConfig, redis: Redis, store: JobStore) -> None:
        self.config = config
        self.ocm = ocm
        self.store = store
        self.registry = Registry(redis)
        key_file = ocm.key_file or config.state_dir / "ocm-ed25519.pem"
        self.key = signatures.load_or_create_key(Path(key_file))
        self.trusted = TrustedProviders(
            static=ocm.trusted_providers, file=ocm.directory_file, url=ocm.directory_url,
            refresh_s=ocm.directory_refresh_s,
        )
        self.listen_url: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._discovery: Discovery | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- identity
    @property
    def base_url(self) -> str:
        url = self.ocm.public_url or self.config.public_url or self.listen_url
        return (url or f"http://{self.config.host}:{self.config.port}").rstrip("/")

    @property
    def host(self) -> str:
        return host_of(self.base_url)

    @property
    def keyid(self) -> str:
        return f"{self.base_url}#signature"

    def public_key_pem(self) -> str:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def jwks(self) -> dict[str, Any]:
        return {"keys": [signatures.jwk_of(self.key, self.keyid)]}

    def user_for_tenant(self, tenant: str) -> str:
        for user, recipient in self.ocm.recipients.items():
            if recipient.tenant == tenant:
                return user
        return tenant

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "OCM service not started"
        return self._session

    @property
    def discovery(self) -> Discovery:
        assert self._discovery is not None, "OCM service not started"
        return self._discovery

    # -- lifecycle
    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._discovery = Discovery(self._session, allow_http=self.ocm.allow_http)
        self._tasks.append(asyncio.create_task(self._watch_loop(), name="ocm-watch"))
        if self.ocm.directory_url:
            self._tasks.append(asyncio.create_task(self.trusted.run(self._session),
                                                   name="ocm-directory"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    # -- outgoing requests
    async def post_signed(self, url: str, body: Mapping[str, Any]) -> tuple[int, Any]:
        """POST JSON to a peer with our signature; (status, decoded answer or None)."""
        raw = json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        headers.update(signatures.sign_request("POST", url, headers, raw, self.key, self.keyid))
        timeout = aiohttp.ClientTimeout(total=NOTIFY_TIMEOUT_S)
        async with self.session.post(url, data=raw, headers=headers, timeout=timeout,
                                     allow_redirects=False) as resp:
            text = await resp.read()
            try:
                answer = json.loads(text) if text else None
            except ValueError:
                answer = None
            return resp.status, answer

    async def notify(
        self, endpoint: str, notification_type: str, resource_type: str, provider_id: str,
        notification: Mapping[str, Any] | None = None,
    ) -> bool:
        """Best-effort notification: logged when refused, never retried forever."""
        body = {"notificationType": notification_type, "resourceType": resource_type,
                "providerId": provider_id, "notification": dict(notification or {})}
        try:
            status, _ = await self.post_signed(f"{endpoint}/notifications", body)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("%s for %s not delivered: %s", notification_type, provider_id,
                        type(exc).__name__)
            return False
        if status >= 300:
            log.warning("%s for %s refused by %s (%d)", notification_type, provider_id,
                        host_of(endpoint), status)
            return False
        return True

    # -- incoming request checks
    async def verify(
        self, method: str, raw_path: str, headers: Mapping[str, Sequence[str]], body: bytes,
        claimed_host: str | None,
    ) -> Verified:
        """Check the request's signature (RFC 9421 or draft-cavage) when present or required."""
        now = time.time()
        skew = self.ocm.signature_skew_s
        if "signature-input" in headers:
            try:
                parsed = signatures.parse_signature(
                    headers["signature-input"][0], ", ".join(headers.get("signature", []))
                )
            except signatures.SignatureError as exc:
                raise OcmError(401, f"signature: {exc}") from None
            host = claimed_host or host_of(parsed.keyid)
            if not host or not self.trusted.is_trusted(host):
                raise OcmError(403, "the signing provider is not in the trusted directory")
            try:
                remote = await self.discovery.provider(host)
                jwk = await self.discovery.jwk(remote, parsed.keyid)
            except (DiscoveryError, aiohttp.ClientError, TimeoutError, OSError):
                raise OcmError(401, "signature: the sender's keys cannot be fetched") from None
            if jwk is None:
                raise OcmError(401, "signature: keyid is not among the sender's keys")
            try:
                signatures.verify_ed25519(
                    parsed, method, self.base_url + raw_path, headers, body,
                    signatures.public_key_from_jwk(jwk), now=now, skew_s=skew,
                )
            except signatures.SignatureError as exc:
                raise OcmError(401, f"signature: {exc}") from None
            return Verified(host)
        if "signature" in headers and claimed_host:
            if not self.trusted.is_trusted(claimed_host):
                raise OcmError(403, "the signing provider is not in the trusted directory")
            try:
                remote = await self.discovery.provider(claimed_host)
            except DiscoveryError:
                raise OcmError(401, "signature: the sender's key cannot be fetched") from None
            if not remote.public_key_pem:
                raise OcmError(401, "signature: the sender publishes no public key")
            try:
                signatures.cavage_verify(method, raw_path, headers, body, remote.public_key_pem,
                                         now=now, skew_s=skew)
            except signatures.SignatureError as exc:
                raise OcmError(401, f"signature: {exc}") from None
            return Verified(claimed_host)
        if "must-use-http-sig" in self.ocm.criteria:
            raise OcmError(401, "this provider requires signed requests (must-use-http-sig)")
        return Verified(None)

    # -- receiving a share
    async def receive(self, share: IncomingShare, verified: Verified) -> dict[str, Any]:
        """A validated, trusted share becomes a job; returns the 201 body."""
        if verified.host is not None and verified.host != share.sender_host:
            raise OcmError(403, "the request is signed by another provider than the sender")
        recipient = self.ocm.recipients.get(share.share_with)
        if recipient is None:
            raise OcmError(400, f"shareWith: no user {share.share_with!r} on this provider",
                           [("shareWith", "unknown user")])
        answer = {"recipientDisplayName": share.share_with}
        if await self.registry.share_for_remote(share.sender_host, share.provider_id):
            return answer  # the sender retried: same share, nothing new
        try:
            remote = await self.discovery.provider(share.sender_host)
        except DiscoveryError as exc:
            raise OcmError(503, f"cannot discover the sender: {exc}",
                           headers={"Retry-After": "30"}) from None
        try:
            src = source_url(share.uri, remote.webdav_root, remote.base_url)
        except ValueError as exc:
            raise OcmError(400, str(exc), [("protocol", str(exc))]) from None
        if share.must_exchange_token and not remote.token_endpoint:
            raise OcmError(400, "the share needs a token exchange but the sender has no "
                                "tokenEndPoint", [("protocol", "must-exchange-token")])
        share_id = str(uuid.uuid4())
        # resolved now: the worker's sink refuses every symbolic link along a
        # destination, so a recipient root that is itself a link is followed here, once
        dest_root = Path(os.path.realpath(recipient.root)) / share.name
        files = await self._expand(share, src, dest_root, remote.token_endpoint)
        record = ShareRecord(
            id=share_id, name=share.name, owner=share.owner, sender=share.sender,
            provider=share.sender_host, provider_id=share.provider_id,
            share_with=share.share_with, tenant=recipient.tenant,
            size=share.size if share.size is not None else sum(f.size or 0 for f in files),
            state="accepted" if recipient.auto_accept else "pending", job_id=share_id,
            created_at=time.time(), expiration=share.expiration,
            resource_type=share.resource_type, source=src, remote_endpoint=remote.endpoint,
            must_exchange=share.must_exchange_token, completion_sent=False,
        )
        await self.registry.add_share(record, share.secret)
        await self.registry.set_share_fields(
            share_id, token_endpoint=remote.token_endpoint or "", client_id=self.host
        )
        deadline = None
        if share.expiration is not None and share.expiration > time.time():
            deadline = datetime.fromtimestamp(share.expiration, UTC).isoformat()
        principal = Principal(f"ocm:{share.sender}", recipient.tenant, Role.SUBMITTER)
        request = JobRequest(files, JobParams(deadline=deadline,
                                              metadata={"ocm_share": share_id}))
        await self.store.submit(principal, request, job_id=share_id,
                                awaiting_acceptance=not recipient.auto_accept)
        if recipient.auto_accept:
            await self.registry.watch(share_id)
        log.info("share %s from %s for %s: %d file(s), %s", share_id, share.sender_host,
                 share.share_with, len(files), record.state)
        return answer

    async def _expand(
        self, share: IncomingShare, src: str, dest_root: Path, token_endpoint: str | None
    ) -> list[FileSpec]:
        """The files of the share: a PROPFIND walk with the share's credentials."""
        from workers.stream.http import HttpSource

        headers: Any
        if share.must_exchange_token and token_endpoint:
            headers = TokenExchanger(self.session, token_endpoint, self.host,
                                     share.secret).headers
        else:
            secret = share.secret

            async def bearer() -> Mapping[str, str]:
                return {"Authorization": f"Bearer {secret}"}

            headers = bearer
        source = HttpSource(src, self.session, headers)
        try:
            entries = await source.list() if share.resource_type == "folder" else None
            if entries is None:
                info = await source.stat()
                return [FileSpec(src, dest_root.as_uri(), info.size, _checksum(info.checksums))]
        except TransferError as exc:
            raise OcmError(400, f"the shared resource cannot be read: {exc.reason}",
                           [("protocol", "the shared resource cannot be read")]) from None
        files = []
        for entry in entries:
            parts = entry.relative_path.split("/")
            if any(p in ("", ".", "..") for p in parts):
                raise OcmError(400, "the shared folder lists an unsafe path",
                               [("protocol", "unsafe path in listing")])
            files.append(FileSpec(entry.info.url, dest_root.joinpath(*parts).as_uri(),
                                  entry.info.size, _checksum(entry.info.checksums)))
        return files

    # -- accept / decline / unshare
    async def accept(self, record: ShareRecord) -> ShareRecord:
        if record.state == "pending":
            await self.registry.set_share_fields(record.id, state="accepted")
            await self.store.accept_job(record.job_id)
            await self.registry.watch(record.id)
            await self.notify(record.remote_endpoint, "SHARE_ACCEPTED", record.resource_type,
                              record.provider_id)
        elif record.state != "accepted":
            raise OcmError(409, f"the share is {record.state}")
        fresh = await self.registry.get_share(record.id)
        assert fresh is not None
        return fresh

    async def decline(self, record: ShareRecord) -> ShareRecord:
        if record.state in ("pending", "accepted"):
            await self.registry.set_share_fields(record.id, state="declined")
            await self.store.cancel_job(record.job_id)
            await self.registry.forget_secret(record.id)
            await self.notify(record.remote_endpoint, "SHARE_DECLINED", record.resource_type,
                              record.provider_id)
        elif record.state != "declined":
            raise OcmError(409, f"the share is {record.state}")
        fresh = await self.registry.get_share(record.id)
        assert fresh is not None
        return fresh

    async def unshared(self, record: ShareRecord) -> None:
        """The sender withdrew the share: stop the transfer (its partial files go too)."""
        await self.registry.set_share_fields(record.id, state="unshared")
        await self.store.cancel_job(record.job_id)
        await self.registry.unwatch(record.id)
        await self.registry.forget_secret(record.id)
        log.info("share %s unshared by %s: transfer canceled", record.id, record.provider)

    # -- following accepted shares to their end
    async def _watch_loop(self) -> None:
        while True:
            try:
                await self.check_watched()
            except Exception:  # a Redis blip must not end the watcher
                log.warning("OCM watcher pass failed", exc_info=True)
            await asyncio.sleep(WATCH_INTERVAL_S)

    async def check_watched(self) -> None:
        for share_id in await self.registry.watched():
            record = await self.registry.get_share(share_id)
            job = await self.store.get_job(share_id)
            if record is None or job is None:
                await self.registry.unwatch(share_id)
                continue
            if job.state not in (JobState.FINISHED, JobState.FINISHEDDIRTY, JobState.FAILED,
                                 JobState.CANCELED, JobState.EXPIRED):
                continue
            if not await self.registry.unwatch(share_id):
                continue  # another node took it
            if job.state == JobState.FINISHED and record.expiration is not None:
                delivered = await self.notify(
                    record.remote_endpoint, "TRANSFER_COMPLETED", record.resource_type,
                    record.provider_id,
                    {"state": "FINISHED", "files": job.files_total,
                     "bytes": job.bytes_done, "finished_at": job.finished_at},
                )
                await self.registry.set_share_fields(share_id,
                                                     completion_sent="1" if delivered else "0")
                await self.registry.forget_secret(share_id)


def _checksum(checksums: Mapping[str, str]) -> str | None:
    """The checksum the sender publishes, preferring adler32 (what we verify cheapest)."""
    for algorithm in ("adler32", "md5", "sha256", "crc32c"):
        if algorithm in checksums:
            return f"{algorithm}:{checksums[algorithm]}"
    return None
