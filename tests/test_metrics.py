"""``/metrics`` scraped from a real node and parsed with Prometheus' own text parser.

Every figure is checked against what the REST API says about the same jobs.
"""

from __future__ import annotations

import os
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.node_proc import (
    TERMINAL,
    LofarNode,
    Node,
    Proc,
    create_token,
    wait_job,
    wait_until,
)
from tests.redis_server import free_port
from tests.servers import FaultProxy, NginxServer
from transferd.client import Client

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
LINK = "127.0.0.1 -> local"  # every test's sources are on 127.0.0.1, its destinations local


def scrape(node: Node) -> Samples:
    with urllib.request.urlopen(node.url + "/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


NodeAndClients = tuple[Node, Client, Client]


@pytest.fixture
def lofar_and_ops(lofar_node: Callable[..., LofarNode], redis_url: str
                  ) -> Callable[..., NodeAndClients]:
    """Starts a node as lofar_node does: (node, a lofar submitter's client, an operator's)."""
    def start(**kwargs: Any) -> NodeAndClients:
        node, _, client = lofar_node(**kwargs)
        return node, client, Client(node.url, create_token("ops", "operator", redis_url=redis_url))

    return start


def three_per_link(tmp_path: Path) -> list[str]:
    """Node arguments for a policy that caps a link at three files and keeps that cap."""
    policy = tmp_path / "policy.toml"
    policy.write_text("[optimizer]\nenabled = false\n[limits]\nlink_max_active = 3\n")
    return ["--policy", str(policy)]


def link_row(ops: Client) -> dict[str, Any] | None:
    """LINK as GET /links shows it, or None while it is not listed."""
    return next((x for x in ops.links() if x["link"] == LINK), None)


def test_metrics_agree_with_the_api(
    lofar_and_ops: Callable[..., NodeAndClients], nginx_server: NginxServer, dest: Path,
) -> None:
    node, client, ops = lofar_and_ops()
    payloads = {name: os.urandom(size) for name, size in (("a.bin", 300_000), ("b.bin", 5))}
    for name, data in payloads.items():
        (nginx_server.root / name).write_bytes(data)
    good = client.submit([
        {"source": f"{nginx_server.url}/{name}", "destination": f"file://{dest}/{name}",
         "size": len(data)} for name, data in payloads.items()], {})["job_id"]
    missing = client.submit([
        {"source": f"{nginx_server.url}/nope.bin", "destination": f"file://{dest}/nope.bin"}],
        {"max_retries": 1, "retry_delay_s": 0})["job_id"]
    # nothing listens there: refused connections are retried (once here), then the file fails
    refused = client.submit([
        {"source": f"http://127.0.0.1:{free_port()}/x.bin", "destination": f"file://{dest}/x"}],
        {"max_retries": 1, "retry_delay_s": 0})["job_id"]
    wrong = f"adler32:{(zlib.adler32(payloads['b.bin']) ^ 1):08x}"
    corrupt = client.submit([
        {"source": f"{nginx_server.url}/b.bin", "destination": f"file://{dest}/c.bin",
         "checksum": wrong}], {"max_retries": 0})["job_id"]
    for job_id in (good, missing, corrupt, refused):
        wait_job(client, job_id)

    jobs = ops.jobs()["jobs"]
    assert {j["job_id"]: j["state"] for j in jobs} == {
        good: "FINISHED", missing: "FAILED", corrupt: "FAILED", refused: "FAILED"}
    files_by_state: dict[str, int] = {}
    for job in jobs:
        for state, n in job["totals"]["files_by_state"].items():
            files_by_state[state] = files_by_state.get(state, 0) + n
    bytes_done = sum(j["totals"]["bytes_done"] for j in jobs)
    failed = {j: client.files(j)["files"][0] for j in (missing, corrupt, refused)}
    assert failed[missing]["error_class"] == "not_found"
    assert failed[corrupt]["error_class"] == "checksum"
    assert failed[missing]["attempts"] == failed[corrupt]["attempts"] == 1  # not retryable
    assert failed[refused]["attempts"] == 2
    refused_class = failed[refused]["error_class"]

    # retries and failed attempts are folded in from the event stream within a second or two
    def settled() -> Samples | None:
        samples = scrape(node)
        folded = (value(samples, "transferd_retries_total") == 1
                  and value(samples, "transferd_file_attempt_failures_total",
                            error_class=refused_class) == 2)
        return samples if folded else None

    samples = wait_until(settled, 20, "the retry and both failed attempts to be counted")
    assert isinstance(samples, dict)
    for state in TERMINAL | {"SUBMITTED", "ACTIVE", "AWAITING_ACCEPTANCE"}:
        expected = sum(1 for j in jobs if j["state"] == state)
        assert value(samples, "transferd_jobs", state=state) == expected, state
    for state, n in files_by_state.items():
        assert value(samples, "transferd_files", state=state) == n, state
    assert value(samples, "transferd_bytes_moved_total") == bytes_done == 300_005
    assert value(samples, "transferd_file_attempt_failures_total", error_class="not_found") == 1
    assert value(samples, "transferd_checksum_failures_total") == 1
    assert value(samples, "transferd_scheduler_leader") == 1
    assert value(samples, "transferd_backend_queue_depth", backend="stream") == 0
    # the latency histogram counted our API calls by route template, not by job id
    calls = value(samples, "transferd_api_request_duration_seconds_count",
                  method="GET", route="/api/v1/jobs/{job_id}", status="200")
    assert calls >= 3
    assert not any(good in labels_value for (_, labels) in samples
                   for _, labels_value in labels)


def labelled(samples: Samples, name: str, label: str) -> dict[str, float]:
    """``{label value: sample value}`` of every sample of ``name``."""
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


def test_link_and_worker_metrics_agree_with_the_api(
    lofar_and_ops: Callable[..., NodeAndClients], nginx_server: NginxServer,
    fault_proxy: Callable[[str], FaultProxy], worker_procs: Callable[[], tuple[Proc, str]],
    dest: Path, tmp_path: Path,
) -> None:
    # no workers in the node: the work is done by two worker processes whose ids we know
    node, client, ops = lofar_and_ops(workers=0, extra=three_per_link(tmp_path))
    (_, first_id), (second, second_id) = worker_procs(), worker_procs()
    workers = {first_id, second_id}
    (nginx_server.root / "m.bin").write_bytes(os.urandom(200_000))
    proxy = fault_proxy(nginx_server.url)
    proxy.set(stalled=True)  # the link holds still while the two views are compared
    job = client.submit([{"source": f"{proxy.url}/m.bin", "destination": f"file://{dest}/m{i}"}
                         for i in range(10)], {})["job_id"]

    fields = ("active", "inflight", "queued", "target")

    def link_view() -> dict[str, Any]:
        return {k: v for k, v in (link_row(ops) or {}).items() if k in fields}

    def steady() -> tuple[dict[str, Any], Samples] | None:
        # a scrape between two equal API answers saw the same link state as the API
        before = link_view()
        # dispatched is not yet claimed: wait until a worker holds at least one lease
        if before.get("inflight") != 3 or before.get("queued") != 7 or not before.get("active"):
            return None
        samples = scrape(node)
        return (before, samples) if link_view() == before else None

    seen = wait_until(steady, 30, "three files in flight and seven queued on the link")
    assert isinstance(seen, tuple)
    api, samples = seen
    assert value(samples, "transferd_link_active_files", link=LINK) == api["active"] > 0
    assert value(samples, "transferd_link_queued_files", link=LINK) == api["queued"] == 7
    assert (value(samples, "transferd_link_dispatched_files", link=LINK)
            == api["inflight"] - api["active"])
    # the leases are held by our worker processes, and by no one else
    held = labelled(samples, "transferd_worker_active_files", "worker")
    assert set(held) == workers, held  # a worker with nothing to do is listed too, at 0
    assert sum(held.values()) == api["active"]
    busy = {w for w, n in held.items() if n > 0}
    assert set(labelled(samples, "transferd_worker_lease_expiry_timestamp_seconds",
                        "worker")) == busy
    assert value(samples, "transferd_workers_busy") == len(busy)
    assert value(samples, "transferd_workers_up") == 2

    proxy.set(stalled=False)
    assert wait_job(client, job, timeout_s=60)["state"] == "FINISHED"
    api = link_row(ops)
    assert api is not None
    samples = scrape(node)
    assert api["active"] == api["queued"] == 0 and api["successes"] == 10
    # idle workers stay listed, with no files and a recent presence beat
    assert labelled(samples, "transferd_worker_active_files", "worker") == {
        first_id: 0, second_id: 0}
    assert set(labelled(samples, "transferd_worker_last_seen_timestamp_seconds",
                        "worker")) == workers
    assert value(samples, "transferd_workers_busy") == 0

    # a worker that stops drops out at once, not after its presence window
    assert second.stop() == 0

    def second_gone() -> Samples | None:
        now = scrape(node)
        return now if set(labelled(now, "transferd_worker_active_files", "worker")) == {
            first_id} else None

    samples_after = wait_until(second_gone, 10, "the stopped worker to leave /metrics")
    assert isinstance(samples_after, dict)
    assert value(samples_after, "transferd_workers_up") == 1


def test_link_target_metric_is_the_target_the_scheduler_uses(
    lofar_and_ops: Callable[..., NodeAndClients], dest: Path, tmp_path: Path,
) -> None:
    node, client, ops = lofar_and_ops(workers=0, extra=three_per_link(tmp_path))
    client.submit([{"source": f"http://127.0.0.1:{free_port()}/x{i}",
                    "destination": f"file://{dest}/x{i}"} for i in range(5)], {})
    api = wait_until(lambda: link_row(ops), 30, "the link to be listed")
    assert isinstance(api, dict) and api["target"] == 3
    assert value(scrape(node), "transferd_link_target_files", link=LINK) == 3


def test_a_drained_link_reports_zero_rather_than_vanishing(
    lofar_and_ops: Callable[..., NodeAndClients], nginx_server: NginxServer, dest: Path,
) -> None:
    node, client, ops = lofar_and_ops()
    (nginx_server.root / "d.bin").write_bytes(os.urandom(1000))
    job = client.submit([{"source": f"{nginx_server.url}/d.bin",
                          "destination": f"file://{dest}/d.bin"}], {})["job_id"]
    assert wait_job(client, job, timeout_s=30)["state"] == "FINISHED"
    api = link_row(ops)
    assert api is not None
    samples = scrape(node)
    assert api["active"] == api["queued"] == 0
    assert ("transferd_link_active_files", (("link", LINK),)) in samples
    assert value(samples, "transferd_link_target_files", link=LINK) == api["target"]
