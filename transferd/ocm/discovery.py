"""OCM discovery: our ``/.well-known/ocm`` document, and finding out about a remote provider.

``split_address`` splits an OCM address at its LAST ``@`` (user ids may hold
``@`` themselves).  ``Discovery`` fetches and caches remote discovery
documents and JWKS; it tries https first and plain http only when the
``[ocm] allow_http`` setting says so (labs, loopback tests).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

__all__ = [
    "API_VERSION",
    "Discovery",
    "DiscoveryError",
    "RemoteProvider",
    "discovery_document",
    "host_of",
    "split_address",
]

API_VERSION = "1.3.0"
MAX_DOC_BYTES = 1 << 20
CACHE_TTL_S = 300.0


class DiscoveryError(Exception):
    """A remote provider could not be discovered; the message is safe to show."""


def split_address(address: str) -> tuple[str, str]:
    """``"alice@cern.ch"`` → ``("alice", "cern.ch")``; ValueError without a user or a host."""
    user, sep, host = address.rpartition("@")
    if not sep or not user or not host or "/" in host or " " in host:
        raise ValueError(f"{address!r} is not an OCM address (user@host)")
    return user, host.lower()


def host_of(url: str) -> str:
    """The ``host[:port]`` of a URL, as providers are named in the trusted list."""
    return urlsplit(url).netloc.lower()


def discovery_document(
    base_url: str, provider: str, criteria: Sequence[str], *, public_key_pem: str
) -> dict[str, Any]:
    """Our discovery answer (OCM 1.3 / draft-05, with the v1.1 fields older peers read)."""
    base = base_url.rstrip("/")
    protocols = {"webdav": "/ocm/webdav/", "webdav-receive": "/ocm/webdav/"}
    return {
        "enabled": True,
        "apiVersion": API_VERSION,
        "endPoint": f"{base}/ocm",
        "provider": provider,
        "resourceTypes": [
            {"name": name, "shareTypes": ["user"], "protocols": protocols}
            for name in ("file", "folder")
        ],
        "capabilities": [
            "notifications", "invites", "exchange-token", "http-sig", "protocol-object",
            "/notifications", "/invite-accepted",
        ],
        "criteria": list(criteria),
        "tokenEndPoint": f"{base}/ocm/token",
        "inviteAcceptDialog": "",
        "jwksUri": f"{base}/.well-known/jwks.json",
        "publicKey": {"keyId": f"{base}#signature", "publicKeyPem": public_key_pem},
    }


@dataclass(frozen=True)
class RemoteProvider:
    """What we use from a peer's discovery document."""

    host: str  # host[:port] as addressed
    base_url: str  # scheme://host[:port] that answered
    endpoint: str  # its OCM endPoint, no trailing slash
    token_endpoint: str | None
    webdav_root: str | None  # absolute URL of its webdav protocol path
    jwks_uri: str | None
    public_key_pem: str | None
    capabilities: tuple[str, ...] = ()
    criteria: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _remote(host: str, base_url: str, doc: Any) -> RemoteProvider:
    if not isinstance(doc, dict) or not isinstance(doc.get("endPoint"), str):
        raise DiscoveryError(f"{host} answered no OCM discovery document")
    if doc.get("enabled") is False:
        raise DiscoveryError(f"{host} has OCM disabled")
    endpoint = urljoin(base_url + "/", doc["endPoint"]).rstrip("/")
    webdav = None
    for rtype in doc.get("resourceTypes") or []:
        protocols = rtype.get("protocols") if isinstance(rtype, dict) else None
        if isinstance(protocols, dict) and isinstance(protocols.get("webdav"), str):
            webdav = urljoin(base_url + "/", protocols["webdav"])
            break
    token_endpoint = doc.get("tokenEndPoint") or None
    jwks_uri = doc.get("jwksUri") or None
    key = doc.get("publicKey")
    pem = key.get("publicKeyPem") if isinstance(key, dict) else None
    return RemoteProvider(
        host=host, base_url=base_url, endpoint=endpoint,
        token_endpoint=urljoin(base_url + "/", token_endpoint) if token_endpoint else None,
        webdav_root=webdav,
        jwks_uri=urljoin(base_url + "/", jwks_uri or "/.well-known/jwks.json"),
        public_key_pem=pem if isinstance(pem, str) else None,
        capabilities=tuple(str(c) for c in doc.get("capabilities") or []),
        criteria=tuple(str(c) for c in doc.get("criteria") or []),
        raw=doc,
    )


class Discovery:
    """Discovers remote providers (cached for ``ttl_s``) and fetches their JWKS."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        allow_http: bool,
        ttl_s: float = CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.allow_http = allow_http
        self.ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, RemoteProvider]] = {}
        self._jwks: dict[str, tuple[float, dict[str, dict[str, Any]]]] = {}
        self._lock = asyncio.Lock()

    async def _get_json(self, url: str) -> Any:
        timeout = aiohttp.ClientTimeout(total=15)
        async with self.session.get(url, timeout=timeout, allow_redirects=False) as resp:
            if resp.status != 200:
                raise DiscoveryError(f"GET {url} answered {resp.status}")
            raw = await resp.content.read(MAX_DOC_BYTES + 1)
            if len(raw) > MAX_DOC_BYTES:
                raise DiscoveryError(f"GET {url}: the answer is too large")
            try:
                return json.loads(raw)
            except ValueError:
                raise DiscoveryError(f"GET {url}: not JSON") from None

    async def provider(self, host: str, *, refresh: bool = False) -> RemoteProvider:
        """The provider at ``host`` (``host[:port]``), from cache when fresh."""
        host = host.lower()
        cached = self._cache.get(host)
        if cached and not refresh and self._clock() - cached[0] < self.ttl_s:
            return cached[1]
        schemes = ("https", "http") if self.allow_http else ("https",)
        errors: list[str] = []
        for scheme in schemes:
            base = f"{scheme}://{host}"
            for path in ("/.well-known/ocm", "/ocm-provider"):
                try:
                    doc = await self._get_json(base + path)
                except (aiohttp.ClientError, TimeoutError, OSError, DiscoveryError) as exc:
                    errors.append(f"{base}{path}: {type(exc).__name__}")
                    if not isinstance(exc, DiscoveryError):
                        break  # nothing listens with this scheme
                    continue
                remote = _remote(host, base, doc)
                self._cache[host] = (self._clock(), remote)
                return remote
        raise DiscoveryError(f"cannot discover OCM provider {host} ({'; '.join(errors)})")

    async def jwk(self, remote: RemoteProvider, keyid: str) -> dict[str, Any] | None:
        """The JWK ``keyid`` of ``remote`` (refetched once when unknown)."""
        if remote.jwks_uri is None:
            return None
        for attempt in range(2):
            cached = self._jwks.get(remote.jwks_uri)
            if attempt == 0 and cached and self._clock() - cached[0] < self.ttl_s:
                keys = cached[1]
            else:
                doc = await self._get_json(remote.jwks_uri)
                keys = {
                    str(k.get("kid")): k
                    for k in (doc.get("keys") if isinstance(doc, dict) else None) or []
                    if isinstance(k, dict)
                }
                self._jwks[remote.jwks_uri] = (self._clock(), keys)
            if keyid in keys:
                return keys[keyid]
            if attempt == 0 and cached is None:
                break
        return None
