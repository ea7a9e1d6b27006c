"""The /api/v1 REST API over real HTTP, with the real JobStore on a real redis-server.

Every refusal is checked for its status, its problem+json body naming the
field, and for having stored nothing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.oidc_server import AUDIENCE, OidcIssuerServer
from transferd.api import setup_api
from transferd.auth import Authenticator, JwksCache, create_token
from transferd.config import NodeConfig, OidcIssuer, TenantConfig
from transferd.models import Role
from transferd.openapi import openapi_document
from transferd.states import FileState, JobState
from transferd.store import JobStore
from transferd.validation import (
    BACKENDS,
    CHECKSUM_HEX_CHARS,
    MAX_FILES,
    VERIFY_MODES,
    check_url,
)

API = "/api/v1"
PROBLEM = "application/problem+json"


@dataclass
class Node:
    client: TestClient[Any, Any]
    app: web.Application
    redis: redis.asyncio.Redis
    idp: OidcIssuerServer
    roots: dict[str, Path]
    tokens: dict[str, str]

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def body(self, tenant: str = "alice", n: int = 2, **params: Any) -> dict[str, Any]:
        root = self.roots[tenant]
        files = [
            {"source": f"https://src.example.org/data/f{i}.tar",
             "destination": f"file://{root}/in/f{i}.tar", "size": 1000 + i,
             "checksum": "adler32:0a1b2c3d"}
            for i in range(n)
        ]
        return {"files": files, "params": params} if params else {"files": files}

    async def submit(self, who: str, body: dict[str, Any] | None = None,
                     key: str | None = None) -> dict[str, Any]:
        headers = self.auth(who) | ({"Idempotency-Key": key} if key else {})
        tenant = {"alice_reader": "alice", "ops": "ops", "admin": "ops"}.get(who, who)
        async with self.client.post(f"{API}/jobs", json=body or self.body(tenant),
                                    headers=headers) as resp:
            assert resp.status in (200, 201), await resp.text()
            data: dict[str, Any] = await resp.json()
            return data


async def stored(client: redis.asyncio.Redis) -> list[bytes]:
    """Every key a job submission could have written (tokens are not job state)."""
    return sorted([k async for k in client.scan_iter() if not k.startswith(b"td:token:")])


@pytest.fixture
async def node(
    aredis: redis.asyncio.Redis, tmp_path: Path, idp: OidcIssuerServer
) -> AsyncIterator[Node]:
    roots = {name: tmp_path / name for name in ("alice", "bob", "ops")}
    for root in roots.values():
        root.mkdir()
    config = NodeConfig(
        tenants={name: TenantConfig(allowed_roots=[root]) for name, root in roots.items()},
        oidc_issuers=[OidcIssuer(issuer=idp.issuer, audience=[AUDIENCE],
                                 jwks_uri=idp.jwks_uri)],
    )
    tokens = {
        "alice": await create_token(aredis, "alice", Role.SUBMITTER, "alice"),
        "alice_reader": await create_token(aredis, "alice", Role.READER, "dash"),
        "bob": await create_token(aredis, "bob", Role.SUBMITTER, "bob"),
        "ops": await create_token(aredis, "ops", Role.OPERATOR, "oncall"),
        "admin": await create_token(aredis, "ops", Role.ADMIN, "root"),
    }
    app = web.Application()
    auth = Authenticator(aredis, config, jwks=JwksCache(refetch_min_interval_s=0))
    setup_api(app, JobStore(aredis), auth, config)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    yield Node(client, app, aredis, idp, roots, tokens)
    await client.close()
    await auth.close()


async def problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    body: dict[str, Any] = await resp.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "errors"} <= body.keys()
    return body


# -- open routes ---------------------------------------------------------------------------


async def test_health_and_openapi_need_no_credential(node: Node) -> None:
    async with node.client.get(f"{API}/health") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
    async with node.client.get(f"{API}/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["openapi"].startswith("3.1")


def test_openapi_describes_every_route_and_agrees_with_the_validator(node: Node) -> None:
    doc = openapi_document()
    routes = {
        (r.method.lower(), r.resource.canonical.removeprefix(API))
        for r in node.app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith(API)
        and r.method != "HEAD"
    }
    described = {
        (method, path) for path, item in doc["paths"].items()
        for method in item if method != "parameters"
    }
    assert routes == described
    schemas = doc["components"]["schemas"]
    params = schemas["JobParams"]["properties"]
    assert params["backend"]["enum"] == list(BACKENDS)
    assert params["verify_checksum"]["enum"] == list(VERIFY_MODES)
    assert schemas["JobRequest"]["properties"]["files"]["maxItems"] == MAX_FILES
    for alg in CHECKSUM_HEX_CHARS:
        assert alg in schemas["FileSpec"]["properties"]["checksum"]["pattern"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method != "parameters" and op.get("security") != []:
                assert {"400", "401", "403"} <= op["responses"].keys(), (method, path)


async def test_unknown_api_route_is_a_problem(node: Node) -> None:
    async with node.client.get(f"{API}/nope", headers=node.auth("alice")) as resp:
        await problem(resp, 404)
    async with node.client.put(f"{API}/jobs", headers=node.auth("alice")) as resp:
        await problem(resp, 405)


# -- 401: no, bad, expired, foreign credentials --------------------------------------------


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer td_not-a-real-token",
     "Bearer garbage", "Bearer a.b.c"],
)
async def test_missing_or_bad_credential_is_401_and_stores_nothing(
    node: Node, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    async with node.client.post(f"{API}/jobs", json=node.body(), headers=headers) as resp:
        body = await problem(resp, 401)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    if header:
        assert header.partition(" ")[2] not in json.dumps(body) or not header.partition(" ")[2]
    assert await stored(node.redis) == []


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"lifetime_s": -600}, "expired"),
        ({"iss": "https://evil.example.org"}, "issuer"),
        ({"aud": "someone-else"}, "audience"),
        ({"nbf": 2**31}, "not valid yet"),
    ],
)
async def test_refused_jwt_is_401_and_stores_nothing(
    node: Node, claims: dict[str, Any], why: str
) -> None:
    token = node.idp.token(**claims)
    headers = {"Authorization": f"Bearer {token}"}
    async with node.client.post(f"{API}/jobs", json=node.body(), headers=headers) as resp:
        body = await problem(resp, 401)
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert why in body["detail"]
    assert token not in json.dumps(body)
    assert await stored(node.redis) == []


async def test_jwt_signed_by_an_unconfigured_issuer_is_401(node: Node) -> None:
    rogue = OidcIssuerServer()
    await rogue.start()
    try:
        token = rogue.token()
        async with node.client.get(f"{API}/jobs",
                                   headers={"Authorization": f"Bearer {token}"}) as resp:
            await problem(resp, 401)
    finally:
        await rogue.stop()
    assert rogue.jwks_fetches == 0


async def test_unreachable_issuer_is_503_not_401(node: Node) -> None:
    node.idp.available = False
    headers = {"Authorization": f"Bearer {node.idp.token()}"}
    async with node.client.post(f"{API}/jobs", json=node.body(), headers=headers) as resp:
        await problem(resp, 503)
    assert await stored(node.redis) == []


# -- 403: roles that may not act -----------------------------------------------------------


async def test_reader_may_not_submit_cancel_or_retry(node: Node) -> None:
    async with node.client.post(f"{API}/jobs", json=node.body(),
                                headers=node.auth("alice_reader")) as resp:
        await problem(resp, 403)
    assert await stored(node.redis) == []

    job = await node.submit("alice")
    before = await stored(node.redis)
    job_url = f"{API}/jobs/{job['job_id']}"
    async with node.client.delete(job_url, headers=node.auth("alice_reader")) as resp:
        await problem(resp, 403)
    async with node.client.post(f"{job_url}/retry", headers=node.auth("alice_reader")) as resp:
        await problem(resp, 403)
    async with node.client.get(job_url, headers=node.auth("alice_reader")) as resp:
        assert resp.status == 200
        assert (await resp.json())["state"] == JobState.SUBMITTED
    assert await stored(node.redis) == before


async def test_jwt_reader_scope_may_only_read(node: Node) -> None:
    token = node.idp.token(scope="openid transferd.reader")
    headers = {"Authorization": f"Bearer {token}"}
    async with node.client.post(f"{API}/jobs", json=node.body(), headers=headers) as resp:
        await problem(resp, 403)
    async with node.client.get(f"{API}/jobs", headers=headers) as resp:
        assert resp.status == 200
    assert await stored(node.redis) == []


async def test_submitter_may_not_list_another_tenant(node: Node) -> None:
    async with node.client.get(f"{API}/jobs", params={"owner": "bob"},
                               headers=node.auth("alice")) as resp:
        body = await problem(resp, 403)
    assert body["field"] == "owner"


# -- 404: another tenant's job -------------------------------------------------------------


async def test_another_tenants_job_is_404_for_every_verb(node: Node) -> None:
    job = await node.submit("alice")
    job_url = f"{API}/jobs/{job['job_id']}"
    before = await stored(node.redis)
    async with node.client.get(job_url, headers=node.auth("bob")) as resp:
        foreign = await problem(resp, 404)
    async with node.client.get(f"{API}/jobs/no-such-job", headers=node.auth("bob")) as resp:
        missing = await problem(resp, 404)
    assert foreign["title"] == missing["title"] and foreign["type"] == missing["type"]
    for method, url in (("DELETE", job_url), ("POST", f"{job_url}/retry"),
                        ("GET", f"{job_url}/files")):
        async with node.client.request(method, url, headers=node.auth("bob")) as resp:
            await problem(resp, 404)
    assert await stored(node.redis) == before
    async with node.client.get(job_url, headers=node.auth("alice")) as resp:
        assert (await resp.json())["state"] == JobState.SUBMITTED  # not canceled by bob


# -- 400: destinations outside the roots, malformed bodies ---------------------------------


async def test_destination_outside_roots_is_400_naming_the_field(node: Node) -> None:
    alice = node.roots["alice"]
    os.symlink(node.roots["bob"], alice / "to-bob")
    cases = [
        f"file://{node.roots['bob']}/x",
        f"file://{alice}/../bob/x",
        f"file://{alice}/to-bob/x",
        "file:///etc/cron.d/evil",
    ]
    for bad in cases:
        body = node.body("alice", n=3)
        body["files"][1]["destination"] = bad
        async with node.client.post(f"{API}/jobs", json=body,
                                    headers=node.auth("alice")) as resp:
            problem_body = await problem(resp, 400)
        assert problem_body["field"] == "files[1].destination", bad
        assert [e["field"] for e in problem_body["errors"]] == ["files[1].destination"]
    assert await stored(node.redis) == []


async def test_file_source_outside_roots_is_refused(node: Node) -> None:
    body = node.body("alice", n=1)
    body["files"][0]["source"] = "file:///etc/shadow"
    async with node.client.post(f"{API}/jobs", json=body, headers=node.auth("alice")) as resp:
        assert (await problem(resp, 400))["field"] == "files[0].source"
    assert await stored(node.redis) == []


def _file(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"source": "https://src.example.org/a",
                            "destination": "https://dst.example.org/a"}
    spec.update(overrides)
    return {k: v for k, v in spec.items() if v is not None}


BAD_BODIES: list[tuple[Any, str]] = [
    ([], "body"),
    ("files", "body"),
    ({}, "files"),
    ({"files": []}, "files"),
    ({"files": {"source": "x"}}, "files"),
    ({"files": [_file()], "extra": 1}, "extra"),
    ({"files": ["https://a/b"]}, "files[0]"),
    ({"files": [_file(), _file(source=None)]}, "files[1].source"),
    ({"files": [_file(destination="ftp://h/x")]}, "files[0].destination"),
    ({"files": [_file(source="https:///nohost")]}, "files[0].source"),
    ({"files": [_file(source="https://user:pw@h/x")]}, "files[0].source"),
    ({"files": [_file(source="https://h/a b")]}, "files[0].source"),
    ({"files": [_file(source=42)]}, "files[0].source"),
    ({"files": [_file(size=-1)]}, "files[0].size"),
    ({"files": [_file(size="10")]}, "files[0].size"),
    ({"files": [_file(size=True)]}, "files[0].size"),
    ({"files": [_file(checksum="md4:00")]}, "files[0].checksum"),
    ({"files": [_file(checksum="adler32:xyz12345")]}, "files[0].checksum"),
    ({"files": [_file(checksum="md5:0a1b2c3d")]}, "files[0].checksum"),
    ({"files": [_file(colour="red")]}, "files[0].colour"),
    ({"files": [_file(metadata={"k": "v" * 5000})]}, "files[0].metadata"),
    ({"files": [_file()], "params": []}, "params"),
    ({"files": [_file()], "params": {"backend": "ftp"}}, "params.backend"),
    ({"files": [_file()], "params": {"verify_checksum": "maybe"}}, "params.verify_checksum"),
    ({"files": [_file()], "params": {"overwrite": "yes"}}, "params.overwrite"),
    ({"files": [_file()], "params": {"priority": 6}}, "params.priority"),
    ({"files": [_file()], "params": {"priority": 2.5}}, "params.priority"),
    ({"files": [_file()], "params": {"max_retries": 101}}, "params.max_retries"),
    ({"files": [_file()], "params": {"retry_delay_s": -1}}, "params.retry_delay_s"),
    ({"files": [_file()], "params": {"deadline": "2001-01-01T00:00:00Z"}}, "params.deadline"),
    ({"files": [_file()], "params": {"deadline": "2099-01-01T00:00:00"}}, "params.deadline"),
    ({"files": [_file()], "params": {"deadline": "tomorrow"}}, "params.deadline"),
    ({"files": [_file()], "params": {"activity": ""}}, "params.activity"),
    ({"files": [_file()], "params": {"metadata": {"k": "v" * 4100}}}, "params.metadata"),
    ({"files": [_file()], "params": {"colour": "red"}}, "params.colour"),
]


@pytest.mark.parametrize(("payload", "field"), BAD_BODIES)
async def test_malformed_body_is_400_naming_the_field(
    node: Node, payload: Any, field: str
) -> None:
    async with node.client.post(f"{API}/jobs", json=payload, headers=node.auth("alice")) as resp:
        body = await problem(resp, 400)
    assert body["field"] == field, body
    assert field in [e["field"] for e in body["errors"]]
    assert await stored(node.redis) == []


@pytest.mark.parametrize(
    ("raw", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b'{"files": [{"source": NaN}]}', "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        (b"", "application/json", 400),
        (b"files=x", "application/x-www-form-urlencoded", 415),
    ],
)
async def test_unparsable_body_is_refused(
    node: Node, raw: bytes, content_type: str, status: int
) -> None:
    headers = node.auth("alice") | {"Content-Type": content_type}
    async with node.client.post(f"{API}/jobs", data=raw, headers=headers) as resp:
        body = await problem(resp, status)
    if status == 400:
        assert body["field"] == "body"
    assert await stored(node.redis) == []


async def test_every_bad_field_is_reported_at_once(node: Node) -> None:
    payload = {"files": [_file(size=-1), _file(checksum="crc32:zz")],
               "params": {"priority": 0}}
    async with node.client.post(f"{API}/jobs", json=payload, headers=node.auth("alice")) as resp:
        body = await problem(resp, 400)
    assert {e["field"] for e in body["errors"]} == {
        "files[0].size", "files[1].checksum", "params.priority"
    }


async def test_too_many_files_is_400(node: Node) -> None:
    payload = {"files": [_file()] * (MAX_FILES + 1)}
    async with node.client.post(f"{API}/jobs", json=payload, headers=node.auth("alice")) as resp:
        assert (await problem(resp, 400))["field"] == "files"
    assert await stored(node.redis) == []


async def test_bad_idempotency_key_is_400(node: Node) -> None:
    for key in ("k" * 201, "has space"):
        headers = node.auth("alice") | {"Idempotency-Key": key}
        async with node.client.post(f"{API}/jobs", json=node.body(), headers=headers) as resp:
            assert (await problem(resp, 400))["field"] == "Idempotency-Key"
    assert await stored(node.redis) == []


@pytest.mark.parametrize(
    ("query", "field"),
    [({"state": "DONE"}, "state"), ({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"),
     ({"cursor": "bogus"}, "cursor"), ({"colour": "red"}, "colour")],
)
async def test_bad_list_query_is_400(node: Node, query: dict[str, str], field: str) -> None:
    async with node.client.get(f"{API}/jobs", params=query, headers=node.auth("ops")) as resp:
        assert (await problem(resp, 400))["field"] == field


# -- positives -----------------------------------------------------------------------------


async def test_submit_then_read_the_job_and_its_files(node: Node) -> None:
    body = node.body("alice", n=3, priority=5, max_retries=2, activity="lofar-subbands",
                     deadline="2099-01-01T00:00:00Z", metadata={"obs": "L123"})
    async with node.client.post(f"{API}/jobs", json=body, headers=node.auth("alice")) as resp:
        assert resp.status == 201
        created = await resp.json()
        assert resp.headers["Location"] == f"{API}/jobs/{created['job_id']}"
    assert created["state"] == JobState.SUBMITTED
    async with node.client.get(f"{API}/jobs/{created['job_id']}",
                               headers=node.auth("alice")) as resp:
        job = await resp.json()
    assert job["owner"] == "alice"
    assert job["params"]["priority"] == 5 and job["params"]["activity"] == "lofar-subbands"
    assert job["params"]["metadata"] == {"obs": "L123"}
    assert job["totals"]["files"] == 3
    assert job["totals"]["files_by_state"][FileState.SUBMITTED] == 3
    assert job["totals"]["bytes_total"] == 1000 + 1001 + 1002

    async with node.client.get(f"{API}/jobs/{created['job_id']}/files", params={"limit": "2"},
                               headers=node.auth("alice")) as resp:
        page1 = await resp.json()
    async with node.client.get(f"{API}/jobs/{created['job_id']}/files",
                               params={"limit": "2", "cursor": page1["next_cursor"]},
                               headers=node.auth("alice")) as resp:
        page2 = await resp.json()
    files = page1["files"] + page2["files"]
    assert [f["index"] for f in files] == [0, 1, 2]
    assert page2["next_cursor"] is None
    assert files[0]["checksum"] == "adler32:0a1b2c3d"
    assert files[2]["destination"] == f"file://{node.roots['alice']}/in/f2.tar"


async def test_idempotent_replay_returns_the_same_job(node: Node) -> None:
    first = await node.submit("alice", key="run-42")
    headers = node.auth("alice") | {"Idempotency-Key": "run-42"}
    async with node.client.post(f"{API}/jobs", json=node.body(), headers=headers) as resp:
        assert resp.status == 200
        replay = await resp.json()
    assert replay["job_id"] == first["job_id"]
    other = await node.submit("alice", key="run-43")
    bobs = await node.submit("bob", key="run-42")  # same key, other caller: another job
    assert len({first["job_id"], other["job_id"], bobs["job_id"]}) == 3


async def test_idempotency_key_is_kept_24_hours_then_makes_a_new_job(node: Node) -> None:
    day_s = 24 * 3600
    headers = node.auth("alice") | {"Idempotency-Key": "nightly-7"}

    async def post() -> tuple[int, str]:
        async with node.client.post(f"{API}/jobs", json=node.body(), headers=headers) as resp:
            return resp.status, (await resp.json())["job_id"]

    async def idem_record() -> tuple[bytes, int]:
        (key,) = [k async for k in node.redis.scan_iter(match="*:idem:*")]
        return key, int(await node.redis.ttl(key))

    status, first = await post()
    assert status == 201
    key, ttl_s = await idem_record()
    assert b"nightly-7" in key
    assert day_s - 60 < ttl_s <= day_s
    assert await post() == (200, first)  # within the window: the same job

    await node.redis.delete(key)  # as Redis does once the 24 h are over
    status, second = await post()
    assert status == 201 and second != first
    key, ttl_s = await idem_record()  # a fresh window, for the new job
    assert day_s - 60 < ttl_s <= day_s
    assert await post() == (200, second)
    async with node.client.get(f"{API}/jobs/{first}", headers=node.auth("alice")) as resp:
        assert resp.status == 200  # the first job itself is still there


async def test_a_job_of_100000_files_is_taken_in_one_request(node: Node) -> None:
    body = node.body("alice", n=MAX_FILES)
    assert MAX_FILES == 100_000
    async with node.client.post(f"{API}/jobs", json=body, headers=node.auth("alice")) as resp:
        assert resp.status == 201, await resp.text()
        job_id = (await resp.json())["job_id"]
    async with node.client.get(f"{API}/jobs/{job_id}", headers=node.auth("alice")) as resp:
        assert resp.status == 200
        totals = (await resp.json())["totals"]
    assert totals["files"] == 100_000
    assert totals["files_by_state"][FileState.SUBMITTED] == 100_000
    assert totals["bytes_total"] == sum(1000 + i for i in range(100_000))
    async with node.client.get(f"{API}/jobs/{job_id}/files", params={"state": "SUBMITTED"},
                               headers=node.auth("alice")) as resp:
        assert resp.status == 200
        assert (await resp.json())["files"][0]["destination"] == body["files"][0]["destination"]


async def test_listing_shows_own_jobs_only_and_pages(node: Node) -> None:
    alice_ids = {(await node.submit("alice"))["job_id"] for _ in range(5)}
    bob_ids = {(await node.submit("bob"))["job_id"] for _ in range(2)}
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        async with node.client.get(f"{API}/jobs", params=params,
                                   headers=node.auth("alice")) as resp:
            assert resp.status == 200
            page = await resp.json()
        pages += 1
        seen += [j["job_id"] for j in page["jobs"]]
        assert all(j["owner"] == "alice" for j in page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) and set(seen) == alice_ids
    assert pages >= 3

    async with node.client.get(f"{API}/jobs", params={"owner": "alice"},
                               headers=node.auth("alice_reader")) as resp:
        assert {j["job_id"] for j in (await resp.json())["jobs"]} == alice_ids
    async with node.client.get(f"{API}/jobs", headers=node.auth("bob")) as resp:
        assert {j["job_id"] for j in (await resp.json())["jobs"]} == bob_ids


async def test_operator_sees_and_acts_on_all_tenants(node: Node) -> None:
    alice_job = (await node.submit("alice"))["job_id"]
    bob_job = (await node.submit("bob"))["job_id"]
    async with node.client.get(f"{API}/jobs", headers=node.auth("ops")) as resp:
        assert {j["job_id"] for j in (await resp.json())["jobs"]} == {alice_job, bob_job}
    async with node.client.get(f"{API}/jobs", params={"owner": "bob"},
                               headers=node.auth("ops")) as resp:
        assert [j["job_id"] for j in (await resp.json())["jobs"]] == [bob_job]
    async with node.client.get(f"{API}/jobs", params={"state": "submitted"},
                               headers=node.auth("admin")) as resp:
        assert len((await resp.json())["jobs"]) == 2
    async with node.client.delete(f"{API}/jobs/{bob_job}", headers=node.auth("ops")) as resp:
        assert resp.status == 200
        assert (await resp.json())["state"] == JobState.CANCELED


async def test_cancel_then_retry_own_job(node: Node) -> None:
    job_id = (await node.submit("alice"))["job_id"]
    async with node.client.delete(f"{API}/jobs/{job_id}", headers=node.auth("alice")) as resp:
        assert resp.status == 200
        canceled = await resp.json()
    assert canceled["state"] == JobState.CANCELED
    assert canceled["totals"]["files_by_state"][FileState.CANCELED] == 2
    async with node.client.post(f"{API}/jobs/{job_id}/retry",
                                headers=node.auth("alice")) as resp:
        assert resp.status == 200
        retried = await resp.json()
    assert retried == {"job_id": job_id, "state": JobState.SUBMITTED, "retried": 2}


async def test_jwt_from_the_configured_issuer_is_accepted(node: Node) -> None:
    token = node.idp.token(sub="astro-7", tenant="bob")
    headers = {"Authorization": f"Bearer {token}"}
    async with node.client.post(f"{API}/jobs", json=node.body("bob"), headers=headers) as resp:
        assert resp.status == 201
        job_id = (await resp.json())["job_id"]
    async with node.client.get(f"{API}/jobs/{job_id}", headers=headers) as resp:
        job = await resp.json()
    assert job["owner"] == "bob"
    assert job["submitter"] == f"astro-7@{node.idp.issuer}"
    async with node.client.get(f"{API}/jobs/{job_id}", headers=node.auth("bob")) as resp:
        assert resp.status == 200  # the same tenant, whichever credential


async def test_credentials_never_reach_the_log(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    jwt_token = node.idp.token()
    expired = node.idp.token(lifetime_s=-600)
    await node.submit("alice")
    for credential in (node.tokens["alice"], jwt_token, expired, "td_wrong-secret"):
        headers = {"Authorization": f"Bearer {credential}"}
        async with node.client.get(f"{API}/jobs", headers=headers) as resp:
            text = await resp.text()
        assert credential not in text
    assert "GET /api/v1/jobs" in caplog.text  # the request log is on
    for credential in (*node.tokens.values(), jwt_token, expired, "td_wrong-secret"):
        assert credential not in caplog.text


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://[::1]:8443/x", None),
        ("davs://webdav.example.org:443/a%20b", None),
        ("http://host", None),
        ("rclone://remote/path", None),
        ("rucio://scope:name", None),
        ("file:///data/x", None),
        ("FILE://localhost/data/x", None),
        ("https://host:70000/x", "port is out of range"),
        ("https://ho st/x", "spaces"),
        ("https://:80/x", "malformed"),
        ("https:/x", "expected https://"),
        ("gsiftp://host/x", "unsupported scheme gsiftp:"),
        ("/data/x", "unsupported scheme (none)"),
        ("rucio://", "nothing after"),
        ("davs://u@host/x", "credentials"),
    ],
)
def test_url_checks(url: str, why: str | None) -> None:
    result = check_url(url)
    if why is None:
        assert result is None
    else:
        assert result is not None and why in result
