"""API tokens, OIDC JWTs against a real JWKS server, claim mapping, and file:// confinement."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis.asyncio

from tests.oidc_server import AUDIENCE, OidcIssuerServer, SigningKey
from transferd.auth import (
    Authenticator,
    AuthFailed,
    JwksCache,
    JwksUnavailable,
    create_token,
    list_tokens,
    lookup_token,
    principal_from_claims,
    revoke_token,
    token_id,
)
from transferd.config import NodeConfig, OidcIssuer
from transferd.models import Principal, Role
from transferd.paths import PathNotAllowed, confine_destination

# -- API tokens ----------------------------------------------------------------------------


async def all_redis_bytes(client: redis.asyncio.Redis) -> bytes:
    """Every key and hash field/value in the database, concatenated."""
    out = bytearray()
    async for key in client.scan_iter():
        out += key
        for k, v in (await client.hgetall(key)).items():
            out += k if isinstance(k, bytes) else k.encode()
            out += v if isinstance(v, bytes) else v.encode()
    return bytes(out)


async def test_token_is_stored_only_as_its_hash(aredis: redis.asyncio.Redis) -> None:
    token = await create_token(aredis, "alice", Role.SUBMITTER, "pipeline")
    assert token.startswith("td_") and len(token) > 40
    record = await aredis.hgetall(f"td:token:{token_id(token)}")
    assert record[b"tenant"] == b"alice"
    assert record[b"role"] == b"submitter"
    assert record[b"name"] == b"pipeline"
    assert float(record[b"created_at"]) > 0
    assert token.encode() not in await all_redis_bytes(aredis)
    assert token[3:].encode() not in await all_redis_bytes(aredis)


async def test_token_lookup_list_and_revoke(aredis: redis.asyncio.Redis) -> None:
    first = await create_token(aredis, "alice", "reader", "dash")
    second = await create_token(aredis, "ops", Role.OPERATOR, "oncall")
    principal = await lookup_token(aredis, first)
    assert principal == Principal(f"token:{token_id(first)[:16]}", "alice", Role.READER)
    listed = await list_tokens(aredis)
    assert {(t.tenant, t.role, t.name) for t in listed} == {
        ("alice", Role.READER, "dash"), ("ops", Role.OPERATOR, "oncall")
    }
    assert all(first not in repr(t) and second not in repr(t) for t in listed)

    assert await revoke_token(aredis, token_id(first)) is True
    assert await lookup_token(aredis, first) is None
    assert await revoke_token(aredis, second) is True  # by the token itself
    assert await lookup_token(aredis, second) is None
    assert await revoke_token(aredis, second) is False
    assert await revoke_token(aredis, "not-an-id") is False
    assert await list_tokens(aredis) == []


@pytest.mark.parametrize(
    ("tenant", "role", "message"),
    [("", "submitter", "tenant"), ("a b", "submitter", "tenant"), ("alice", "root", "role")],
)
async def test_token_create_refuses_bad_input(
    aredis: redis.asyncio.Redis, tenant: str, role: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await create_token(aredis, tenant, role, "x")
    assert await aredis.dbsize() == 0


# -- claims -> principal (pure, table-driven) ----------------------------------------------

ISSUER = OidcIssuer(issuer="https://iam.example.org", audience=["transferd"])


@pytest.mark.parametrize(
    ("claims", "issuer", "expected"),
    [
        ({"sub": "u", "tenant": "alice"}, ISSUER, ("alice", Role.SUBMITTER)),
        ({"sub": "u", "tenant": "alice", "scope": "openid transferd.admin"}, ISSUER,
         ("alice", Role.ADMIN)),
        ({"sub": "u", "tenant": "alice", "scp": ["transferd.operator"]}, ISSUER,
         ("alice", Role.OPERATOR)),
        ({"sub": "u", "tenant": "alice", "wlcg.groups": ["/escape", "/transferd.operator"]},
         ISSUER, ("alice", Role.OPERATOR)),
        ({"sub": "u", "tenant": "alice", "groups": ["transferd.reader"]}, ISSUER,
         ("alice", Role.READER)),
        ({"sub": "u", "tenant": "alice", "groups": ["transferd.reader"],
          "scope": "transferd.admin"}, ISSUER, ("alice", Role.ADMIN)),
        ({"sub": "u", "vo": "escape"},
         OidcIssuer("https://i", ["a"], tenant_claim="vo"), ("escape", Role.SUBMITTER)),
        ({"sub": "u"}, OidcIssuer("https://i", ["a"], default_tenant="lofar",
                                  default_role=Role.READER), ("lofar", Role.READER)),
        ({"sub": "u", "tenant": "alice", "wlcg.groups": ["/escape/ops"]},
         OidcIssuer("https://i", ["a"], roles={"/escape/ops": Role.OPERATOR}),
         ("alice", Role.OPERATOR)),
    ],
)
def test_claims_map_to_tenant_and_highest_role(
    claims: dict[str, Any], issuer: OidcIssuer, expected: tuple[str, Role]
) -> None:
    principal = principal_from_claims(claims, issuer)
    assert (principal.tenant, principal.role) == expected
    assert principal.subject == f"u@{issuer.issuer}"


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"tenant": "alice"}, "no subject"),
        ({"sub": "u"}, "no 'tenant' claim"),
        ({"sub": "u", "tenant": "../alice"}, "not a tenant name"),
        ({"sub": "u", "tenant": ["alice"]}, "not a tenant name"),
    ],
)
def test_claims_without_subject_or_tenant_are_refused(
    claims: dict[str, Any], message: str
) -> None:
    with pytest.raises(AuthFailed, match=message):
        principal_from_claims(claims, ISSUER)


# -- JWTs against a real JWKS server -------------------------------------------------------


@pytest.fixture
async def rogue() -> AsyncIterator[OidcIssuerServer]:
    """An issuer nobody configured."""
    async with OidcIssuerServer() as server:
        yield server


@contextlib.asynccontextmanager
async def authenticator(
    aredis: redis.asyncio.Redis, idp: OidcIssuerServer, *, discover: bool = False,
    refetch_min_interval_s: float = 0.0,
) -> AsyncIterator[Authenticator]:
    """An authenticator trusting ``idp`` (its JWKS named, or ``discover``-ed), closed after."""
    issuer = OidcIssuer(
        issuer=idp.issuer, audience=[AUDIENCE], jwks_uri=None if discover else idp.jwks_uri
    )
    config = NodeConfig(oidc_issuers=[issuer])
    auth = Authenticator(
        aredis, config, jwks=JwksCache(refetch_min_interval_s=refetch_min_interval_s)
    )
    try:
        yield auth
    finally:
        await auth.close()


async def test_rs256_and_es256_tokens_are_accepted_and_keys_cached(
    aredis: redis.asyncio.Redis, idp: OidcIssuerServer
) -> None:
    async with authenticator(aredis, idp) as auth:
        rsa_principal = await auth.verify(idp.token(scope="transferd.operator"))
        ec_principal = await auth.verify(idp.token(key=idp.keys[1], tenant="bob"))
        again = await auth.verify(idp.token())
    assert rsa_principal == Principal(f"user-1@{idp.issuer}", "alice", Role.OPERATOR)
    assert (ec_principal.tenant, ec_principal.role) == ("bob", Role.SUBMITTER)
    assert again.role is Role.SUBMITTER
    assert idp.jwks_fetches == 1


async def test_keys_are_discovered_from_the_issuer(
    aredis: redis.asyncio.Redis, idp: OidcIssuerServer
) -> None:
    async with authenticator(aredis, idp, discover=True) as auth:
        principal = await auth.verify(idp.token())
    assert principal.tenant == "alice"


async def test_rotated_key_is_fetched_on_unknown_kid(
    aredis: redis.asyncio.Redis, idp: OidcIssuerServer
) -> None:
    async with authenticator(aredis, idp) as auth:
        await auth.verify(idp.token())
        fresh = idp.rotate()
        principal = await auth.verify(idp.token(key=fresh))
    assert principal.tenant == "alice"
    assert idp.jwks_fetches == 2


async def test_unknown_kid_does_not_refetch_within_the_interval(
    aredis: redis.asyncio.Redis, idp: OidcIssuerServer
) -> None:
    async with authenticator(aredis, idp, refetch_min_interval_s=3600) as auth:
        await auth.verify(idp.token())
        stranger = SigningKey("RS256")
        for _ in range(3):
            with pytest.raises(AuthFailed, match="signing key is not among"):
                await auth.verify(idp.token(key=stranger))
    assert idp.jwks_fetches == 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda s: s.token(lifetime_s=-120), "expired"),
        (lambda s: s.token(nbf=2**31), "not valid yet"),
        (lambda s: s.token(aud="someone-else"), "audience"),
        (lambda s: s.token(aud=None), "'aud' claim"),
        (lambda s: s.token(exp=None), "'exp' claim"),
        (lambda s: s.token(sub=None), "'sub' claim"),
        (lambda s: s.token(tenant=None), "no 'tenant' claim"),
        (lambda s: s.token(iss="https://evil.example.org"), "issuer is not trusted"),
        (lambda s: s.token(key=SigningKey("RS256"), kid=s.keys[0].kid), "signature"),
        (lambda s: s.token(key=s.keys[1], alg="ES256", kid=s.keys[0].kid), "does not match"),
        (lambda s: jwt.encode({"iss": s.issuer, "sub": "u", "aud": AUDIENCE, "exp": 2**31},
                              "k" * 32, algorithm="HS256"), "algorithm must be"),
        (lambda s: jwt.encode({"iss": s.issuer, "sub": "u", "aud": AUDIENCE, "exp": 2**31},
                              "", algorithm="none"), "algorithm must be"),
        (lambda s: "a.b.c", "malformed"),
        (lambda s: "td_unknown", "unknown or revoked"),
        (lambda s: "opaque-thing", "not an API token or a JWT"),
    ],
)
async def test_bad_jwts_are_refused(
    aredis: redis.asyncio.Redis, idp: OidcIssuerServer, make: Any, message: str
) -> None:
    token = make(idp)
    async with authenticator(aredis, idp) as auth:
        with pytest.raises(AuthFailed, match=message) as caught:
            await auth.verify(token)
    assert token not in str(caught.value)


async def test_token_from_another_issuer_is_refused_before_fetching_its_keys(
    aredis: redis.asyncio.Redis, idp: OidcIssuerServer, rogue: OidcIssuerServer
) -> None:
    async with authenticator(aredis, idp) as auth:
        with pytest.raises(AuthFailed, match="issuer is not trusted"):
            await auth.verify(rogue.token())
    assert rogue.jwks_fetches == 0


async def test_clock_skew_within_leeway_is_tolerated(
    aredis: redis.asyncio.Redis, idp: OidcIssuerServer
) -> None:
    async with authenticator(aredis, idp) as auth:
        principal = await auth.verify(idp.token(lifetime_s=-5))  # leeway is 30 s
    assert principal.tenant == "alice"


async def test_unreachable_issuer_is_unavailable_not_accepted(
    aredis: redis.asyncio.Redis, idp: OidcIssuerServer
) -> None:
    idp.available = False
    async with authenticator(aredis, idp) as auth:
        with pytest.raises(JwksUnavailable):
            await auth.verify(idp.token())


async def test_stale_keys_serve_while_the_issuer_is_down(
    aredis: redis.asyncio.Redis, idp: OidcIssuerServer
) -> None:
    async with authenticator(aredis, idp) as auth:
        await auth.verify(idp.token())
        idp.available = False
        with pytest.raises(AuthFailed, match="signing key"):
            await auth.verify(idp.token(key=SigningKey("RS256")))
        principal = await auth.verify(idp.token())
    assert principal.tenant == "alice"


# -- file:// confinement -------------------------------------------------------------------


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """(root, outside): alice's root and a sibling directory she may not touch."""
    root = tmp_path / "alice"
    outside = tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "data").mkdir()
    os.symlink(outside, root / "escape")
    os.symlink(tmp_path / "missing-target", root / "dangling")
    os.symlink(root / "data", root / "inner")
    return root, outside


def test_paths_inside_the_root_resolve(roots: tuple[Path, Path]) -> None:
    root, _ = roots
    real = Path(os.path.realpath(root))
    assert confine_destination(f"file://{root}/data/x.tar", [root]) == real / "data/x.tar"
    assert confine_destination(f"file://{root}/new/dir/y", [root]) == real / "new/dir/y"
    assert confine_destination(f"file://localhost{root}/data/z", [root]) == real / "data/z"
    assert confine_destination(f"file://{root}/inner/a", [root]) == real / "data/a"
    assert confine_destination(f"file://{root}/data/with%20space", [root]) == (
        real / "data/with space"
    )


def test_non_file_urls_pass(roots: tuple[Path, Path]) -> None:
    root, _ = roots
    for url in ("https://example.org/a", "davs://x/y", "rclone://remote/p", "rucio://s:n"):
        assert confine_destination(url, [root]) is None
        assert confine_destination(url, []) is None


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("file://{root}/../elsewhere/x", "'..'"),
        ("file://{root}/data/../../elsewhere/x", "'..'"),
        ("file://{root}/%2e%2e/elsewhere/x", "'..'"),
        ("file://{root}/escape/x", "outside"),
        ("file://{root}/escape", "outside"),
        ("file://{root}/dangling/x", "outside"),
        ("file://{outside}/x", "outside"),
        ("file://{root}-sibling/x", "outside"),
        ("file:///etc/passwd", "outside"),
        ("file://otherhost{root}/x", "name this machine"),
        ("file:relative/x", "absolute"),
        ("file://{root}/x?y", "'?'"),
        ("file://{root}/x%00y", "NUL"),
        ("file://{root}/%ff", "UTF-8"),
    ],
)
def test_paths_escaping_the_root_are_refused(
    roots: tuple[Path, Path], template: str, message: str
) -> None:
    root, outside = roots
    url = template.format(root=root, outside=outside)
    with pytest.raises(PathNotAllowed, match=message):
        confine_destination(url, [root])


def test_no_roots_means_no_local_paths(roots: tuple[Path, Path]) -> None:
    root, _ = roots
    with pytest.raises(PathNotAllowed, match="no local directories"):
        confine_destination(f"file://{root}/data/x", [])


def test_a_root_that_is_itself_a_symlink_still_confines(
    roots: tuple[Path, Path], tmp_path: Path
) -> None:
    root, outside = roots
    link_root = tmp_path / "link-root"
    os.symlink(root, link_root)
    assert confine_destination(f"file://{link_root}/data/x", [link_root]) is not None
    with pytest.raises(PathNotAllowed, match="outside"):
        confine_destination(f"file://{link_root}/escape/x", [link_root])
    with pytest.raises(PathNotAllowed, match="outside"):
        confine_destination(f"file://{outside}/x", [link_root])
