"""The FTS backend end to end: node A's worker drives node B's /fts3 façade with the fts3 client."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fts3.rest.client.easy as fts3
import pytest

from tests.node_proc import Node, create_token, wait_job, wait_until
from tests.redis_server import RedisServer
from tests.servers import FaultProxy, NginxServer, _stop, start_nginx
from transferd.client import Client
from transferd.fts3 import deterministic_job_id
from workers.fts import classify_reason, fts_checksum, our_checksum

MiB = 1024 * 1024
SOURCE_TOKEN = "fts-src-tok.9b1d2e"


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


def first_file(client: Client, job_id: str) -> dict[str, Any]:
    return client.files(job_id)["files"][0]  # type: ignore[no-any-return]


class Pair:
    """Node B (the FTS server, its own embedded Redis) and a factory for node A processes."""

    def __init__(self, factory: Callable[..., Node], redis_server: RedisServer, dest: Path):
        self.factory = factory
        self.dest = dest
        self.b = factory(redis_url=None, allow_roots=[dest])
        self.b_token = create_token("lab", "submitter", state_dir=self.b.state_dir)
        self.ctx = fts3.Context(self.b.url + "/fts3", fts_access_token=self.b_token, verify=False)
        self.a_token = create_token("pipe", "submitter", redis_url=redis_server.url)

    def start_a(self, **kwargs: Any) -> Client:
        env = {"TRANSFERD_FTS_ENDPOINT": self.b.url + "/fts3",
               "TRANSFERD_FTS_TOKEN": self.b_token}
        node = self.factory(allow_roots=[self.dest], env=env, **kwargs)
        return Client(node.url, self.a_token)


@pytest.fixture
def pair(node_factory: Callable[..., Node], redis_server: RedisServer, tmp_path: Path) -> Pair:
    dest = tmp_path / "dest"
    dest.mkdir()
    return Pair(node_factory, redis_server, dest)


def test_reasons_and_checksums_translate() -> None:
    assert classify_reason("HTTP 404 Not Found reading the source").error_class == "not_found"
    assert classify_reason("adler32 checksum mismatch").error_class == "checksum"
    assert classify_reason("connection reset").retryable
    assert fts_checksum("adler32:0a0b0c0d") == "ADLER32:0a0b0c0d"
    assert fts_checksum("adler32") == "ADLER32"
    assert our_checksum("ADLER32:0A0B0C0D") == "adler32:0a0b0c0d"


def test_files_routed_to_fts_move_through_the_other_node(
    pair: Pair, nginx_server: NginxServer
) -> None:
    data = os.urandom(2 * MiB + 3)
    (nginx_server.root / "x.bin").write_bytes(data)
    a = pair.start_a()
    job_id = a.submit(
        [{"source": f"{nginx_server.url}/x.bin", "destination": f"file://{pair.dest}/x.bin",
          "checksum": f"adler32:{adler(data)}"}],
        {"backend": "fts"},
    )["job_id"]
    assert wait_job(a, job_id)["state"] == "FINISHED", a.files(job_id)
    record = first_file(a, job_id)
    assert record["backend"] == "fts"
    assert record["verified_checksum"] == f"adler32:{adler(data)}"
    assert record["bytes_done"] == len(data)
    assert (pair.dest / "x.bin").read_bytes() == data
    on_b = fts3.list_jobs(pair.ctx)
    assert len(on_b) == 1 and on_b[0]["job_state"] == "FINISHED"
    files = fts3.get_job_status(pair.ctx, on_b[0]["job_id"], list_files=True)["files"]
    assert files[0]["file_metadata"] == {"transferd_file_id": record["file_id"]}
    assert on_b[0]["job_id"] == deterministic_job_id("lab", f"{record['file_id']}.1")


def test_fts_failure_reason_comes_back(pair: Pair, nginx_server: NginxServer) -> None:
    a = pair.start_a()
    job_id = a.submit(
        [{"source": f"{nginx_server.url}/missing.bin",
          "destination": f"file://{pair.dest}/missing.bin"}],
        {"backend": "fts", "max_retries": 0},
    )["job_id"]
    assert wait_job(a, job_id)["state"] == "FAILED"
    record = first_file(a, job_id)
    assert record["error_class"] == "not_found"
    assert record["reason"].startswith("FTS: ")


def test_cancel_reaches_the_fts_server(
    pair: Pair, nginx_server: NginxServer, fault_proxy: Callable[[str], FaultProxy]
) -> None:
    (nginx_server.root / "slow.bin").write_bytes(os.urandom(20 * MiB))
    proxy = fault_proxy(nginx_server.url)
    proxy.set(throttle_bps=MiB)
    a = pair.start_a()
    job_id = a.submit(
        [{"source": f"{proxy.url}/slow.bin", "destination": f"file://{pair.dest}/slow.bin"}],
        {"backend": "fts"},
    )["job_id"]

    def b_active() -> bool:
        jobs = fts3.list_jobs(pair.ctx)
        return bool(jobs) and jobs[0]["job_state"] == "ACTIVE"

    wait_until(b_active, 30, "the FTS job to start on node B")
    a.cancel(job_id)
    assert wait_job(a, job_id)["state"] == "CANCELED"
    wait_until(lambda: fts3.list_jobs(pair.ctx)[0]["job_state"] == "CANCELED", 15,
               "node B's job to be canceled")
    wait_until(lambda: proxy.open_sockets == 0, 15, "node B's mover to stop reading")


def test_lost_submission_answer_is_adopted_not_duplicated(
    pair: Pair, nginx_server: NginxServer
) -> None:
    data = os.urandom(MiB)
    (nginx_server.root / "y.bin").write_bytes(data)
    api_only = pair.start_a(workers=0)
    job_id = api_only.submit(
        [{"source": f"{nginx_server.url}/y.bin", "destination": f"file://{pair.dest}/y.bin",
          "checksum": f"adler32:{adler(data)}"}],
        {"backend": "fts"},
    )["job_id"]
    # The FTS job of attempt 1 already exists, as when a submission reached the
    # server but its answer was lost before a worker crashed.
    sid = f"{job_id}.0.1"
    pre = fts3.submit(pair.ctx, fts3.new_job(
        [fts3.new_transfer(f"{nginx_server.url}/y.bin", f"file://{pair.dest}/y.bin",
                           checksum=f"ADLER32:{adler(data)}")],
        id_generator="deterministic", sid=sid, retry=-1))
    assert pre == deterministic_job_id("lab", sid)
    pair.start_a(workers=2)
    assert wait_job(api_only, job_id)["state"] == "FINISHED"
    assert first_file(api_only, job_id)["verified_checksum"] == f"adler32:{adler(data)}"
    assert [j["job_id"] for j in fts3.list_jobs(pair.ctx)] == [pre]


def test_a_files_endpoint_token_travels_with_its_fts_job(
    pair: Pair, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # the source answers 401 to anything without its token: node B's mover must present it
    base = tmp_path_factory.mktemp("guarded")
    (base / "state").mkdir()
    guarded = start_nginx(base / "root", base / "state", bearer=SOURCE_TOKEN)
    try:
        data = os.urandom(MiB + 7)
        (guarded.root / "t.bin").write_bytes(data)
        a = pair.start_a()
        job_id = a.submit(
            [{"source": f"{guarded.url}/t.bin", "destination": f"file://{pair.dest}/t.bin",
              "source_token": SOURCE_TOKEN}],
            {"backend": "fts"},
        )["job_id"]
        assert wait_job(a, job_id)["state"] == "FINISHED", a.files(job_id)
        assert first_file(a, job_id)["verified_checksum"] == f"adler32:{adler(data)}"
        assert (pair.dest / "t.bin").read_bytes() == data
        entries = guarded.log_entries()
        assert entries and all(e.status != 401 for e in entries), entries
        # the token is in no answer of either node and in no log line
        [on_b] = fts3.list_jobs(pair.ctx)
        answers = repr([a.job(job_id), a.files(job_id), on_b,
                        fts3.get_job_status(pair.ctx, on_b["job_id"], list_files=True)])
        assert SOURCE_TOKEN not in answers
        assert SOURCE_TOKEN not in "".join(pair.b.proc.log)
    finally:
        _stop(guarded.proc)
