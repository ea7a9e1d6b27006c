"""A real OIDC issuer for the tests: discovery and JWKS over HTTP on an ephemeral port.

Fixture: ``idp`` -> OidcIssuerServer, started for the test and stopped after it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

AUDIENCE = "transferd-test"


class SigningKey:
    """One key pair with its kid and JWS algorithm."""

    def __init__(self, alg: str = "RS256") -> None:
        self.alg = alg
        self.kid = uuid.uuid4().hex[:12]
        self.private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if alg == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk.update({"kid": self.kid, "use": "sig", "alg": alg})


class OidcIssuerServer:
    """Serves ``/.well-known/openid-configuration`` and ``/jwks``; counts key fetches."""

    def __init__(self) -> None:
        self.keys = [SigningKey("RS256"), SigningKey("ES256")]
        self.jwks_fetches = 0
        self.available = True
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        self.server = TestServer(app, host="127.0.0.1")

    async def start(self) -> None:
        await self.server.start_server()

    async def stop(self) -> None:
        await self.server.close()

    async def __aenter__(self) -> OidcIssuerServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def issuer(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def jwks_uri(self) -> str:
        return self.issuer + "/jwks"

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response({"issuer": self.issuer, "jwks_uri": self.jwks_uri})

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        if not self.available:
            return web.Response(status=503)
        return web.json_response({"keys": [k.jwk for k in self.keys]})

    def rotate(self) -> SigningKey:
        """Replace the RSA key by a new one (new kid) and return it."""
        fresh = SigningKey("RS256")
        self.keys = [fresh, *(k for k in self.keys if k.alg != "RS256")]
        return fresh

    def token(
        self,
        *,
        key: SigningKey | None = None,
        alg: str | None = None,
        kid: str | None = "from-key",
        lifetime_s: float = 300,
        **claims: Any,
    ) -> str:
        """A signed JWT; defaults: this issuer, the test audience, tenant alice, valid 5 min."""
        key = key or self.keys[0]
        now = time.time()
        body: dict[str, Any] = {
            "iss": self.issuer, "aud": AUDIENCE, "sub": "user-1", "tenant": "alice",
            "iat": int(now), "exp": int(now + lifetime_s),
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        headers = {"kid": key.kid if kid == "from-key" else kid}
        if headers["kid"] is None:
            headers = {}
        return jwt.encode(body, key.private, algorithm=alg or key.alg, headers=headers)


@pytest.fixture
async def idp() -> AsyncIterator[OidcIssuerServer]:
    """The issuer a test configures its node to trust."""
    async with OidcIssuerServer() as server:
        yield server
