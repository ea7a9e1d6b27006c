"""The Rucio backend against a real Rucio server whose conveyor moves the bytes through transferd.

One transferd node plays both parts: its rucio worker creates and follows the
replication rule, and its ``/fts3`` façade (``[fts3] anonymous_tenant``, as
Rucio sends no credential to an http:// FTS) is the FTS server of the test's
RSEs, so the files Rucio transfers are ordinary transferd jobs of tenant
"rucio", copied by our stream mover between two WebDAV roots on nginx.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rucio.common.exception import RuleNotFound

from tests.node_proc import Node, create_token, wait_until
from tests.redis_server import RedisServer
from tests.rucio_server import RucioLab, RucioServer, adler32
from tests.servers import FaultProxy, NginxServer
from transferd.client import Client
from transferd.errors import PermanentError
from workers.rucio import (
    RucioSettings,
    lock_progress,
    member_states,
    parse_did,
    parse_rse_expression,
    rule_outcome,
)

KiB = 1024
MiB = 1024 * KiB
TERMINAL = {"FINISHED", "FAILED", "CANCELED"}


# -- pure parts ------------------------------------------------------------------------------


def test_sources_are_dids_and_destinations_rse_expressions() -> None:
    assert parse_did("rucio://user.alice/dataset.2026") == ("user.alice", "dataset.2026")
    assert parse_did("rucio://lofar/L658346%2FSB019.tar") == ("lofar", "L658346/SB019.tar")
    assert parse_rse_expression("rucio://tier%3D1%26country%3DNL") == "tier=1&country=NL"
    with pytest.raises(PermanentError, match="scope/name"):
        parse_did("rucio://onlyscope")
    with pytest.raises(PermanentError, match="RSE expression"):
        parse_rse_expression("rucio://")


def test_settings_name_what_is_missing() -> None:
    with pytest.raises(PermanentError, match="TRANSFERD_RUCIO_HOST"):
        RucioSettings.from_env({})
    with pytest.raises(PermanentError, match="TRANSFERD_RUCIO_PASSWORD"):
        RucioSettings.from_env({"TRANSFERD_RUCIO_HOST": "http://r", "TRANSFERD_RUCIO_ACCOUNT": "a",
                                "TRANSFERD_RUCIO_USERNAME": "u"})
    s = RucioSettings.from_env({"TRANSFERD_RUCIO_HOST": "http://r/", "TRANSFERD_RUCIO_ACCOUNT": "a",
                                "TRANSFERD_RUCIO_USERNAME": "u", "TRANSFERD_RUCIO_PASSWORD": "p",
                                "TRANSFERD_RUCIO_TOKEN_DIR": "/tmp/t"})
    assert (s.host, s.auth_host, s.token_dir) == ("http://r", "http://r", "/tmp/t")


@pytest.mark.parametrize(("rule", "expected"), [
    ({"state": "REPLICATING"}, None),
    ({"state": "OK"}, None),
    ({"state": "WAITING_APPROVAL"}, None),
    ({"id": "r1", "state": "STUCK", "locks_stuck_cnt": 1, "error": "HTTP 404 on the source"},
     "Rucio rule r1 STUCK (1 stuck, 0 OK, 0 replicating locks): HTTP 404 on the source"),
    ({"id": "r2", "state": "RuleState.SUSPENDED", "error": None},
     "Rucio rule r2 SUSPENDED (0 stuck, 0 OK, 0 replicating locks): Rucio gave no reason"),
])
def test_rule_states_map_to_our_outcomes(rule: dict[str, Any], expected: str | None) -> None:
    err = rule_outcome(rule)
    if expected is None:
        assert err is None
    else:
        assert err is not None and not err.retryable
        assert (err.error_class, err.reason) == ("stuck", expected)


def test_progress_counts_the_bytes_of_ok_locks() -> None:
    sizes = {("s", "a"): 10, ("s", "b"): 20, ("s", "c"): 40}
    locks = [{"scope": "s", "name": "a", "state": "OK"},
             {"scope": "s", "name": "b", "state": "REPLICATING"},
             {"scope": "s", "name": "c", "state": "LockState.OK"}]
    assert lock_progress(locks, sizes) == (50, {"OK": 2, "REPLICATING": 1})


def test_a_datasets_files_take_their_states_from_their_locks() -> None:
    files = [{"scope": "s", "name": n, "bytes": b, "adler32": a}
             for n, b, a in (("a", 10, "1f2e3d"), ("b", 20, None), ("c", 40, "0a0b0c0d"),
                             ("d", 80, None))]
    locks = [{"scope": "s", "name": "a", "state": "LockState.OK"},
             {"scope": "s", "name": "b", "state": "REPLICATING"},
             {"scope": "s", "name": "c", "state": "STUCK"}]
    assert member_states(files, locks) == [
        {"did": "s:a", "bytes": 10, "state": "FINISHED", "lock": "OK",
         "checksum": "adler32:001f2e3d"},
        {"did": "s:b", "bytes": 20, "state": "ACTIVE", "lock": "REPLICATING", "checksum": None},
        {"did": "s:c", "bytes": 40, "state": "FAILED", "lock": "STUCK",
         "checksum": "adler32:0a0b0c0d"},
        {"did": "s:d", "bytes": 80, "state": "SUBMITTED", "lock": None, "checksum": None},
    ]


# -- against the real server -----------------------------------------------------------------


class World:
    """A transferd node with the rucio backend and its FTS3 façade, and two RSEs on nginx."""

    def __init__(self, node: Node, client: Client, rucio_tenant: Client, lab: RucioLab,
                 nginx: NginxServer) -> None:
        self.node, self.client, self.rucio_tenant, self.lab = node, client, rucio_tenant, lab
        self.nginx = nginx
        self.src = lab.add_rse("src", f"{nginx.url}/{lab.tag}/src", nginx.root)
        self.dst = lab.add_rse("dst", f"{nginx.url}/{lab.tag}/dst", nginx.root)
        lab.link(self.src, self.dst)

    def submit(self, name: str, **params: Any) -> str:
        files = [{"source": f"rucio://{self.lab.scope}/{name}",
                  "destination": f"rucio://{self.dst.name}"}]
        job_id: str = self.client.submit(files, params)["job_id"]
        return job_id

    def wait_job(self, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            job = self.client.job(job_id)
            return job if job["state"] in TERMINAL else None

        try:
            return wait_until(reached, timeout_s, f"job {job_id} to end")  # type: ignore[return-value]
        except AssertionError:
            print(self.lab.server.log_tail())
            print("".join(self.node.proc.log)[-4000:])
            raise

    def record(self, job_id: str) -> dict[str, Any]:
        record: dict[str, Any] = self.client.files(job_id)["files"][0]
        return record

    def facade_files(self) -> list[dict[str, Any]]:
        """Every file Rucio's conveyor handed to the /fts3 façade (tenant "rucio")."""
        return [f for job in self.rucio_tenant.iter_jobs()
                for f in self.rucio_tenant.iter_files(job["job_id"])]


@pytest.fixture
def world(node_factory: Callable[..., Node], redis_server: RedisServer,
          rucio_server: RucioServer, nginx_server: NginxServer, tmp_path: Path) -> World:
    config = tmp_path / "node.toml"
    config.write_text('[fts3]\nanonymous_tenant = "rucio"\n')
    node = node_factory(env=rucio_server.env(), extra=["--config", str(config)])
    client = Client(node.url, create_token("lab", "submitter", redis_url=redis_server.url))
    rucio_tenant = Client(node.url, create_token("rucio", "reader", redis_url=redis_server.url))
    lab = RucioLab(rucio_server, f"{node.url}/fts3")
    return World(node, client, rucio_tenant, lab, nginx_server)


def test_dataset_rule_moves_the_files_through_transferd(world: World) -> None:
    lab = world.lab
    blobs = {f"sb{i}.bin": os.urandom(256 * KiB + i) for i in range(3)}
    files = [lab.add_file(world.src, name, data) for name, data in blobs.items()]
    lab.add_dataset("obs1", files)

    job_id = world.submit("obs1")
    job = world.wait_job(job_id)
    record = world.record(job_id)
    assert job["state"] == "FINISHED", record
    assert record["backend"] == "rucio"
    assert record["bytes_done"] == sum(len(d) for d in blobs.values())
    # each file of the dataset has its own state, size and Rucio's checksum
    assert sorted(record["members"], key=lambda m: m["did"]) == [
        {"did": f"{lab.scope}:{name}", "bytes": len(data), "state": "FINISHED", "lock": "OK",
         "checksum": f"adler32:{adler32(data)}"}
        for name, data in sorted(blobs.items())
    ]

    [rule] = lab.rules("obs1")
    assert rule["state"] == "OK" and rule["rse_expression"] == world.dst.name
    assert rule["locks_ok_cnt"] == 3
    assert {lock["state"] for lock in lab.client.list_replica_locks(rule["id"])} == {"OK"}

    # Rucio's transfers were transferd jobs: all three files FINISHED by our mover ...
    moved = world.facade_files()
    assert sorted(f["state"] for f in moved) == ["FINISHED"] * 3
    assert {f["verified_checksum"] for f in moved} == {f"adler32:{adler32(d)}"
                                                        for d in blobs.values()}
    # ... and the bytes are where Rucio says the destination replicas are.
    for name, data in blobs.items():
        landed = world.dst.local_path(lab.pfn(world.dst, name)).read_bytes()
        assert zlib.adler32(landed) == zlib.adler32(data) and landed == data
    replicas = lab.client.list_replicas([{"scope": lab.scope, "name": "obs1"}],
                                        rse_expression=world.dst.name)
    assert len(list(replicas)) == 3


def test_a_rule_that_already_exists_is_adopted_not_duplicated(world: World) -> None:
    # as when a worker created the rule, lost the answer and the file was delivered again
    lab = world.lab
    data = os.urandom(128 * KiB)
    lab.add_file(world.src, "again.bin", data)
    [rule_id] = lab.client.add_replication_rule(
        [{"scope": lab.scope, "name": "again.bin"}], 1, world.dst.name)

    job_id = world.submit("again.bin")
    assert world.wait_job(job_id)["state"] == "FINISHED"
    assert world.record(job_id)["verified_checksum"] == f"adler32:{adler32(data)}"
    assert [r["id"] for r in lab.rules("again.bin")] == [rule_id]


def test_missing_source_file_ends_stuck_with_rucios_reason(world: World) -> None:
    # a dataset of two: one file copies, the other's bytes are not where Rucio says
    lab = world.lab
    here = lab.add_file(world.src, "here.bin", os.urandom(32 * KiB))
    gone = lab.add_file(world.src, "gone.bin", os.urandom(64 * KiB), on_disk=False)
    lab.add_dataset("half", [here, gone])

    job_id = world.submit("half")
    job = world.wait_job(job_id, timeout_s=90)
    record = world.record(job_id)
    assert job["state"] == "FAILED", record

    [rule] = lab.rules("half")
    assert rule["state"] == "STUCK" and rule["locks_stuck_cnt"] == 1
    assert rule["locks_ok_cnt"] == 1
    assert rule["error"], rule
    assert record["error_class"] == "stuck"
    assert rule["error"] in record["reason"]
    assert "404" in record["reason"]  # our mover's own words, carried by Rucio and back
    states = {m["did"]: (m["state"], m["lock"]) for m in record["members"]}
    assert states == {f"{lab.scope}:here.bin": ("FINISHED", "OK"),
                      f"{lab.scope}:gone.bin": ("FAILED", "STUCK")}


def test_cancel_deletes_the_rule(world: World, fault_proxy: Callable[[str], FaultProxy]
                                 ) -> None:
    lab = world.lab
    proxy = fault_proxy(world.nginx.url)
    proxy.set(throttle_bps=512 * KiB)
    slow_src = lab.add_rse("slow", f"{proxy.url}/{lab.tag}/slow", world.nginx.root)
    lab.link(slow_src, world.dst)
    lab.add_file(slow_src, "big.bin", os.urandom(16 * MiB))

    job_id = world.submit("big.bin")

    def copying() -> bool:
        return any(f["state"] == "ACTIVE" and f["bytes_done"] > 0
                   for f in world.facade_files())

    wait_until(copying, 30, "Rucio's transfer to be copying through transferd")
    [rule] = lab.rules("big.bin")
    assert rule["state"] == "REPLICATING"

    world.client.cancel(job_id)
    assert world.wait_job(job_id)["state"] == "CANCELED"

    def rule_gone() -> bool:
        try:
            lab.client.get_replication_rule(rule["id"])
        except RuleNotFound:
            return True
        return False

    wait_until(rule_gone, 30, f"rule {rule['id']} to be deleted")
    assert lab.rules("big.bin") == []
    # deleting the rule made Rucio cancel its transfer at our façade, which stopped the copy
    wait_until(lambda: [f["state"] for f in world.facade_files()] == ["CANCELED"], 30,
               "Rucio to cancel its FTS job")
    wait_until(lambda: proxy.open_sockets == 0, 15, "the mover to stop reading")
