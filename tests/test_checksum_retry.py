"""A checksum mismatch is retried once, then permanent: a real node, Redis and nginx.

A mismatch may be a corrupt read that a second try fixes; a second one is not
bad luck.  The count is of mismatches, not of attempts, so an unrelated
transient failure (a reset connection) does not use up the retry, and
``max_retries`` still bounds the whole.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.node_proc import Node, create_token, wait_until
from tests.redis_server import RedisServer
from tests.servers import FaultProxy, NginxServer
from transferd.client import Client

MiB = 1024 * 1024
TERMINAL = {"FINISHED", "FAILED", "FINISHEDDIRTY", "CANCELED"}


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


@pytest.fixture
def client(node_factory: Callable[..., Node], redis_server: RedisServer, dest: Path) -> Client:
    node = node_factory(allow_roots=[dest])
    return Client(node.url, create_token("lofar", "submitter", redis_url=redis_server.url))


def only_file(client: Client, job_id: str) -> dict[str, Any]:
    files: list[dict[str, Any]] = client.files(job_id)["files"]
    assert len(files) == 1
    return files[0]


def finished_file(client: Client, job_id: str) -> dict[str, Any]:
    """The job's one file once the job has ended."""
    wait_until(lambda: client.job(job_id)["state"] in TERMINAL, 60, f"job {job_id} to end")
    return only_file(client, job_id)


def gets_of(server: NginxServer, uri: str) -> int:
    return sum(1 for e in server.log_entries() if e.method == "GET" and e.uri == uri)


def test_a_wrong_expected_checksum_fails_after_exactly_two_attempts(
        client: Client, nginx_server: NginxServer, dest: Path) -> None:
    data = os.urandom(MiB + 3)
    (nginx_server.root / "a.bin").write_bytes(data)
    wrong = "0badc0de"
    assert adler(data) != wrong
    job_id = client.submit(
        [{"source": f"{nginx_server.url}/a.bin", "destination": f"file://{dest}/a.bin",
          "checksum": f"adler32:{wrong}"}],
        {"max_retries": 5, "retry_delay_s": 0},
    )["job_id"]
    record = finished_file(client, job_id)
    assert record["state"] == "FAILED"
    assert record["error_class"] == "checksum"
    assert record["attempts"] == 2  # not 6: max_retries=5 does not buy more mismatches
    assert wrong in record["reason"] and adler(data) in record["reason"]
    assert gets_of(nginx_server, "/a.bin") == 2
    assert list(dest.iterdir()) == []  # neither the file nor a partial


def test_a_transient_failure_first_does_not_use_up_the_mismatch_retry(
        client: Client, nginx_server: NginxServer, dest: Path,
        fault_proxy: Callable[[str], FaultProxy]) -> None:
    data = os.urandom(MiB + 3)
    (nginx_server.root / "t.bin").write_bytes(data)
    proxy = fault_proxy(nginx_server.url)
    # The first GET is cut mid-body (a reset HEAD aiohttp would quietly send again).
    proxy.set(reset_after_bytes=64 * 1024, resets_left=1)
    job_id = client.submit(
        [{"source": f"{proxy.url}/t.bin", "destination": f"file://{dest}/t.bin",
          "checksum": "adler32:0badc0de"}],
        {"max_retries": 5, "retry_delay_s": 0},
    )["job_id"]
    record = finished_file(client, job_id)
    assert proxy.resets == 1
    assert record["state"] == "FAILED" and record["error_class"] == "checksum"
    # attempt 1: reset (the chunk is fetched again in place), mismatch (retried);
    # attempt 2: mismatch (permanent)
    assert record["attempts"] == 2
    assert gets_of(nginx_server, "/t.bin") == 3


def test_corrupt_bytes_on_the_first_attempt_then_correct_ones_finish(
        client: Client, nginx_server: NginxServer, dest: Path) -> None:
    good = os.urandom(MiB + 3)
    corrupt = bytearray(good)
    corrupt[MiB // 2] ^= 0xFF
    source = nginx_server.root / "b.bin"
    source.write_bytes(bytes(corrupt))
    job_id = client.submit(
        [{"source": f"{nginx_server.url}/b.bin", "destination": f"file://{dest}/b.bin",
          "checksum": f"adler32:{adler(good)}"}],
        # the backoff (≥ 2.7 s with jitter) is the window for fixing the source
        {"max_retries": 5, "retry_delay_s": 3},
    )["job_id"]

    def first_failure() -> dict[str, Any] | None:
        record = only_file(client, job_id)
        return record if record["error_class"] == "checksum" else None

    failed = wait_until(first_failure, 60, "the first checksum mismatch")
    assert isinstance(failed, dict)
    assert failed["state"] == "SUBMITTED" and failed["attempts"] == 1
    assert adler(good) in failed["reason"] and adler(bytes(corrupt)) in failed["reason"]
    staged = nginx_server.root / "b.bin.new"
    staged.write_bytes(good)
    os.replace(staged, source)  # nginx never serves a half-written file
    # the retry cannot have started yet, so it reads the corrected bytes
    assert time.time() < failed["not_before"]

    record = finished_file(client, job_id)
    assert record["state"] == "FINISHED"
    assert record["attempts"] == 2
    assert record["verified_checksum"] == f"adler32:{adler(good)}"
    assert (dest / "b.bin").read_bytes() == good
    assert gets_of(nginx_server, "/b.bin") == 2
