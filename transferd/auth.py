"""Who is calling: per-node API tokens and OIDC bearer JWTs, turned into a ``Principal``.

API tokens look like ``td_<43 url-safe chars>``; only their SHA-256 is stored,
under ``td:token:{sha256hex}`` (tenant, role, name, created_at), so a copy of
Redis does not hand out credentials.  The hex digest doubles as the token's id
for listing and revoking.

JWTs are accepted from the configured issuers only: the signature is checked
against the issuer's JWKS (RS256 or ES256; fetched, cached for ``jwks_ttl_s``,
refetched when an unknown ``kid`` shows up), then ``iss``, ``aud``, ``exp`` and
``nbf`` (with ``leeway_s``).  Tenant and role come from the claims
(``principal_from_claims``, a pure function).

Failures raise ``Problem(401)`` with ``WWW-Authenticate: Bearer``; the
credential itself never appears in a message, a log line or an answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from redis.asyncio import Redis

from transferd.config import TENANT_NAME_RE, NodeConfig, OidcIssuer
from transferd.models import Principal, Role
from transferd.problem import Problem

__all__ = [
    "ALGORITHMS",
    "TOKEN_PREFIX",
    "Authenticator",
    "JwksCache",
    "JwksUnavailable",
    "TokenInfo",
    "create_token",
    "list_tokens",
    "lookup_token",
    "principal_from_claims",
    "revoke_token",
    "token_id",
]

log = logging.getLogger(__name__)

TOKEN_PREFIX = "td_"
ALGORITHMS = ("RS256", "ES256")
ROLE_RANK: Mapping[Role, int] = {Role.READER: 0, Role.SUBMITTER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}
MAX_JWKS_BYTES = 1 << 20


class AuthFailed(Exception):
    """A credential was refused; the message is safe to show (it never holds the secret)."""


class JwksUnavailable(Exception):
    """An issuer's keys could not be fetched and none are cached."""


# -- API tokens ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about a token: everything except the token."""

    token_id: str  # sha256 hex of the token
    tenant: str
    role: Role
    name: str
    created_at: float


def token_id(token: str) -> str:
    """The SHA-256 hex digest under which ``token`` is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def _token_key(namespace: str, digest: str) -> str:
    return f"{namespace}:token:{digest}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def create_token(
    redis: Redis, tenant: str, role: Role | str, name: str = "", *, namespace: str = "td"
) -> str:
    """Mint a token for ``tenant`` with ``role``; returns it (the only time it exists in clear)."""
    if not TENANT_NAME_RE.match(tenant):
        raise ValueError("tenant: 1-64 characters of A-Z a-z 0-9 . _ -, starting alphanumeric")
    try:
        role = Role(role)
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise ValueError(f"role: {role!r} is not one of {choices}") from None
    if len(name) > 200:
        raise ValueError("name: at most 200 characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await redis.hset(
        _token_key(namespace, token_id(token)),
        mapping={
            "tenant": tenant,
            "role": role.value,
            "name": name,
            "created_at": repr(time.time()),
        },
    )
    return token


async def revoke_token(redis: Redis, token_or_id: str, *, namespace: str = "td") -> bool:
    """Delete a token given the token itself or its id; True when one was deleted."""
    digest = token_id(token_or_id) if token_or_id.startswith(TOKEN_PREFIX) else token_or_id
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        return False
    return bool(await redis.delete(_token_key(namespace, digest)))


async def list_tokens(redis: Redis, *, namespace: str = "td") -> list[TokenInfo]:
    """Every token on this node, oldest first, without the secrets."""
    infos: list[TokenInfo] = []
    prefix = _token_key(namespace, "")
    async for key in redis.scan_iter(match=prefix + "*", count=500):
        key_text = _text(key)
        fields = {_text(k): _text(v) for k, v in (await redis.hgetall(key_text)).items()}
        if not fields:
            continue
        infos.append(
            TokenInfo(
                token_id=key_text[len(prefix):],
                tenant=fields.get("tenant", ""),
                role=Role(fields.get("role", Role.READER.value)),
                name=fields.get("name", ""),
                created_at=float(fields.get("created_at", "0")),
            )
        )
    return sorted(infos, key=lambda i: i.created_at)


async def lookup_token(redis: Redis, token: str, *, namespace: str = "td") -> Principal | None:
    """The principal an API token stands for, or None when it is unknown or revoked."""
    digest = token_id(token)
    raw = await redis.hgetall(_token_key(namespace, digest))
    if not raw:
        return None
    fields = {_text(k): _text(v) for k, v in raw.items()}
    try:
        role = Role(fields["role"])
        tenant = fields["tenant"]
    except (KeyError, ValueError):
        log.warning("token record %s… is malformed; refusing it", digest[:12])
        return None
    return Principal(subject=f"token:{digest[:16]}", tenant=tenant, role=role)


# -- OIDC claims -> principal (pure) --------------------------------------------------------


def _claim_values(claims: Mapping[str, Any]) -> set[str]:
    """Scopes and groups the token carries, normalised ("/transferd.admin" → "transferd.admin")."""
    values: set[str] = set()
    for name in ("scope", "scp", "wlcg.groups", "groups"):
        raw = claims.get(name)
        items: list[Any]
        if isinstance(raw, str):
            items = list(raw.split())
        elif isinstance(raw, list):
            items = raw
        else:
            continue
        values.update(item.lstrip("/") for item in items if isinstance(item, str))
    return values


def principal_from_claims(claims: Mapping[str, Any], issuer: OidcIssuer) -> Principal:
    """Map verified claims to a principal: subject, tenant (claim or default), highest role.

    Raises ``AuthFailed`` when no usable subject or tenant can be found.
    """
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthFailed("token has no subject")
    tenant = claims.get(issuer.tenant_claim, issuer.default_tenant)
    if tenant is None:
        raise AuthFailed(f"token has no {issuer.tenant_claim!r} claim")
    if not isinstance(tenant, str) or not TENANT_NAME_RE.match(tenant):
        raise AuthFailed(f"token's {issuer.tenant_claim!r} claim is not a tenant name")
    carried = _claim_values(claims)
    wanted = {scope.lstrip("/"): role for scope, role in issuer.roles.items()}
    matched = [role for scope, role in wanted.items() if scope in carried]
    role = max(matched, key=ROLE_RANK.__getitem__) if matched else issuer.default_role
    return Principal(subject=f"{sub}@{issuer.issuer}", tenant=tenant, role=role)


# -- JWKS ------------------------------------------------------------------------------------


@dataclass
class _KeySet:
    keys: dict[str | None, jwt.PyJWK]
    fetched_at: float  # monotonic


class JwksCache:
    """Signing keys per issuer, fetched over HTTP and kept for the issuer's ``jwks_ttl_s``.

    An unknown ``kid`` triggers a refetch (key rotation), at most once per
    ``refetch_min_interval_s`` so random kids cannot make us hammer the issuer.
    When a refetch fails the previous keys stay in use.
    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None = None,
        refetch_min_interval_s: float = 10.0,
        fetch_timeout_s: float = 5.0,
    ) -> None:
        self._session = session
        self._own_session = session is None
        self._refetch_min_interval_s = refetch_min_interval_s
        self._timeout = aiohttp.ClientTimeout(total=fetch_timeout_s)
        self._sets: dict[str, _KeySet] = {}
        self._jwks_uris: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def signing_key(self, issuer: OidcIssuer, kid: str | None) -> jwt.PyJWK | None:
        """The issuer's key with ``kid`` (the only key when ``kid`` is None), or None."""
        key_set = self._sets.get(issuer.issuer)
        now = time.monotonic()
        if key_set is None or now - key_set.fetched_at > issuer.jwks_ttl_s:
            key_set = await self._refresh(issuer, seen=key_set)
        key = self._pick(key_set, kid)
        if key is None and time.monotonic() - key_set.fetched_at >= self._refetch_min_interval_s:
            key_set = await self._refresh(issuer, seen=key_set)
            key = self._pick(key_set, kid)
        return key

    @staticmethod
    def _pick(key_set: _KeySet, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(key_set.keys) == 1:
            return next(iter(key_set.keys.values()))
        return key_set.keys.get(kid)

    async def _refresh(self, issuer: OidcIssuer, *, seen: _KeySet | None) -> _KeySet:
        lock = self._locks.setdefault(issuer.issuer, asyncio.Lock())
        async with lock:
            current = self._sets.get(issuer.issuer)
            if current is not None and current is not seen:
                return current  # another request refreshed while we waited
            try:
                keys = await self._fetch(issuer)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                if current is None:
                    raise JwksUnavailable(f"cannot fetch keys of {issuer.issuer}: {exc}") from None
                log.warning("refetching keys of %s failed (%s); keeping the old ones",
                            issuer.issuer, exc)
                current.fetched_at = time.monotonic()
                return current
            fresh = _KeySet(keys=keys, fetched_at=time.monotonic())
            self._sets[issuer.issuer] = fresh
            return fresh

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _get_json(self, url: str) -> Any:
        async with self._client().get(url, timeout=self._timeout) as resp:
            if resp.status != 200:
                raise ValueError(f"GET {url} answered {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"GET {url}: answer larger than {MAX_JWKS_BYTES} bytes")
            return json.loads(body)

    async def _fetch(self, issuer: OidcIssuer) -> dict[str | None, jwt.PyJWK]:
        uri = issuer.jwks_uri or self._jwks_uris.get(issuer.issuer)
        if uri is None:
            discovery = await self._get_json(
                issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
            )
            if not isinstance(discovery, dict) or discovery.get("issuer") != issuer.issuer:
                raise ValueError("discovery document names another issuer")
            found = discovery.get("jwks_uri")
            if not isinstance(found, str):
                raise ValueError("discovery document has no jwks_uri")
            uri = self._jwks_uris[issuer.issuer] = found
        document = await self._get_json(uri)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError(f"{uri} is not a JWK set")
        keys: dict[str | None, jwt.PyJWK] = {}
        for raw in document["keys"]:
            if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(raw)
            except jwt.PyJWTError:
                continue  # a key type or curve we do not use
            if key.algorithm_name in ALGORITHMS:
                keys[raw.get("kid")] = key
        return keys


# -- the authenticator --------------------------------------------------------------------


def _unauthorized(detail: str, *, invalid: bool = True) -> Problem:
    challenge = 'Bearer realm="transferd"' + (', error="invalid_token"' if invalid else "")
    return Problem(401, detail, kind="unauthorized", headers={"WWW-Authenticate": challenge})


class Authenticator:
    """Turns an ``Authorization: Bearer`` header into a ``Principal`` or a 401 problem."""

    def __init__(
        self,
        redis: Redis,
        config: NodeConfig,
        *,
        namespace: str = "td",
        jwks: JwksCache | None = None,
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.issuers = {i.issuer: i for i in config.oidc_issuers}
        self.jwks = jwks or JwksCache()

    async def close(self) -> None:
        """Close the HTTP session used to fetch keys (the owner of the authenticator calls it)."""
        await self.jwks.close()

    async def authenticate(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise _unauthorized("a bearer credential is required", invalid=False)
        try:
            return await self.verify(credential)
        except AuthFailed as exc:
            log.info("refused a credential: %s", exc)
            raise _unauthorized(f"credential refused: {exc}") from None
        except JwksUnavailable as exc:
            log.warning("%s", exc)
            raise Problem(503, "the token's issuer cannot be reached to check it; try again",
                          kind="issuer-unavailable") from None

    async def verify(self, credential: str) -> Principal:
        """The principal for a bearer credential; raises ``AuthFailed`` (safe message)."""
        if credential.startswith(TOKEN_PREFIX):
            principal = await lookup_token(self.redis, credential, namespace=self.namespace)
            if principal is None:
                raise AuthFailed("unknown or revoked API token")
            return principal
        if credential.count(".") == 2:
            return await self.verify_jwt(credential)
        raise AuthFailed("not an API token or a JWT")

    async def verify_jwt(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthFailed("malformed JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise AuthFailed(f"JWT algorithm must be one of {', '.join(ALGORITHMS)}")
        iss = unverified.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise AuthFailed("JWT issuer is not trusted here")
        kid = header.get("kid")
        key = await self.jwks.signing_key(issuer, kid if isinstance(kid, str) else None)
        if key is None:
            raise AuthFailed("JWT signing key is not among the issuer's keys")
        if key.algorithm_name != alg:
            raise AuthFailed("JWT algorithm does not match its key")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=issuer.audience,
                issuer=issuer.issuer,
                leeway=issuer.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthFailed("JWT has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthFailed("JWT is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise AuthFailed("JWT audience is not this service") from None
        except jwt.InvalidSignatureError:
            raise AuthFailed("JWT signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthFailed(f"JWT lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            raise AuthFailed(f"JWT refused ({type(exc).__name__})") from None
        return principal_from_claims(claims, issuer)
