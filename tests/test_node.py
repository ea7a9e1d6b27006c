"""End to end: real `transferd serve` / `transferd worker` processes, real redis, real nginx."""

from __future__ import annotations

import filecmp
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from dramatiq.middleware import TimeLimit

from tests.node_proc import (
    TRANSFERD,
    LofarNode,
    Node,
    Proc,
    adler32_hex,
    create_token,
    start_node,
    wait_job,
    wait_until,
)
from tests.redis_server import RedisServer
from tests.servers import FaultProxy, NginxServer
from transferd.client import Client
from transferd.embedded import PIDFILE_NAME
from workers.broker import BACKENDS, actor_name, queue_name, transfer_message
from workers.runner import WorkerPool

MiB = 1024 * 1024


def write_random(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for offset in range(0, size, 64 * MiB):  # a 2 GiB file is not held in memory
            f.write(os.urandom(min(64 * MiB, size - offset)))
    return path


def job_state(client: Client, job_id: str) -> str:
    return str(client.job(job_id)["state"])


def test_submit_http_source_finishes_with_verified_checksum(
    lofar_node: Callable[..., LofarNode], nginx_server: NginxServer, dest: Path,
) -> None:
    src = write_random(nginx_server.root / "data" / "big.bin", 20 * MiB + 7)
    small = write_random(nginx_server.root / "data" / "one.bin", 1)
    empty = nginx_server.root / "data" / "empty.bin"
    empty.write_bytes(b"")
    *_, client = lofar_node()
    files = [
        {"source": f"{nginx_server.url}/data/{p.name}", "destination": f"file://{dest}/{p.name}",
         "checksum": f"adler32:{adler32_hex(p)}"}
        for p in (src, small, empty)
    ]
    answer = client.submit(files, {"verify_checksum": "both"})
    job = wait_job(client, answer["job_id"], {"FINISHED", "FAILED", "FINISHEDDIRTY"})
    assert job["state"] == "FINISHED"
    assert job["totals"]["bytes_done"] == job["totals"]["bytes_total"] == src.stat().st_size + 1
    listed = client.files(answer["job_id"])["files"]
    for record, path in zip(listed, (src, small, empty), strict=True):
        assert record["state"] == "FINISHED"
        assert record["verified_checksum"] == f"adler32:{adler32_hex(path)}"
        assert (dest / path.name).read_bytes() == path.read_bytes()
    assert not list(dest.glob("*.part*"))


def test_ten_thousand_small_files_in_one_job(
    lofar_node: Callable[..., LofarNode], nginx_server: NginxServer, dest: Path,
) -> None:
    count = 10_000
    folder = nginx_server.root / "many"
    folder.mkdir()
    for i in range(count):
        (folder / f"f{i:05d}").write_bytes(f"file {i}\n".encode())
    *_, client = lofar_node(workers=8)
    files = [
        {"source": f"{nginx_server.url}/many/f{i:05d}", "destination": f"file://{dest}/f{i:05d}"}
        for i in range(count)
    ]
    answer = client.submit(files, {})
    job = wait_job(client, answer["job_id"], {"FINISHED", "FAILED", "FINISHEDDIRTY"}, 600)
    assert job["state"] == "FINISHED"
    assert job["totals"]["files_by_state"]["FINISHED"] == count
    assert len(os.listdir(dest)) == count
    assert (dest / "f09999").read_bytes() == b"file 9999\n"


def test_cancel_mid_transfer_stops_and_leaves_nothing(
    lofar_node: Callable[..., LofarNode], nginx_server: NginxServer,
    fault_proxy: Callable[[str], FaultProxy], dest: Path,
) -> None:
    write_random(nginx_server.root / "slow.bin", 40 * MiB)
    proxy = fault_proxy(nginx_server.url)
    proxy.set(throttle_bps=2 * MiB)
    *_, client = lofar_node()
    answer = client.submit(
        [{"source": f"{proxy.url}/slow.bin", "destination": f"file://{dest}/slow.bin"}], {}
    )
    job_id = answer["job_id"]
    wait_until(lambda: client.job(job_id)["totals"]["bytes_done"] > 0, 30, "bytes to move")
    # while it runs, the job reports its rate and an ETA that follows from it
    wait_until(lambda: client.job(job_id)["totals"]["eta_s"] is not None, 30, "an ETA")
    totals = client.job(job_id)["totals"]
    assert totals["bytes_total"] == 40 * MiB  # the size the worker learned from the source
    assert 0 < totals["rate_bps"] <= 4 * MiB  # the link is throttled to 2 MiB/s
    left = totals["bytes_total"] - totals["bytes_done"]
    assert totals["eta_s"] == pytest.approx(left / totals["rate_bps"])
    running = client.files(job_id)["files"][0]
    assert running["state"] == "ACTIVE" and running["rate_bps"] > 0
    canceled = client.cancel(job_id)
    assert canceled["state"] == "CANCELED"
    # the worker notices within its heartbeat and removes its partial data
    wait_until(lambda: not any(dest.iterdir()), 5, "partial files to disappear")
    assert not (dest / "slow.bin").exists()
    assert client.files(job_id)["files"][0]["state"] == "CANCELED"


def test_failed_files_retry_to_finished(
    lofar_node: Callable[..., LofarNode], nginx_server: NginxServer, dest: Path,
) -> None:
    write_random(nginx_server.root / "here.bin", MiB)
    *_, client = lofar_node()
    files = [
        {"source": f"{nginx_server.url}/{name}", "destination": f"file://{dest}/{name}"}
        for name in ("here.bin", "late.bin")
    ]
    job_id = client.submit(files, {"max_retries": 0})["job_id"]
    job = wait_job(client, job_id, {"FINISHED", "FAILED", "FINISHEDDIRTY"})
    assert job["state"] == "FINISHEDDIRTY"
    failed = client.files(job_id, state="FAILED")["files"]
    assert [f["index"] for f in failed] == [1]
    assert failed[0]["error_class"] == "not_found"
    assert "404" in failed[0]["reason"]
    write_random(nginx_server.root / "late.bin", MiB)
    retried = client.retry(job_id)
    assert retried["retried"] == 1
    job = wait_job(client, job_id, {"FINISHED", "FAILED", "FINISHEDDIRTY"})
    assert job["state"] == "FINISHED"
    assert (dest / "late.bin").read_bytes() == (nginx_server.root / "late.bin").read_bytes()


def test_idempotent_resubmit_returns_the_same_job(
    lofar_node: Callable[..., LofarNode], nginx_server: NginxServer, dest: Path,
) -> None:
    write_random(nginx_server.root / "x.bin", 1000)
    *_, client = lofar_node()
    files = [{"source": f"{nginx_server.url}/x.bin", "destination": f"file://{dest}/x.bin"}]
    first = client.submit(files, {}, idempotency_key="pipeline-run-42")
    again = client.submit(files, {}, idempotency_key="pipeline-run-42")
    assert again["job_id"] == first["job_id"]
    assert [j["job_id"] for j in client.jobs()["jobs"]] == [first["job_id"]]


_WORKERS: list[Proc] = []


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test() -> Iterator[None]:
    """A worker left by a failed test would reconnect to whichever later test's Redis
    reuses its port, and take that test's files."""
    yield
    while _WORKERS:
        proc = _WORKERS.pop()
        if proc.popen.poll() is None:
            proc.kill9()


def _start_worker(redis_url: str, *extra: str) -> Proc:
    proc = Proc.start([*TRANSFERD, "worker", "--redis-url", redis_url, "--threads", "2", *extra])
    _WORKERS.append(proc)
    proc.wait_for_line("ready", 30)
    return proc


def test_worker_killed_mid_file_is_reaped_and_resumed(
    lofar_node: Callable[..., LofarNode], nginx_server: NginxServer, redis_server: RedisServer,
    fault_proxy: Callable[[str], FaultProxy], dest: Path,
) -> None:
    # TRANSFERD_RESUME_TEST_MIB=2048 runs the same measurement on a 2 GiB file
    size = int(os.environ.get("TRANSFERD_RESUME_TEST_MIB", "64")) * MiB
    slack_s = size / (20 * MiB)  # room for big sizes on a slow disk
    src = write_random(nginx_server.root / "resume.bin", size)
    proxy = fault_proxy(nginx_server.url)
    # per connection, and the file moves on 4 at once: about 4 s for the whole file, so
    # the kill lands while later chunks are still to come (a finished copy has no manifest)
    proxy.set(throttle_bps=max(4 * MiB, size // 64))
    *_, client = lofar_node(workers=0)
    worker = _start_worker(redis_server.url, "--lease-s", "3", "--chunk-size", "8M")
    job_id = client.submit(
        [{"source": f"{proxy.url}/resume.bin", "destination": f"file://{dest}/resume.bin",
          "checksum": f"adler32:{adler32_hex(src)}"}], {},
    )["job_id"]
    file_id = f"{job_id}.0"
    store = redis.Redis(port=redis_server.port)

    def chunks_recorded() -> int:
        # no decode_responses: the client answers bytes
        keys = cast("list[bytes]", store.hkeys(f"td:manifest:{file_id}"))
        return sum(1 for k in keys if k.startswith(b"c:"))

    # Half the bytes may be in flight on every stream before any chunk is whole:
    # kill once half is done and the manifest holds a chunk.
    wait_until(lambda: client.job(job_id)["totals"]["bytes_done"] >= size // 2
               and chunks_recorded() > 0, 60 + slack_s, "half, with a chunk recorded")
    worker.kill9()
    proxy.set(throttle_bps=0)
    # Bytes the dead worker's connections were still being sent are not the
    # resume's: count from when its sockets are all gone.
    wait_until(lambda: proxy.open_sockets == 0, 30, "the killed worker's connections to end")
    sent_before = proxy.bytes_to_client
    done_chunks = chunks_recorded()
    assert done_chunks > 0, "no chunk was recorded before the kill"
    missing = size - done_chunks * 8 * MiB
    second = _start_worker(redis_server.url, "--lease-s", "3", "--chunk-size", "8M")
    try:
        job = wait_job(client, job_id, {"FINISHED", "FAILED"}, 90 + slack_s)
    finally:
        second.stop()
    assert job["state"] == "FINISHED"
    assert filecmp.cmp(dest / "resume.bin", src, shallow=False)
    record = client.files(job_id)["files"][0]
    assert record["attempts"] == 2
    fetched = proxy.bytes_to_client - sent_before  # bodies plus a few hundred header bytes
    # Only the chunks the manifest did not have were fetched again.
    print(f"resume: {size} bytes, {done_chunks} chunks kept, {missing} missing, "
          f"{fetched} fetched again")
    assert missing <= fetched <= missing + 64 * 1024, (fetched, missing)


def test_worker_killed_at_the_default_lease_is_reaped_within_a_minute(
    lofar_node: Callable[..., LofarNode], nginx_server: NginxServer, redis_server: RedisServer,
    fault_proxy: Callable[[str], FaultProxy], dest: Path,
) -> None:
    src = write_random(nginx_server.root / "lease.bin", 32 * MiB)
    proxy = fault_proxy(nginx_server.url)
    proxy.set(throttle_bps=2 * MiB)
    *_, client = lofar_node(workers=0)
    worker = _start_worker(redis_server.url)  # no --lease-s: the default lease
    job_id = client.submit(
        [{"source": f"{proxy.url}/lease.bin", "destination": f"file://{dest}/lease.bin",
          "checksum": f"adler32:{adler32_hex(src)}"}], {},
    )["job_id"]

    def first_file() -> dict[str, Any]:
        record: dict[str, Any] = client.files(job_id)["files"][0]
        return record

    wait_until(lambda: first_file()["state"] == "ACTIVE" and first_file()["bytes_done"] > 0,
               60, "the file to be moving")
    worker.kill9()
    killed_at = time.monotonic()
    wait_until(lambda: first_file()["state"] == "SUBMITTED", 60,
               "the file to go back to SUBMITTED within 60 s of the kill")
    assert time.monotonic() - killed_at <= 60
    record = first_file()
    assert record["error_class"] == "lease_expired"
    assert record["attempts"] == 1

    proxy.set(throttle_bps=0)
    second = _start_worker(redis_server.url)
    try:
        job = wait_job(client, job_id, {"FINISHED", "FAILED"}, 60)
    finally:
        second.stop()
    assert job["state"] == "FINISHED"
    assert (dest / "lease.bin").read_bytes() == src.read_bytes()


def test_no_dramatiq_time_limit_applies_to_transfers(redis_server: RedisServer) -> None:
    """dramatiq's TimeLimit middleware kills an actor after 10 minutes by default: the
    pool every worker runs (`transferd worker` and `serve`'s own) must not have it."""
    pool = WorkerPool(redis_server.url, 1)
    try:
        broker = pool.broker
        limits = [type(m).__name__ for m in broker.middleware if isinstance(m, TimeLimit)]
        assert limits == [], "TimeLimit middleware would stop transfers after its limit"
        hour_ms = 3600 * 1000
        for backend in BACKENDS:
            actor = broker.get_actor(actor_name(backend))
            assert actor.broker is broker and actor.queue_name == queue_name(backend)
            for options in (actor.options, transfer_message(backend, "job.0").options):
                assert options.get("time_limit", hour_ms) >= hour_ms, (backend, options)
    finally:
        pool.broker.close()
        pool.runtime.loop.close()


def test_worker_sigterm_releases_its_file(
    lofar_node: Callable[..., LofarNode], nginx_server: NginxServer, redis_server: RedisServer,
    fault_proxy: Callable[[str], FaultProxy], dest: Path,
) -> None:
    write_random(nginx_server.root / "slow.bin", 32 * MiB)
    proxy = fault_proxy(nginx_server.url)
    proxy.set(throttle_bps=2 * MiB)
    *_, client = lofar_node(workers=0)
    worker = _start_worker(redis_server.url)
    job_id = client.submit(
        [{"source": f"{proxy.url}/slow.bin", "destination": f"file://{dest}/slow.bin"}], {}
    )["job_id"]
    wait_until(lambda: client.job(job_id)["totals"]["bytes_done"] > 0, 30, "bytes to move")
    assert worker.stop(timeout_s=15) == 0
    record = client.files(job_id)["files"][0]
    assert record["state"] == "SUBMITTED"
    assert record["attempts"] == 0  # a release is not a failed attempt


def test_a_file_never_waits_behind_a_busy_worker_while_another_is_idle(
    lofar_node: Callable[..., LofarNode], nginx_server: NginxServer,
    fault_proxy: Callable[[str], FaultProxy], worker_procs: Callable[..., tuple[Proc, str]],
    dest: Path,
) -> None:
    # two worker processes of one thread each, two files on a link that holds still: each
    # worker takes one (a worker holds no message its busy thread cannot start)
    proxy = fault_proxy(nginx_server.url)
    proxy.set(stalled=True)
    for name in ("a.bin", "b.bin"):
        (nginx_server.root / name).write_bytes(os.urandom(100_000))
    *_, client = lofar_node(workers=0)
    worker_procs(threads=1)
    worker_procs(threads=1)
    job_id = client.submit(
        [{"source": f"{proxy.url}/{name}", "destination": f"file://{dest}/{name}"}
         for name in ("a.bin", "b.bin")], {},
    )["job_id"]
    # the scheduler would hand a file held in a busy worker to another only after 120 s
    wait_until(lambda: client.job(job_id)["totals"]["files_by_state"]["ACTIVE"] == 2, 20,
               "both files taken at once, one by each worker")
    proxy.set(stalled=False)
    assert wait_job(client, job_id)["state"] == "FINISHED"


def test_leader_killed_another_node_takes_over(
    node_factory: Callable[..., Node], nginx_server: NginxServer, redis_server: RedisServer,
    dest: Path,
) -> None:
    write_random(nginx_server.root / "y.bin", MiB)
    first = node_factory(allow_roots=[dest], workers=2)
    second = node_factory(allow_roots=[dest], workers=2)
    r = redis.Redis(port=redis_server.port)
    leader = cast(bytes, wait_until(lambda: r.get("td:leader"), 10, "a leader"))
    leader_pid = int(leader.split(b":")[1])
    nodes = {first.proc.popen.pid: first, second.proc.popen.pid: second}
    dead = nodes.pop(leader_pid)
    survivor = next(iter(nodes.values()))
    dead.proc.kill9()

    def survivor_leads() -> bytes | bool | None:
        v = cast("bytes | None", r.get("td:leader"))
        return v and int(v.split(b":")[1]) == survivor.proc.popen.pid

    new_leader = wait_until(survivor_leads, 15, "the survivor to lead")
    assert new_leader
    client = Client(survivor.url, create_token("lofar", "submitter", redis_url=redis_server.url))
    job_id = client.submit(
        [{"source": f"{nginx_server.url}/y.bin", "destination": f"file://{dest}/y.bin"}], {}
    )["job_id"]
    assert wait_job(client, job_id, {"FINISHED", "FAILED"}, 30)["state"] == "FINISHED"


def test_embedded_default_keeps_an_acknowledged_job_through_kill9(
    tmp_path: Path, nginx_server: NginxServer, dest: Path
) -> None:
    """`transferd serve` with no Redis URL: kill -9 the node and its redis-server, restart."""
    src = write_random(nginx_server.root / "keep.bin", 3 * MiB)
    state = tmp_path / "state"
    node = start_node(state, redis_url=None, workers=0, allow_roots=[dest])
    try:
        token = create_token("lofar", "submitter", state_dir=state)
        client = Client(node.url, token)
        job_id = client.submit(
            [{"source": f"{nginx_server.url}/keep.bin", "destination": f"file://{dest}/keep.bin",
              "checksum": f"adler32:{adler32_hex(src)}"}], {},
        )["job_id"]
        redis_pid = int((state / PIDFILE_NAME).read_text())
    finally:
        node.proc.kill9()
    os.kill(redis_pid, signal.SIGKILL)
    wait_until(lambda: not Path(f"/proc/{redis_pid}").exists() or _zombie(redis_pid), 10, "redis")
    again = start_node(state, redis_url=None, workers=2, allow_roots=[dest])
    try:
        client = Client(again.url, token)
        job = wait_job(client, job_id, {"FINISHED", "FAILED"}, 60)
    finally:
        again.proc.stop()
    assert job["state"] == "FINISHED"
    assert (dest / "keep.bin").read_bytes() == src.read_bytes()


def _zombie(pid: int) -> bool:
    try:
        return "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
