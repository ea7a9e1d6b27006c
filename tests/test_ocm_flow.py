"""OCM end to end between two real `transferd serve` nodes on loopback (separate Redis DBs)."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urljoin

import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.node_proc import Node, adler32_hex, wait_until
from tests.ocm_nodes import post_json, start_ocm_node, write_directory
from tests.servers import NginxServer
from transferd.ocm.signatures import sign_request

MiB = 1024 * 1024


def signed_post(url: str, body: Any, key: Ed25519PrivateKey, keyid: str,
                created: int | None = None) -> tuple[int, Any]:
    raw = json.dumps(body).encode()  # the bytes post_json sends, so the digest matches
    return post_json(url, body, sign_request("POST", url, {"Content-Type": "application/json"},
                                             raw, key, keyid, created=created))


def make_tree(root: Path) -> dict[str, bytes]:
    files = {"a.bin": os.urandom(3 * MiB + 5), "sub/b.txt": b"hello\n", "sub/deep/c.bin":
             os.urandom(200_000), "empty.dat": b""}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


@pytest.fixture
def mesh(tmp_path: Path) -> Path:
    return tmp_path / "mesh.json"


def test_invite_share_accept_transfer_notify(
    node_factory: Callable[..., Node], redis_url: str, tmp_path: Path, mesh: Path,
) -> None:
    outbox, inbox = tmp_path / "outbox", tmp_path / "inbox"
    (outbox / "run42").mkdir(parents=True)
    inbox.mkdir()
    files = make_tree(outbox / "run42")
    recipients = {"alice": {"tenant": "lab", "root": str(inbox)}}
    a = start_ocm_node(node_factory, tmp_path, "a", 1, redis_url, directory=mesh,
                       recipients=recipients, allow_roots=[outbox])
    b = start_ocm_node(node_factory, tmp_path, "b", 2, redis_url, directory=mesh,
                       recipients={"bob": {"tenant": "lab", "root": str(inbox)}})
    write_directory(mesh, [a.host, b.host])

    disc = json.loads(urllib.request.urlopen(f"{b.node.url}/.well-known/ocm").read())
    assert disc["apiVersion"] == "1.3.0" and disc["endPoint"].endswith("/ocm")
    assert {"notifications", "invites", "exchange-token", "http-sig"} <= set(disc["capabilities"])
    assert disc["tokenEndPoint"] and disc["jwksUri"]
    assert json.loads(urllib.request.urlopen(f"{b.node.url}/ocm-provider").read()) == disc
    # what a peer needs to pick a protocol: both resource types, user shares, both webdav roles
    assert (disc["enabled"], disc["provider"], disc["criteria"]) == (True, "b", [])
    assert sorted(r["name"] for r in disc["resourceTypes"]) == ["file", "folder"]
    for rtype in disc["resourceTypes"]:
        assert rtype["shareTypes"] == ["user"]
        assert {"webdav", "webdav-receive"} <= set(rtype["protocols"])
    a_disc = json.loads(urllib.request.urlopen(f"{a.node.url}/.well-known/ocm").read())
    assert a_disc["provider"] == "a"
    a_webdav = urljoin(a.node.url, a_disc["resourceTypes"][0]["protocols"]["webdav"])

    # invite: B invites, A accepts; both list each other as contacts
    made = b.cli("invite", "create")
    assert made.returncode == 0, made.stderr
    invite = made.stdout.strip()
    assert base64.b64decode(invite).decode().endswith("@" + b.host)
    took = a.cli("invite", "accept", invite)
    assert took.returncode == 0, took.stderr
    assert took.stdout.strip() == f"bob@{b.host}"
    assert a.cli("invite", "accept", invite).returncode != 0  # 409: already accepted
    assert f"alice@{a.host}" in b.cli("contacts").stdout

    # A shares a folder with bob@B (one-off: it expires)
    sent = a.cli("share", "--to", f"bob@{b.host}", str(outbox / "run42"), "--expires", "7d")
    assert sent.returncode == 0, sent.stderr
    sent_id = sent.stdout.strip()
    # the advertised webdav path is where the share is exported (and it wants the secret)
    try:
        urllib.request.urlopen(urllib.request.Request(f"{a_webdav}{sent_id}/", method="HEAD"))
        raise AssertionError("the export answered without credentials")
    except urllib.error.HTTPError as err:
        assert err.code == 401
    pending = wait_until(lambda: b.api("GET", "/shares", query={"state": "pending"})["shares"],
                         30, "the share to arrive")
    share = pending[0]  # type: ignore[index]
    assert set(share) >= {"id", "name", "owner", "sender", "provider", "size", "state",
                          "job_id", "created_at"}
    assert (share["name"], share["state"], share["provider"]) == ("run42", "pending", a.host)
    assert share["size"] == sum(len(d) for d in files.values())
    assert b.client.job(share["job_id"])["state"] == "AWAITING_ACCEPTANCE"
    tx = b.api("GET", f"/transfers/{share['job_id']}")
    assert tx["status"] == "STATUS_TRANSFER_AWAITING_ACCEPTANCE" and tx["status_code"] == 3
    # no decode_responses: the client answers bytes
    secret = cast("bytes | None",
                  redis.Redis.from_url(b.redis_url).get(f"td:ocm:secret:{share['id']}"))
    assert secret

    listed = b.cli("shares", "ls", "--state", "pending")
    assert share["id"] in listed.stdout
    accepted = b.cli("shares", "accept", share["id"])
    assert accepted.returncode == 0, accepted.stderr

    def finished() -> dict[str, Any] | None:
        job = b.client.job(share["job_id"])
        return job if job["state"] in ("FINISHED", "FAILED", "FINISHEDDIRTY") else None

    job = wait_until(finished, 60, "the transfer to end")
    assert job["state"] == "FINISHED"  # type: ignore[index]
    for record in b.client.files(share["job_id"])["files"]:
        rel = record["destination"].split("/run42/", 1)[1]
        assert record["verified_checksum"] == f"adler32:{adler32_hex(inbox / 'run42' / rel)}"
        assert record["checksum"] == record["verified_checksum"]  # published by the sender
    for rel, data in files.items():
        assert (inbox / "run42" / rel).read_bytes() == data
    assert b.api("GET", "/transfers", query={"share_id": share["id"]})["transfers"][0][
        "status"] == "STATUS_TRANSFER_COMPLETE"

    def notified() -> list[str] | None:
        seen = [n["type"] for n in a.api("GET", f"/ocm/sent/{sent_id}")["notifications"]]
        return seen if "TRANSFER_COMPLETED" in seen else None

    assert wait_until(notified, 30, "the completion notice") == [
        "SHARE_ACCEPTED", "TRANSFER_COMPLETED"]
    assert a.api("GET", f"/ocm/sent/{sent_id}")["state"] == "completed"

    # the secret is nowhere: not in either node's log, not in any answer
    answers = json.dumps([b.api("GET", "/shares"), a.api("GET", "/ocm/sent"),
                          b.api("GET", "/transfers")])
    for text in (a.log(), b.log(), answers):
        assert secret.decode() not in text


def test_legacy_datatx_shape_auto_accepted(
    node_factory: Callable[..., Node], redis_url: str, tmp_path: Path, mesh: Path,
    nginx_server: NginxServer,
) -> None:
    folder = nginx_server.root / "legacy"
    folder.mkdir()
    (folder / "x.bin").write_bytes(os.urandom(MiB))
    inbox = tmp_path / "pipeline"
    inbox.mkdir()
    a = start_ocm_node(node_factory, tmp_path, "a", 1, redis_url, directory=mesh,
                       recipients={"carol": {"tenant": "lab", "root": str(tmp_path)}})
    b = start_ocm_node(node_factory, tmp_path, "b", 2, redis_url, directory=mesh,
                       recipients={"pipe": {"tenant": "lab", "root": str(inbox),
                                            "auto_accept": True}})
    write_directory(mesh, [a.host, b.host])
    status, _ = post_json(f"{b.node.url}/ocm/shares", {
        "shareWith": f"pipe@{b.host}", "name": "old", "providerId": "legacy-1",
        "owner": f"carol@{a.host}", "sender": f"carol@{a.host}", "shareType": "user",
        "resourceType": "folder",
        "protocol": {"name": "multi", "datatx": {"sharedSecret": "legacy-secret",
                                                 "srcUri": f"{nginx_server.url}/legacy/",
                                                 "size": MiB}}})
    assert status == 201
    share = b.api("GET", "/shares")["shares"][0]
    assert share["state"] == "accepted"  # auto-accept: straight to SUBMITTED
    wait_until(lambda: b.client.job(share["job_id"])["state"] == "FINISHED", 60, "finish")
    assert (inbox / "old" / "x.bin").read_bytes() == (folder / "x.bin").read_bytes()


def test_share_refusals(
    node_factory: Callable[..., Node], redis_url: str, tmp_path: Path, mesh: Path,
    nginx_server: NginxServer,
) -> None:
    (nginx_server.root / "one.bin").write_bytes(b"x" * 1000)
    a = start_ocm_node(node_factory, tmp_path, "a", 1, redis_url, directory=mesh,
                       recipients={"carol": {"tenant": "lab", "root": str(tmp_path)}})
    c = start_ocm_node(node_factory, tmp_path, "c", 2, redis_url, directory=mesh,
                       recipients={"bob": {"tenant": "lab", "root": str(tmp_path / "in")}},
                       criteria=["must-use-http-sig"])
    write_directory(mesh, [a.host, c.host])
    url = f"{c.node.url}/ocm/shares"
    disc = json.loads(urllib.request.urlopen(f"{c.node.url}/.well-known/ocm").read())
    assert (disc["provider"], disc["criteria"]) == ("c", ["must-use-http-sig"])

    def share(**over: Any) -> dict[str, Any]:
        body = {"shareWith": f"bob@{c.host}", "name": "one.bin", "providerId": "p-1",
                "owner": f"carol@{a.host}", "sender": f"carol@{a.host}", "shareType": "user",
                "resourceType": "file",
                "protocol": {"name": "multi", "webdav": {
                    "uri": f"{nginx_server.url}/one.bin", "sharedSecret": "s-1",
                    "permissions": ["read"], "accessTypes": ["datatx"]}}}
        body.update(over)
        return body

    status, answer = post_json(url, {"name": "x"})
    assert status == 400 and {e["name"] for e in answer["validationErrors"]} >= {
        "shareWith", "sender", "protocol"}
    assert post_json(url, share(sender="eve@evil.example:1", owner="eve@evil.example:1"))[0] == 403
    assert post_json(url, share(protocol={"name": "webdav", "options": {"sharedSecret": "s"}}))[0] \
        == 501
    status, answer = post_json(url, share())
    assert status == 401 and "must-use-http-sig" in answer["message"]  # unsigned
    a_key = serialization.load_pem_private_key(a.key_file.read_bytes(), None)
    assert isinstance(a_key, Ed25519PrivateKey)
    keyid = f"http://{a.host}#signature"
    assert signed_post(url, share(), Ed25519PrivateKey.generate(), keyid)[0] == 401  # bad
    stale = int(time.time()) - 3600
    status, answer = signed_post(url, share(), a_key, keyid, created=stale)
    assert status == 401 and "created" in answer["message"]
    status, answer = signed_post(url, share(shareWith=f"nobody@{c.host}"), a_key, keyid)
    assert status == 400 and answer["validationErrors"][0]["name"] == "shareWith"
    status, answer = signed_post(url, share(), a_key, keyid)  # the real sender, fresh
    assert status == 201, answer
    assert c.api("GET", "/shares", query={"state": "pending"})["shares"][0]["name"] == "one.bin"
