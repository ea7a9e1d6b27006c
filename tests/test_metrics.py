"""``/metrics`` scraped from a real node and parsed with Prometheus' own text parser.

Every figure is checked against what the REST API says about the same jobs.
"""

from __future__ import annotations

import os
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.node_proc import Node, create_token, wait_until
from tests.redis_server import RedisServer, free_port
from tests.servers import NginxServer
from transferd.client import Client

TERMINAL = {"FINISHED", "FINISHEDDIRTY", "FAILED", "CANCELED", "EXPIRED"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


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


def test_metrics_agree_with_the_api(
    node_factory: Callable[..., Node], nginx_server: NginxServer, redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    node = node_factory(allow_roots=[dest])
    client = Client(node.url, create_token("lofar", "submitter", redis_url=redis_server.url))
    ops = Client(node.url, create_token("ops", "operator", redis_url=redis_server.url))
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
        def ended(j: str = job_id) -> bool:
            return client.job(j)["state"] in TERMINAL

        wait_until(ended, 60, f"job {job_id}")

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
