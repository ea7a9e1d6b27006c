"""Prometheus ``/metrics``: the store's figures read at scrape time, plus API latency.

Everything but the latency histogram comes from Redis when Prometheus asks
(``Overview.snapshot``), through a custom collector, so every node sharing a
Redis reports the same deployment-wide numbers and nothing is lost when a
node restarts.  Workers are listed from their presence beats
(``workers.runtime``, every 5 s), so an idle worker shows with 0 files and a
stopped one drops out.  The latency histogram is this node's own (label
``route`` is the route template, never the raw path, so job ids do not explode
the series).

``/metrics`` needs no credential, as Prometheus scrapers expect: it carries
counts, link names (host pairs) and worker ids, never tenants, tokens or URLs.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from transferd.overview import Overview, Snapshot, counters_by_prefix
from workers.runtime import PRESENCE_KEY, PRESENCE_WINDOW_S

__all__ = ["StoreCollector", "setup_metrics"]

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SKIP_LATENCY = ("/api/v1/events",)  # a stream lasts as long as the browser tab

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REGISTRY_KEY = web.AppKey("transferd.metrics.registry", CollectorRegistry)
_LATENCY_KEY = web.AppKey("transferd.metrics.latency", Histogram)


class StoreCollector(Collector):
    """Turns the last ``Snapshot`` into metric families (prometheus-client calls ``collect``)."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()
        self.workers_seen: dict[str, float] = {}  # worker id -> last presence beat (unix s)

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        jobs = GaugeMetricFamily("transferd_jobs", "Jobs by state.", labels=["state"])
        for state, n in sorted(snap.jobs_by_state.items()):
            jobs.add_metric([state], n)
        yield jobs
        files = GaugeMetricFamily("transferd_files", "Files by state.", labels=["state"])
        for state, n in sorted(snap.files_by_state.items()):
            files.add_metric([state], n)
        yield files
        yield CounterMetricFamily(
            "transferd_bytes_moved", "Bytes copied so far, over every job's files.",
            value=snap.bytes_done)
        yield GaugeMetricFamily(
            "transferd_bytes_requested", "Known bytes of every job's files.",
            value=snap.bytes_total)

        link_labels = ["link"]
        families = {
            "active": GaugeMetricFamily("transferd_link_active_files",
                                        "Files being copied now per link.", labels=link_labels),
            "queued": GaugeMetricFamily("transferd_link_queued_files",
                                        "Files waiting in the link's queue.", labels=link_labels),
            "dispatched": GaugeMetricFamily("transferd_link_dispatched_files",
                                            "Files sent to a worker and not yet claimed.",
                                            labels=link_labels),
            "target": GaugeMetricFamily("transferd_link_target_files",
                                        "Concurrent files the scheduler allows on the link.",
                                        labels=link_labels),
            "rate_bps": GaugeMetricFamily("transferd_link_throughput_bytes_per_second",
                                          "Sum of the active files' rates.", labels=link_labels),
        }
        for link in snap.links:
            for key, family in families.items():
                family.add_metric([link["link"]], link[key])
        yield from families.values()

        backend_families = {
            "queued": GaugeMetricFamily("transferd_backend_queue_depth",
                                        "Files queued for the backend.", labels=["backend"]),
            "active": GaugeMetricFamily("transferd_backend_active_files",
                                        "Files the backend is copying now.", labels=["backend"]),
            "dispatched": GaugeMetricFamily("transferd_backend_dispatched_files",
                                            "Files sent to the backend's workers, unclaimed.",
                                            labels=["backend"]),
        }
        for backend in snap.backends:
            for key, family in backend_families.items():
                family.add_metric([backend["backend"]], backend[key])
        yield from backend_families.values()

        files_per_worker = GaugeMetricFamily(
            "transferd_worker_active_files", "Files a worker holds a lease on.", labels=["worker"])
        lease = GaugeMetricFamily(
            "transferd_worker_lease_expiry_timestamp_seconds",
            "Latest lease expiry among a worker's files; each heartbeat pushes it forward.",
            labels=["worker"])
        seen = GaugeMetricFamily(
            "transferd_worker_last_seen_timestamp_seconds",
            "When a worker process last said it was up (every 5 s, busy or idle).",
            labels=["worker"])
        # a worker holding leases is listed even before (or without) its first beat
        for worker in sorted(snap.workers.keys() | self.workers_seen.keys()):
            n, until = snap.workers.get(worker, (0, None))
            files_per_worker.add_metric([worker], n)
            if until is not None:
                lease.add_metric([worker], until)
            if worker in self.workers_seen:
                seen.add_metric([worker], self.workers_seen[worker])
        yield files_per_worker
        yield lease
        yield seen
        yield GaugeMetricFamily("transferd_workers_busy", "Workers holding at least one lease.",
                                value=len(snap.workers))
        yield GaugeMetricFamily("transferd_workers_up",
                                "Worker processes seen in the last 15 s, busy or idle.",
                                value=len(self.workers_seen))

        failures = counters_by_prefix(snap.counters, "attempt_failures")
        attempts = CounterMetricFamily(
            "transferd_file_attempt_failures", "Failed copy attempts by error class.",
            labels=["error_class"])
        for error_class, n in sorted(failures.items()):
            attempts.add_metric([error_class], n)
        yield attempts
        yield CounterMetricFamily(
            "transferd_checksum_failures", "Copy attempts whose checksum did not match.",
            value=failures.get("checksum", 0))
        yield CounterMetricFamily(
            "transferd_retries", "Files put back in the queue after a failed attempt.",
            value=snap.counters.get("retries", 0))
        yield GaugeMetricFamily("transferd_scheduler_leader", "1 while a scheduler leads.",
                                value=1 if snap.leader else 0)


def setup_metrics(app: web.Application, overview: Overview) -> None:
    """Mount ``GET /metrics`` and the latency middleware on ``app``."""
    registry = CollectorRegistry(auto_describe=False)
    collector = StoreCollector()
    registry.register(collector)
    latency = Histogram(
        "transferd_api_request_duration_seconds", "API request latency.",
        labelnames=["method", "route", "status"], buckets=LATENCY_BUCKETS_S, registry=registry,
    )
    app[_REGISTRY_KEY] = registry
    app[_LATENCY_KEY] = latency
    app.middlewares.append(latency_middleware)

    async def metrics(request: web.Request) -> web.Response:
        now = time.time()
        collector.snapshot = await overview.snapshot(now)
        collector.workers_seen = await workers_seen(overview, now)
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", metrics)


async def workers_seen(overview: Overview, now: float) -> dict[str, float]:
    """Worker id -> last presence beat, for the workers heard from in PRESENCE_WINDOW_S."""
    raw: Any = await overview.redis.zrangebyscore(
        PRESENCE_KEY, now - PRESENCE_WINDOW_S, "+inf", withscores=True)
    return {m.decode() if isinstance(m, bytes) else str(m): float(score) for m, score in raw}


@web.middleware
async def latency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time every API request into the histogram (by route template and status)."""
    if not request.path.startswith("/api/") or request.path in _SKIP_LATENCY:
        return await handler(request)
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        request.app[_LATENCY_KEY].labels(request.method, route, str(status)).observe(
            time.monotonic() - started)
