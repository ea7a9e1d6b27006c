"""The policy's per-host limits ([limits] host_max_active_* and [limits.hosts."HOST"]) cap
how many files load one host at a time, across all its links.

End to end on loopback: real `transferd serve`, real nginx, throttled through the fault
proxy so files stay ACTIVE long enough to be counted.  And one leader round against a
real Redis, for both of the store's dispatch paths."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.asyncio

from policies.policy import parse_policy
from tests.node_proc import Node, create_token, wait_until
from tests.redis_server import RedisServer
from tests.servers import FaultProxy, NginxServer
from transferd.client import Client
from transferd.models import FileSpec, JobParams, JobRequest, Principal, Role
from transferd.scheduler import Scheduler
from transferd.store import JobStore
from workers.broker import make_broker

MiB = 1024 * 1024
THROTTLE_BPS = 512 * 1024  # per connection: a 1 MiB file stays ACTIVE about 2 s
LIMITED_LINK = "127.0.0.1 -> local"
OPEN_LINK = "localhost -> local"  # the same proxy port under another name: another host


@dataclass
class ActiveSamples:
    """The most files seen ACTIVE at once, per link and per job, over repeated samples."""

    ops: Client
    user: Client
    jobs: list[str]
    by_link: dict[str, int] = field(default_factory=dict)
    by_job: dict[str, int] = field(default_factory=dict)
    samples: int = 0

    def take(self) -> bool:
        """One sample of GET /api/v1/links and GET /api/v1/jobs/{id}; True once all jobs ended."""
        links = {link["link"]: int(link["active"]) for link in self.ops.links()}
        for name, active in links.items():
            self.by_link[name] = max(self.by_link.get(name, 0), active)
        ended = True
        for job_id in self.jobs:
            job = self.user.job(job_id)
            active = int(job["totals"]["files_by_state"]["ACTIVE"])
            self.by_job[job_id] = max(self.by_job.get(job_id, 0), active)
            ended = ended and job["state"] in {"FINISHED", "FAILED", "CANCELED", "EXPIRED"}
        self.samples += 1
        return ended


def write_policy(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def slow_source(nginx_server: NginxServer, fault_proxy: Callable[[str], FaultProxy]) -> str:
    """The base URL of a throttled path to nginx serving one 1 MiB file, ``one.bin``."""
    (nginx_server.root / "one.bin").write_bytes(os.urandom(1 * MiB))
    proxy = fault_proxy(nginx_server.url)
    proxy.set(throttle_bps=THROTTLE_BPS)
    return proxy.url


def submit_copies(user: Client, base_url: str, dest: Path, prefix: str, count: int) -> str:
    return str(user.submit(
        [{"source": f"{base_url}/one.bin", "destination": f"file://{dest}/{prefix}{i:02d}"}
         for i in range(count)], {},
    )["job_id"])


def assert_all_finished(user: Client, job_id: str, count: int, dest: Path, prefix: str) -> None:
    job = user.job(job_id)
    assert job["state"] == "FINISHED", job
    assert job["totals"]["files_by_state"]["FINISHED"] == count
    files = list(user.iter_files(job_id))
    assert len(files) == count and all(f["state"] == "FINISHED" for f in files)
    assert all((dest / f"{prefix}{i:02d}").stat().st_size == MiB for i in range(count))


def test_a_source_host_limit_caps_that_host_and_leaves_another_host_free(
    node_factory: Callable[..., Node], redis_server: RedisServer, slow_source: str,
    dest: Path, tmp_path: Path,
) -> None:
    policy = write_policy(tmp_path / "policy.toml", (
        '[limits.hosts."127.0.0.1"]\nmax_active_source = 2\n'
    ))
    node = node_factory(allow_roots=[dest], workers=8, extra=["--policy", str(policy)])
    user = Client(node.url, create_token("lofar", "submitter", redis_url=redis_server.url))
    ops = Client(node.url, create_token("ops", "operator", redis_url=redis_server.url))
    assert user.policy()["limits"]["hosts"] == {
        "127.0.0.1": {"max_active_source": 2, "max_active_destination": None}}

    limited = submit_copies(user, slow_source, dest, "a", 10)
    free = submit_copies(user, slow_source.replace("127.0.0.1", "localhost"), dest, "b", 10)
    seen = ActiveSamples(ops, user, [limited, free])
    wait_until(seen.take, 300, "both jobs to end")

    assert seen.samples >= 10, "the jobs ended before they could be watched"
    assert seen.by_link[LIMITED_LINK] == 2, seen  # reaches the limit, never above it
    assert seen.by_job[limited] == 2, seen
    assert seen.by_link[OPEN_LINK] > 2, seen  # the other host is not held to it
    assert seen.by_job[free] > 2, seen
    assert_all_finished(user, limited, 10, dest, "a")
    assert_all_finished(user, free, 10, dest, "b")


def test_a_destination_host_limit_holds_across_links_from_two_source_hosts(
    node_factory: Callable[..., Node], redis_server: RedisServer, slow_source: str,
    dest: Path, tmp_path: Path,
) -> None:
    policy = write_policy(tmp_path / "policy.toml", (
        "[limits]\nhost_max_active_destination = 3\n"  # file:// destinations load host "local"
    ))
    node = node_factory(allow_roots=[dest], workers=8, extra=["--policy", str(policy)])
    user = Client(node.url, create_token("lofar", "submitter", redis_url=redis_server.url))
    ops = Client(node.url, create_token("ops", "operator", redis_url=redis_server.url))

    # one job over both hosts: its ACTIVE count is one counter, read atomically
    other = slow_source.replace("127.0.0.1", "localhost")
    job_id = str(user.submit(
        [{"source": f"{base}/one.bin", "destination": f"file://{dest}/{prefix}{i:02d}"}
         for base, prefix in ((slow_source, "a"), (other, "b")) for i in range(8)], {},
    )["job_id"])
    seen = ActiveSamples(ops, user, [job_id])
    wait_until(seen.take, 300, "the job to end")

    assert seen.samples >= 10, "the job ended before it could be watched"
    assert seen.by_job[job_id] == 3, seen  # both links together reach the limit, never above it
    assert seen.by_link[LIMITED_LINK] >= 1 and seen.by_link[OPEN_LINK] >= 1, seen
    job = user.job(job_id)
    assert job["state"] == "FINISHED", job
    assert job["totals"]["files_by_state"]["FINISHED"] == 16
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        f"{prefix}{i:02d}" for prefix in "ab" for i in range(8))
    assert all(p.stat().st_size == MiB for p in dest.iterdir())


@pytest.mark.parametrize("flows", [True, False], ids=["fair-share queues", "link queue only"])
async def test_one_dispatch_round_sends_no_more_than_the_source_host_allows(
    aredis: redis.asyncio.Redis, redis_url: str, flows: bool,
) -> None:
    store = JobStore(aredis)
    policy = parse_policy({"limits": {"hosts": {"archive.surf.example": {"max_active_source": 2}}}})
    broker = make_broker(redis_url)
    scheduler = Scheduler(store, aredis, broker, link_limit=lambda _link: 8, policy=lambda: policy)
    request = JobRequest([FileSpec(f"https://archive.surf.example/SB{i:03}.tar",
                                   f"file:///data/SB{i:03}.tar", 1000) for i in range(10)],
                         JobParams())
    await store.submit(Principal("alice", "lofar", Role.SUBMITTER), request)
    link = "archive.surf.example -> local"
    if not flows:  # as queued by a version before fair share: the link queue alone
        flow_queues = [key async for key in aredis.scan_iter(f"td:qf:{link}#*")]
        assert flow_queues
        await aredis.delete(*flow_queues, f"td:qflows:{link}")
    try:
        assert await scheduler.dispatch_once() == 2
        assert await store.inflight_count(link) == 2
        assert await scheduler.dispatch_once() == 0  # still two on their way
    finally:
        broker.close()
