"""The /fts3 façade driven by the real `fts3` Python client against a real `transferd serve`."""

from __future__ import annotations

import os
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fts3.rest.client.easy as fts3
import pytest
import requests
from fts3.rest.client.exceptions import ClientError, NotFound

from tests.node_proc import Node, create_token, wait_until
from tests.redis_server import RedisServer
from tests.servers import FaultProxy, NginxServer
from transferd.client import Client
from transferd.fts3 import FtsBadRequest, deterministic_job_id, parse_submission

MiB = 1024 * 1024
FTS_TERMINAL = {"FINISHED", "FINISHEDDIRTY", "FAILED", "CANCELED"}


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


def wait_fts(ctx: Any, job_id: str, states: set[str] = FTS_TERMINAL, timeout_s: float = 60
             ) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        job = fts3.get_job_status(ctx, job_id)
        return job if job["job_state"] in states else None

    return wait_until(reached, timeout_s, f"FTS job {job_id} in {states}")  # type: ignore[return-value]


@pytest.fixture
def fts_node(
    node_factory: Callable[..., Node], redis_server: RedisServer, dest: Path
) -> tuple[Node, str]:
    node = node_factory(allow_roots=[dest])
    return node, create_token("lab", "submitter", redis_url=redis_server.url)


# -- pure translations -----------------------------------------------------------------------


def test_submission_maps_fts_params_to_ours() -> None:
    body = {
        "files": [{"sources": ["https://a.example/x", "https://b.example/x"],
                   "destinations": ["davs://c.example/y"], "checksum": "ADLER32:1b2c3d",
                   "filesize": 0, "metadata": {"request_id": "r1"}, "activity": "T0 Export"}],
        "params": {"verify_checksum": False, "retry": -1, "retry_delay": 0, "priority": 5,
                   "job_metadata": {"issuer": "rucio"}, "id_generator": "deterministic",
                   "sid": "s-1", "max_time_in_queue": "30m"},
    }
    request, job_id = parse_submission(body, vo="atlas", now=1_700_000_000.0)
    spec = request.files[0]
    assert (spec.source, spec.destination) == ("https://a.example/x", "davs://c.example/y")
    assert spec.checksum == "adler32:001b2c3d" and spec.size is None
    assert spec.metadata == {"request_id": "r1"}
    p = request.params
    assert (p.verify_checksum, p.max_retries, p.retry_delay_s, p.priority) == ("target", 0, 120, 5)
    assert p.activity == "T0 Export" and p.metadata == {"issuer": "rucio"}
    assert p.deadline == "2023-11-14T22:43:20Z"
    assert job_id == str(uuid.uuid5(uuid.uuid5(
        uuid.UUID("01874efb-4735-4595-bc9c-591aef8240c9"), "atlas"), "s-1"))
    assert job_id == deterministic_job_id("atlas", "s-1")


def test_submission_takes_fts_endpoint_tokens_and_never_echoes_a_bad_one() -> None:
    def files(**tokens: Any) -> dict[str, Any]:
        return {"files": [{"sources": ["https://a.example/x"],
                           "destinations": ["davs://c.example/y"], **tokens}], "params": {}}

    request, _ = parse_submission(files(source_tokens=["src.T0k"],
                                        destination_tokens=["dst.T0k"]), vo="lab", now=0.0)
    spec = request.files[0]
    assert (spec.source_token, spec.destination_token) == ("src.T0k", "dst.T0k")
    assert "T0k" not in repr(spec)
    none, _ = parse_submission(files(source_tokens=[], destination_tokens=[None]), vo="lab",
                               now=0.0)
    assert (none.files[0].source_token, none.files[0].destination_token) == (None, None)
    for tokens, message in (({"source_tokens": "src.T0k"}, "files[0].source_tokens: expected"),
                            ({"destination_tokens": ["two words"]},
                             "files[0].destination_tokens[0]: only visible ASCII")):
        with pytest.raises(FtsBadRequest) as err:
            parse_submission(files(**tokens), vo="lab", now=0.0)
        assert str(err.value).startswith(message) and "T0k" not in str(err.value)
        assert "two words" not in str(err.value)


# -- with the real client --------------------------------------------------------------------


def test_real_fts3_client_submit_status_list_and_files(
    fts_node: tuple[Node, str], nginx_server: NginxServer, dest: Path,
) -> None:
    node, token = fts_node
    blobs = {f"f{i}.bin": os.urandom(MiB + i) for i in range(2)}
    for name, data in blobs.items():
        (nginx_server.root / name).write_bytes(data)
    ctx = fts3.Context(node.url + "/fts3", fts_access_token=token, verify=False)
    assert ctx.get_endpoint_info()["api"]["major"] == 3
    me = fts3.whoami(ctx)
    assert me["vos"] == ["lab"] and me["method"] == "oauth2"
    transfers = [
        fts3.new_transfer(f"{nginx_server.url}/{name}", f"file://{dest}/{name}",
                          checksum=f"ADLER32:{adler(data)}", filesize=len(data),
                          metadata={"request_id": f"req-{name}"})
        for name, data in blobs.items()
    ]
    job = fts3.new_job(transfers, verify_checksum=True, metadata={"run": 7}, retry=2)
    job_id = fts3.submit(ctx, job)
    assert uuid.UUID(job_id)
    done = wait_fts(ctx, job_id)
    assert done["job_state"] == "FINISHED"
    assert done["http_status"] == "200 Ok" and done["job_metadata"] == {"run": 7}
    full = fts3.get_job_status(ctx, job_id, list_files=True)
    assert full["dm"] == []
    assert {f["file_state"] for f in full["files"]} == {"FINISHED"}
    for f in full["files"]:
        name = Path(f["dest_surl"]).name
        assert f["file_metadata"] == {"request_id": f"req-{name}"}
        assert f["checksum"] == f"ADLER32:{adler(blobs[name])}"
        assert f["filesize"] == len(blobs[name])
        time.strptime(f["finish_time"], "%Y-%m-%dT%H:%M:%S")
        assert (dest / name).read_bytes() == blobs[name]
    # an ordinary transferd job, visible through our own API
    ours = Client(node.url, token).job(job_id)
    assert ours["state"] == "FINISHED" and ours["owner"] == "lab"
    listed = fts3.list_jobs(ctx)
    assert job_id in {j["job_id"] for j in listed}
    assert fts3.list_jobs(ctx, state_in=["ACTIVE"]) == []


def test_bulk_status_shapes_and_unknown_ids(
    fts_node: tuple[Node, str], nginx_server: NginxServer, dest: Path, redis_server: RedisServer,
) -> None:
    node, token = fts_node
    (nginx_server.root / "b.bin").write_bytes(b"x" * 1000)
    ctx = fts3.Context(node.url + "/fts3", fts_access_token=token, verify=False)
    ids = [fts3.submit(ctx, fts3.new_job([fts3.new_transfer(
        f"{nginx_server.url}/b.bin", f"file://{dest}/b{i}.bin")])) for i in range(2)]
    for job_id in ids:
        wait_fts(ctx, job_id)
    both = fts3.get_jobs_statuses(ctx, ids, list_files=True)
    assert [j["job_id"] for j in both] == ids
    assert all(j["http_status"] == "200 Ok" and j["files"][0]["file_state"] == "FINISHED"
               for j in both)
    assert set(both[0]["files"][0]) == {"file_state", "dest_surl", "finish_time", "start_time",
                                        "reason", "source_surl", "file_metadata"}
    unknown = str(uuid.uuid4())
    with pytest.raises(ClientError, match=unknown):  # the client turns 207 into an error
        fts3.get_jobs_statuses(ctx, [ids[0], unknown])
    headers = {"Authorization": f"Bearer {token}"}
    mixed = requests.get(f"{node.url}/fts3//jobs/{ids[0]},{unknown}?files=file_state",
                         headers=headers, timeout=10)
    assert mixed.status_code == 207
    assert [j["http_status"] for j in mixed.json()] == ["200 Ok", "404 Not Found"]
    alone = requests.get(f"{node.url}/fts3/jobs/{unknown}", headers=headers, timeout=10)
    assert alone.status_code == 404
    assert alone.json()["http_status"] == "404 Not Found" and alone.json()["job_id"] == unknown
    with pytest.raises(NotFound):
        fts3.get_job_status(ctx, unknown)
    anonymous = requests.get(f"{node.url}/fts3/jobs/{ids[0]}", timeout=10)
    assert anonymous.status_code == 401
    # another tenant's credential sees no such job
    other = create_token("other", "submitter", redis_url=redis_server.url)
    hidden = requests.get(f"{node.url}/fts3/jobs/{ids[0]}",
                          headers={"Authorization": f"Bearer {other}"}, timeout=10)
    assert hidden.status_code == 404


def test_cancel_through_client_and_duplicate_deterministic_id(
    fts_node: tuple[Node, str], nginx_server: NginxServer, dest: Path,
    fault_proxy: Callable[[str], FaultProxy],
) -> None:
    node, token = fts_node
    (nginx_server.root / "slow.bin").write_bytes(os.urandom(20 * MiB))
    proxy = fault_proxy(nginx_server.url)
    proxy.set(throttle_bps=MiB)
    ctx = fts3.Context(node.url + "/fts3", fts_access_token=token, verify=False)
    job = fts3.new_job([fts3.new_transfer(f"{proxy.url}/slow.bin", f"file://{dest}/slow.bin")],
                       id_generator="deterministic", sid="run-42")
    job_id = fts3.submit(ctx, job)
    assert job_id == deterministic_job_id("lab", "run-42")
    with pytest.raises(ClientError, match="409"):
        fts3.submit(ctx, job)  # the same sid again is refused, as FTS does
    wait_fts(ctx, job_id, {"ACTIVE"})
    after = fts3.cancel(ctx, job_id)
    assert after["job_state"] == "CANCELED"
    files = fts3.get_job_status(ctx, job_id, list_files=True)["files"]
    assert files[0]["file_state"] == "CANCELED"
    again = fts3.cancel(ctx, job_id)  # a terminal job is left as it is, with 200
    assert again["job_state"] == "CANCELED"
    wait_until(lambda: proxy.open_sockets == 0, 15, "the mover to stop reading")
