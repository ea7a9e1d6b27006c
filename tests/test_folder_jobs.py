"""Folder sources in POST /api/v1/jobs: listed at submission, one file record per file.

Real servers: nginx with dav-ext PROPFIND (plain and behind a bearer check),
wsgidav for ``oc:checksums`` in the listing, local directories, and small
aiohttp servers that fail (5xx) or stall, so the limits show.  A refused
folder stores nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.node_proc import Node, create_token, wait_job
from tests.redis_server import RedisServer
from tests.servers import NginxServer, WsgidavServer, _stop, start_nginx
from transferd.api import setup_api
from transferd.auth import Authenticator
from transferd.auth import create_token as create_api_token
from transferd.client import Client, ClientError
from transferd.config import NodeConfig, TenantConfig
from transferd.folders import FolderLimits
from transferd.models import Role
from transferd.store import JobStore

MiB = 1024 * 1024
TREE = {  # relative path → size
    "a.bin": 3 * MiB + 11,
    "empty.bin": 0,
    "sub/b.bin": 70_000,
    "sub/with space.bin": 1,
    "sub/deeper/c.bin": 2 * MiB,
}


def make_tree(root: Path) -> dict[str, bytes]:
    blobs = {rel: os.urandom(size) for rel, size in TREE.items()}
    for rel, data in blobs.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return blobs


def adler32_hex(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


def all_files(client: Client, job_id: str) -> list[dict[str, Any]]:
    return list(client.iter_files(job_id))


JOB_KEYS = (b"td:job", b"td:file:", b"td:creds", b"td:idem:", b"td:q:", b"td:seq")


def job_keys(url: str) -> list[bytes]:
    """The keys a stored job would have left (its hashes, indexes, queues, tokens)."""
    client = redis.Redis.from_url(url)
    try:
        return sorted(k for k in client.scan_iter() if k.startswith(JOB_KEYS))
    finally:
        client.close()


def refused(client: Client, files: list[dict[str, Any]], **kwargs: Any) -> ClientError:
    with pytest.raises(ClientError) as err:
        client.submit(files, **kwargs)
    return err.value


def test_folders_expand_into_one_verified_file_each(
    node_factory: Callable[..., Node], redis_server: RedisServer, nginx_server: NginxServer,
    tmp_path: Path,
) -> None:
    remote = make_tree(nginx_server.root / "set")
    local = make_tree(tmp_path / "local" / "set")
    single = os.urandom(5000)
    (tmp_path / "local" / "single.bin").write_bytes(single)
    dest = tmp_path / "dest"
    dest.mkdir()
    node = node_factory(allow_roots=[dest, tmp_path / "local"], workers=2)
    client = Client(node.url, create_token("lab", "submitter", redis_url=redis_server.url))
    dav = nginx_server.url.replace("http://", "dav://")
    files: list[dict[str, Any]] = [
        {"source": f"{nginx_server.url}/set/", "destination": f"file://{dest}/http/",
         "metadata": {"run": 7}},
        {"source": f"file://{tmp_path}/local/set/", "destination": f"{dav}/copy/",
         "checksum": "adler32"},
        {"source": f"file://{tmp_path}/local/single.bin", "destination": f"file://{dest}/one.bin"},
    ]
    job_id = client.submit(files)["job_id"]
    job = wait_job(client, job_id, timeout_s=90)
    assert job["state"] == "FINISHED", all_files(client, job_id)
    assert job["totals"]["files"] == 2 * len(TREE) + 1
    records = all_files(client, job_id)
    assert len(records) == 2 * len(TREE) + 1

    expected: dict[str, bytes] = {}
    for rel, data in remote.items():
        expected[f"file://{dest}/http/{rel.replace(' ', '%20')}"] = data
    for rel, data in local.items():
        expected[f"{dav}/copy/{rel.replace(' ', '%20')}"] = data
    expected[f"file://{dest}/one.bin"] = single
    assert sorted(r["destination"] for r in records) == sorted(expected)
    for record in records:
        data = expected[record["destination"]]
        assert record["state"] == "FINISHED", record
        assert record["size"] == len(data)
        assert record["verified_checksum"] == f"adler32:{adler32_hex(data)}"
    # relative paths kept on both kinds of destination, bytes intact
    for rel, data in remote.items():
        assert (dest / "http" / rel).read_bytes() == data
    assert [r["metadata"] for r in records if r["source"].startswith(nginx_server.url)] \
        == [{"run": 7}] * len(TREE)
    for rel, data in local.items():
        assert (nginx_server.root / "copy" / rel).read_bytes() == data
    assert not list(dest.rglob("*.part*"))


def test_a_listing_declares_sizes_and_checksums(
    node_factory: Callable[..., Node], redis_server: RedisServer,
    wsgidav_server: WsgidavServer, tmp_path: Path,
) -> None:
    blobs = make_tree(wsgidav_server.root / "set")
    dest = tmp_path / "dest"
    dest.mkdir()
    node = node_factory(allow_roots=[dest], workers=0)  # nothing runs: the records as listed
    client = Client(node.url, create_token("lab", "submitter", redis_url=redis_server.url))
    source = wsgidav_server.url.replace("http://", "dav://") + "/set/"
    job_id = client.submit([{"source": source, "destination": f"file://{dest}/"}])["job_id"]
    records = {r["source"].removeprefix(source): r for r in all_files(client, job_id)}
    assert sorted(records) == sorted(rel.replace(" ", "%20") for rel in TREE)
    for rel, data in blobs.items():
        record = records[rel.replace(" ", "%20")]
        assert record["size"] == len(data)
        assert record["checksum"] == f"adler32:{adler32_hex(data)}"
        assert record["destination"] == f"file://{dest}/{rel.replace(' ', '%20')}"
        assert record["state"] == "SUBMITTED"


def test_a_guarded_folder_is_listed_with_the_source_token(
    node_factory: Callable[..., Node], redis_server: RedisServer, tmp_path: Path,
) -> None:
    token = "folder-tok.8c1d2e"
    (tmp_path / "nginx" / "state").mkdir(parents=True)
    server = start_nginx(tmp_path / "nginx" / "root", tmp_path / "nginx" / "state", bearer=token)
    try:
        blobs = make_tree(server.root / "set")
        dest = tmp_path / "dest"
        dest.mkdir()
        node = node_factory(allow_roots=[dest], workers=2)
        client = Client(node.url, create_token("lab", "submitter", redis_url=redis_server.url))
        spec = {"source": f"{server.url}/set/", "destination": f"file://{dest}/"}

        err = refused(client, [{**spec, "source_token": "wrong-tok.1"}])
        assert err.status == 422 and err.fields == ["files[0].source"]
        assert err.problem["type"].endswith("/folder-refused")
        assert "401" in err.problem["detail"] and "wrong-tok.1" not in json.dumps(err.problem)
        assert job_keys(redis_server.url) == []

        job_id = client.submit([{**spec, "source_token": token}])["job_id"]
        assert wait_job(client, job_id, timeout_s=90)["state"] == "FINISHED"
        for rel, data in blobs.items():
            assert (dest / rel).read_bytes() == data
        assert all(e.status != 401 for e in server.log_entries()[1:])  # only the wrong token's
        assert token not in json.dumps(all_files(client, job_id))
        assert token not in "".join(node.proc.log)
    finally:
        _stop(server.proc)


def test_refused_folders_store_nothing(
    node_factory: Callable[..., Node], redis_server: RedisServer, nginx_server: NginxServer,
    tmp_path: Path,
) -> None:
    dest, local, outside = tmp_path / "dest", tmp_path / "local", tmp_path / "outside"
    for d in (dest, local / "set", local / "void", outside):
        d.mkdir(parents=True)
    (outside / "secret.txt").write_text("not yours")
    (local / "set" / "ok.bin").write_bytes(b"ok")
    (local / "set" / "escape.txt").symlink_to(outside / "secret.txt")
    (nginx_server.root / "there").mkdir()
    (nginx_server.root / "there" / "x.bin").write_bytes(b"x")
    node = node_factory(allow_roots=[dest, local], workers=0)
    client = Client(node.url, create_token("lab", "submitter", redis_url=redis_server.url))
    fine = {"source": f"{nginx_server.url}/there/", "destination": f"file://{dest}/there/"}

    cases: list[tuple[dict[str, Any], int, str, str]] = [
        ({"source": f"{nginx_server.url}/missing/", "destination": f"file://{dest}/m/"},
         422, "files[1].source", "folder-not-found"),
        ({"source": f"file://{local}/missing/", "destination": f"file://{dest}/m/"},
         422, "files[1].source", "folder-not-found"),
        ({"source": f"file://{local}/void/", "destination": f"file://{dest}/m/"},
         422, "files[1].source", "empty-folder"),
        ({"source": f"file://{local}/set/", "destination": f"file://{dest}/m/"},
         400, "files[1].source", "path-not-allowed"),  # the symlink leads out of the roots
        ({"source": f"{nginx_server.url}/there/", "destination": f"file://{outside}/"},
         400, "files[1].destination", "path-not-allowed"),
        ({"source": f"{nginx_server.url}/there/", "destination": f"file://{dest}/x.bin"},
         400, "files[1].destination", "invalid-request"),
        ({"source": f"{nginx_server.url}/there/", "destination": f"file://{dest}/m/",
          "checksum": "adler32:0a1b2c3d"}, 400, "files[1].checksum", "invalid-request"),
    ]
    for spec, status, field, kind in cases:
        err = refused(client, [fine, spec])
        assert (err.status, err.fields, err.problem["type"].rsplit("/", 1)[-1]) \
            == (status, [field], kind), err.problem
    assert "escape.txt" in json.dumps(refused(client, [fine, cases[3][0]]).problem)
    assert client.jobs()["jobs"] == [] and job_keys(redis_server.url) == []

    # a replay answers with the job stored before, even once the folder is gone
    first = client.submit([fine], idempotency_key="folder-once")["job_id"]
    (nginx_server.root / "there" / "x.bin").unlink()
    (nginx_server.root / "there").rmdir()
    assert client.submit([fine], idempotency_key="folder-once")["job_id"] == first
    assert len(client.jobs()["jobs"]) == 1


# -- the limits, on an in-process API --------------------------------------------------------


async def _bad_dav(request: web.Request) -> web.Response:
    if request.path.startswith("/down/"):
        return web.Response(status=503)
    await asyncio.sleep(3)  # /slow/: longer than the listing may take
    return web.Response(status=207)


@pytest.fixture
async def api(aredis: redis.asyncio.Redis, tmp_path: Path) -> AsyncIterator[
        tuple[TestClient[Any, Any], dict[str, str], str]]:
    config = NodeConfig(tenants={"alice": TenantConfig(allowed_roots=[tmp_path])})
    token = await create_api_token(aredis, "alice", Role.SUBMITTER, "alice")
    app = web.Application()
    auth = Authenticator(aredis, config)
    setup_api(app, JobStore(aredis), auth, config,
              folder_limits=FolderLimits(timeout_s=0.5, max_files=3))
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    bad = web.Application()
    bad.router.add_route("*", "/{tail:.*}", _bad_dav)
    bad_server = TestServer(bad, host="127.0.0.1")
    await bad_server.start_server()
    await client.start_server()
    yield client, {"Authorization": f"Bearer {token}"}, str(bad_server.make_url("")).rstrip("/")
    await client.close()
    await bad_server.close()
    await auth.close()


async def test_listing_limits_failures_and_stalls(
    api: tuple[TestClient[Any, Any], dict[str, str], str], aredis: redis.asyncio.Redis,
    nginx_server: NginxServer, tmp_path: Path,
) -> None:
    client, headers, bad_url = api
    for i in range(4):
        (nginx_server.root / "four" / f"f{i}").parent.mkdir(exist_ok=True)
        (nginx_server.root / "four" / f"f{i}").write_bytes(b"x")
    dest = f"file://{tmp_path}/out/"
    cases = [
        (f"{nginx_server.url}/four/", 422, "too-many-files", "more than 3 files"),
        (f"{bad_url}/down/", 502, "folder-unavailable", "503"),
        (f"{bad_url}/slow/", 504, "folder-timeout", "longer than"),
    ]
    for source, status, kind, words in cases:
        body = {"files": [{"source": source, "destination": dest}]}
        async with client.post("/api/v1/jobs", json=body, headers=headers) as resp:
            assert resp.status == status, await resp.text()
            assert resp.content_type == "application/problem+json"
            problem = await resp.json()
        assert problem["field"] == "files[0].source"
        assert problem["type"].endswith(f"/{kind}") and words in problem["detail"], problem
    assert [k async for k in aredis.scan_iter() if k.startswith(JOB_KEYS)] == []
