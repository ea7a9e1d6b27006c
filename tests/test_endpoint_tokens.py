"""Per-file bearer tokens (``source_token`` / ``destination_token``) end to end.

A real node, two real nginx servers that answer 401 to any request without
their own ``Authorization: Bearer`` value (one guards the sources, the other
the destinations, so a token sent to the wrong side fails), and checks that a
token shows up in no API answer, no event, no log line, and nowhere in Redis
once the job ended.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.node_proc import Node, create_token, wait_job, wait_until
from tests.redis_server import RedisServer
from tests.servers import NginxServer, _stop, start_nginx
from transferd.client import Client, ClientError

MiB = 1024 * 1024
SOURCE_TOKEN = "src-tok.5f3a9c1e7b"
DESTINATION_TOKEN = "dst-tok.0d2e4b6a8c"
WRONG_TOKEN = "not-the-token.77e1"


@dataclass
class Guarded:
    source: NginxServer  # needs SOURCE_TOKEN
    destination: NginxServer  # needs DESTINATION_TOKEN


@pytest.fixture
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    servers = []
    for name, token in (("src", SOURCE_TOKEN), ("dst", DESTINATION_TOKEN)):
        base = tmp_path_factory.mktemp(f"guarded-{name}")
        (base / "state").mkdir()
        servers.append(start_nginx(base / "root", base / "state", bearer=token))
    yield Guarded(*servers)
    for server in servers:
        _stop(server.proc)


def adler32_hex(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


@dataclass
class Lab:
    """A node (two workers) that may write ``dest`` and read ``local``, and a submitter."""

    node: Node
    api_token: str
    client: Client
    redis_url: str
    dest: Path
    local: Path


@pytest.fixture
def lab(node_factory: Callable[..., Node], redis_server: RedisServer, dest: Path,
        tmp_path: Path) -> Lab:
    local = tmp_path / "local"
    local.mkdir()
    node = node_factory(allow_roots=[dest, local], workers=2)
    api_token = create_token("lab", "submitter", redis_url=redis_server.url)
    return Lab(node, api_token, Client(node.url, api_token), redis_server.url, dest, local)


def events_text(node: Node, api_token: str, job_id: str, final: str) -> str:
    """The SSE stream from its start up to the event of the job reaching ``final``."""
    request = urllib.request.Request(
        f"{node.url}/api/v1/events?last_event_id=0-0",
        headers={"Authorization": f"Bearer {api_token}"},
    )
    lines: list[str] = []
    deadline = time.monotonic() + 20
    with urllib.request.urlopen(request, timeout=20) as resp:
        while time.monotonic() < deadline:
            line = resp.readline().decode()
            if not line:
                break
            lines.append(line)
            if line.startswith("data: "):
                data = json.loads(line[6:])
                if data.get("type") == "job" and data.get("id") == job_id \
                        and data.get("state") == final:
                    return "".join(lines)
    raise AssertionError(f"no {final} event for {job_id}:\n{''.join(lines)[-2000:]}")


def redis_keys_holding(url: str, needles: list[bytes]) -> list[bytes]:
    """Every key whose name, fields or values contain one of ``needles``."""
    client = redis.Redis.from_url(url)
    hits: list[bytes] = []
    try:
        for key in client.scan_iter():
            kind = client.type(key)
            values: list[Any] = [key]
            if kind == b"string":
                values.append(client.get(key))
            elif kind == b"hash":
                for field, value in client.hgetall(key).items():
                    values += [field, value]
            elif kind == b"list":
                values += client.lrange(key, 0, -1)
            elif kind == b"set":
                values += list(client.smembers(key))
            elif kind == b"zset":
                values += client.zrange(key, 0, -1)
            elif kind == b"stream":
                for _, fields in client.xrange(key) or []:
                    for field, value in (fields or {}).items():
                        values += [field, value]
            if any(n in v for v in values if isinstance(v, bytes) for n in needles):
                hits.append(key)
    finally:
        client.close()
    return hits


def assert_no_trace(lab: Lab, job_id: str, final: str, secrets: list[str]) -> None:
    """No secret in an API answer, an event up to the job's ``final`` one, the log, or Redis."""
    answers = json.dumps([lab.client.job(job_id), lab.client.files(job_id), lab.client.jobs()])
    answers += events_text(lab.node, lab.api_token, job_id, final)
    assert not [s for s in secrets if s in answers]
    assert not [s for s in secrets if s in "".join(lab.node.proc.log)]
    assert redis_keys_holding(lab.redis_url, [s.encode() for s in secrets]) == []


@pytest.mark.parametrize("backend", ["stream", "rclone"])
def test_tokens_reach_their_endpoints_and_leave_no_trace(
    lab: Lab, guarded: Guarded, backend: str,
) -> None:
    client, dest, local = lab.client, lab.dest, lab.local
    blobs = {"big.bin": os.urandom(9 * MiB + 5), "small.bin": os.urandom(1000)}
    for name, data in blobs.items():
        (guarded.source.root / "in").mkdir(exist_ok=True)
        (guarded.source.root / "in" / name).write_bytes(data)
    (local / "up.bin").write_bytes(blobs["big.bin"][: 3 * MiB])
    src, dst = guarded.source.url, guarded.destination.url.replace("http://", "dav://")
    files = [
        # http source with its token → local file
        {"source": f"{src}/in/big.bin", "destination": f"file://{dest}/big.bin",
         "source_token": SOURCE_TOKEN},
        # local file → WebDAV destination with its token
        {"source": f"file://{local}/up.bin", "destination": f"{dst}/up/up.bin",
         "destination_token": DESTINATION_TOKEN},
        # both sides guarded, each with its own token
        {"source": f"{src.replace('http://', 'dav://')}/in/small.bin",
         "destination": f"{dst}/up/small.bin",
         "source_token": SOURCE_TOKEN, "destination_token": DESTINATION_TOKEN},
    ]
    job_id = client.submit(files, {"verify_checksum": "both", "backend": backend})["job_id"]
    assert wait_job(client, job_id)["state"] == "FINISHED", client.files(job_id)

    listed = client.files(job_id)["files"]
    expected = [blobs["big.bin"], blobs["big.bin"][: 3 * MiB], blobs["small.bin"]]
    for record, data in zip(listed, expected, strict=True):
        assert record["state"] == "FINISHED" and record["backend"] == backend, record
        assert record["verified_checksum"] == f"adler32:{adler32_hex(data)}"
    assert (dest / "big.bin").read_bytes() == blobs["big.bin"]
    assert (guarded.destination.root / "up" / "up.bin").read_bytes() == expected[1]
    assert (guarded.destination.root / "up" / "small.bin").read_bytes() == blobs["small.bin"]
    # every request carried the right token: nothing was refused on either side
    for server in (guarded.source, guarded.destination):
        entries = server.log_entries()
        assert entries and all(e.status != 401 for e in entries), entries

    assert_no_trace(lab, job_id, "FINISHED", [SOURCE_TOKEN, DESTINATION_TOKEN])


def test_a_refused_token_fails_the_file_as_auth_without_retries(
    lab: Lab, guarded: Guarded,
) -> None:
    client, dest, local = lab.client, lab.dest, lab.local
    (guarded.source.root / "a.bin").write_bytes(os.urandom(100_000))
    (local / "b.bin").write_bytes(os.urandom(100_000))
    files = [
        {"source": f"{guarded.source.url}/a.bin", "destination": f"file://{dest}/a.bin",
         "source_token": WRONG_TOKEN},
        {"source": f"file://{local}/b.bin", "destination": f"{guarded.destination.url}/b.bin",
         "destination_token": SOURCE_TOKEN},  # a real token, for the other server
    ]
    job_id = client.submit(files, {"max_retries": 3, "retry_delay_s": 0})["job_id"]
    assert wait_job(client, job_id)["state"] == "FAILED"
    for record in client.files(job_id)["files"]:
        assert record["state"] == "FAILED"
        assert record["error_class"] == "auth"
        assert record["attempts"] == 1  # a refused credential is not retried
        assert "401" in record["reason"]
    assert not (dest / "a.bin").exists() and not list(dest.iterdir())
    assert not (guarded.destination.root / "b.bin").exists()
    refused = guarded.source.log_entries() + guarded.destination.log_entries()
    assert refused and all(e.status == 401 for e in refused)

    assert_no_trace(lab, job_id, "FAILED", [WRONG_TOKEN, SOURCE_TOKEN])

    # the job ended, so its tokens are gone: a retry fails with that sentence and
    # never reaches the servers without a credential
    sent = len(refused)
    assert client.retry(job_id)["retried"] == 2
    wait_until(lambda: all(f["state"] == "FAILED" and "deleted when the job ended"
                           in (f["reason"] or "") for f in client.files(job_id)["files"]),
               60, "the retried files to fail for want of their tokens")
    for record in client.files(job_id)["files"]:
        assert record["error_class"] == "auth" and record["attempts"] == 1
    assert len(guarded.source.log_entries() + guarded.destination.log_entries()) == sent


BAD_TOKENS: list[tuple[dict[str, Any], str, str]] = [
    ({"source_token": 12}, "files[0].source_token", "expected a string"),
    ({"source_token": ""}, "files[0].source_token", "1.."),
    ({"source_token": "two words"}, "files[0].source_token", "visible ASCII"),
    ({"source_token": "x" * 20_000}, "files[0].source_token", "characters"),
    ({"destination_token": "T0k3n-for-a-file"}, "files[0].destination_token",
     "http(s):// and dav(s):// destinations"),
    ({"source": "file:///tmp/x.bin", "source_token": "T0k3n-for-a-file"},
     "files[0].source_token", "http(s):// and dav(s):// sources"),
]


def test_bad_tokens_are_refused_naming_the_field_and_never_echoed(
    node_factory: Callable[..., Node], redis_server: RedisServer, tmp_path: Path,
) -> None:
    node = node_factory(allow_roots=[tmp_path], workers=0)
    client = Client(node.url, create_token("lab", "submitter", redis_url=redis_server.url))
    for extra, field, message in BAD_TOKENS:
        spec = {"source": "https://src.example.org/x.bin",
                "destination": f"file://{tmp_path}/x.bin", **extra}
        with pytest.raises(ClientError) as err:
            client.submit([spec])
        assert err.value.status == 400, extra
        assert err.value.fields == [field], err.value.problem
        problem = json.dumps(err.value.problem)
        assert message in problem
        token = extra.get("source_token", extra.get("destination_token"))
        if isinstance(token, str) and token:
            assert token not in problem

    # a backend that would not send them is refused too, rather than ignoring them
    spec = {"source": "https://src.example.org/x.bin", "destination": f"file://{tmp_path}/x.bin",
            "source_token": "T0k3n-for-a-file"}
    with pytest.raises(ClientError) as err:
        client.submit([spec], {"backend": "rucio"})
    assert err.value.status == 400 and err.value.fields == ["files[0].source_token"]
    assert "the rucio backend sends no endpoint tokens" in json.dumps(err.value.problem)
    assert client.jobs()["jobs"] == []
