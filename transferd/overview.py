"""What the dashboard, ``/metrics`` and ``transferd top`` show: aggregates read from Redis.

Most figures are read live from the store's own keys (``docs/contracts.md``):
job hashes and state indexes, link queues, in-flight sets and leases.  Two
things the store does not keep are kept here, under ``td:dash:*``:

- per-minute buckets ``td:dash:m:{minute}`` (a hash, kept 25 h): files
  finished and failed per tenant and per link, and throughput samples per
  tenant and per link (the sum of ``rate_bps`` of ACTIVE files, taken every
  ``SAMPLE_INTERVAL_S``; ``n`` counts the samples so a minute's average is
  ``rate|x / n``);
- running counters ``td:dash:counters``: retries and failed attempts by error
  class (checksum failures among them), from the event stream.

Both are written by ``Sampler``, which runs in every node but works only while
it holds ``td:dash:lock`` (SET NX, renewed), so several nodes sharing one Redis
count every event once.  Its place in the event stream is ``td:dash:cursor``,
so a node that takes over continues where the last one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import socket
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from transferd.models import Principal
from transferd.states import FileState, JobState

__all__ = ["Overview", "Sampler", "Snapshot", "redact_text", "redact_url"]

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 10.0
MINUTE_TTL_S = 25 * 3600
LOCK_TTL_MS = 30_000
EVENT_BATCH = 1000
HISTORY_MINUTES = 60
DAY_MINUTES = 24 * 60
LIVE_STATES = (JobState.AWAITING_ACCEPTANCE, JobState.SUBMITTED, JobState.ACTIVE)
MAX_ACTIVE_READ = 2000  # leases looked at per call; a node runs far fewer files at once
MAX_FAILURE_JOBS = 500  # newest jobs searched for failed files
MAX_FAILED_FILES_PER_JOB = 200
MAX_BACKEND_COUNT = 20_000  # queued ids per link whose backend is read exactly
OWNER_CACHE_SIZE = 10_000

_JOB_FIELDS = ("job_id", "owner", "state", "created_at", "updated_at", "bytes_done",
               "bytes_total", "rate_bps", "files_total",
               *(f"n:{s.value}" for s in FileState))

# counts queued files by backend: KEYS none; ARGV ns, link, cap
_COUNT_BACKENDS = r"""
local ids = redis.call('ZRANGE', ARGV[1] .. ':q:' .. ARGV[2], 0, tonumber(ARGV[3]) - 1)
local counts = {}
for _, fid in ipairs(ids) do
  local b = redis.call('HGET', ARGV[1] .. ':file:' .. fid, 'backend') or '?'
  counts[b] = (counts[b] or 0) + 1
end
local out = {}
for b, n in pairs(counts) do out[#out + 1] = b; out[#out + 1] = n end
return out
"""

_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:[a-z0-9_.-]*(?:token|sig|signature|secret|password|passwd|key|credential)"
    r"[a-z0-9_.-]*)=)[^&#\s]*"
)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s?#]+@")


def redact_url(url: str) -> str:
    """``url`` without user:password and without the values of secret-looking query keys."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1***@", url))


def redact_text(text: str | None) -> str | None:
    """A message with every URL in it redacted as by :func:`redact_url`."""
    return None if text is None else redact_url(text)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _num(value: object) -> float:
    if value is None or value == b"" or value == "":
        return 0.0
    try:
        number = float(_text(value))
    except ValueError:
        return 0.0
    return number if math.isfinite(number) else 0.0


def minute_of(ts: float) -> int:
    return int(ts // 60) * 60


@dataclass
class JobRow:
    """The few fields of a job hash the aggregates need."""

    job_id: str
    owner: str
    state: str
    created_at: float
    updated_at: float
    bytes_done: int
    bytes_total: int
    rate_bps: float
    files_total: int
    files_by_state: dict[str, int]

    @classmethod
    def from_values(cls, values: list[Any]) -> JobRow | None:
        if values[0] is None:
            return None
        v = dict(zip(_JOB_FIELDS, values, strict=True))
        return cls(
            job_id=_text(v["job_id"]), owner=_text(v["owner"]), state=_text(v["state"]),
            created_at=_num(v["created_at"]), updated_at=_num(v["updated_at"]),
            bytes_done=int(_num(v["bytes_done"])), bytes_total=int(_num(v["bytes_total"])),
            rate_bps=max(0.0, _num(v["rate_bps"])), files_total=int(_num(v["files_total"])),
            files_by_state={s.value: int(_num(v[f"n:{s.value}"])) for s in FileState},
        )

    def progress_json(self) -> dict[str, Any]:
        left = self.bytes_total - self.bytes_done
        eta = left / self.rate_bps if self.rate_bps > 0 and left > 0 else None
        return {
            "job_id": self.job_id, "owner": self.owner, "state": self.state,
            "bytes_done": self.bytes_done, "bytes_total": self.bytes_total,
            "rate_bps": self.rate_bps, "eta_s": eta, "files": self.files_total,
            "files_by_state": self.files_by_state,
        }


@dataclass
class Snapshot:
    """Everything ``/metrics`` reports, read in one go (all tenants)."""

    jobs_by_state: dict[str, int] = field(default_factory=dict)
    files_by_state: dict[str, int] = field(default_factory=dict)
    bytes_done: int = 0
    bytes_total: int = 0
    links: list[dict[str, Any]] = field(default_factory=list)
    backends: list[dict[str, Any]] = field(default_factory=list)
    workers: dict[str, tuple[int, float]] = field(default_factory=dict)  # id -> (files, lease)
    counters: dict[str, int] = field(default_factory=dict)
    leader: str | None = None


class Overview:
    """Read-only aggregates over the store's keys, filtered for a principal."""

    def __init__(
        self,
        redis: Redis,
        *,
        link_limit: Callable[[str], int],
        namespace: str = "td",
        targets: Callable[[list[str]], Awaitable[dict[str, int]]] | None = None,
    ) -> None:
        self.redis = redis
        self.ns = namespace
        self.link_limit = link_limit
        # the scheduler's own answer (LinkBook.targets: optimizer within the policy's
        # ceilings), so every view shows the concurrency the links really get
        self.targets = targets
        self._count_backends = redis.register_script(_COUNT_BACKENDS)
        self._owners: OrderedDict[str, str] = OrderedDict()

    def _k(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    # -- building blocks ---------------------------------------------------------------
    async def owner_of(self, job_id: str) -> str | None:
        """The tenant owning ``job_id`` (cached: a job never changes owner)."""
        if job_id in self._owners:
            self._owners.move_to_end(job_id)
            return self._owners[job_id]
        raw = await self.redis.hget(self._k("job", job_id), "owner")
        if raw is None:
            return None
        owner = _text(raw)
        self._owners[job_id] = owner
        while len(self._owners) > OWNER_CACHE_SIZE:
            self._owners.popitem(last=False)
        return owner

    async def _owners_of(self, job_ids: Iterable[str]) -> dict[str, str]:
        job_ids = list(job_ids)
        missing = [j for j in set(job_ids) if j not in self._owners]
        if missing:
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in missing:
                    pipe.hget(self._k("job", job_id), "owner")
                raws = await pipe.execute()
            for job_id, raw in zip(missing, raws, strict=True):
                if raw is not None:
                    self._owners[job_id] = _text(raw)
            while len(self._owners) > OWNER_CACHE_SIZE:
                self._owners.popitem(last=False)
        return {j: self._owners[j] for j in job_ids if j in self._owners}

    async def job_rows(self, job_ids: list[str]) -> list[JobRow]:
        rows: list[JobRow] = []
        for start in range(0, len(job_ids), 1000):
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids[start:start + 1000]:
                    pipe.hmget(self._k("job", job_id), list(_JOB_FIELDS))
                raws = await pipe.execute()
            rows += [r for r in (JobRow.from_values(v) for v in raws) if r is not None]
        return rows

    async def live_jobs(self, principal: Principal | None) -> list[JobRow]:
        """Jobs not yet terminal that ``principal`` may see (None: all), newest first."""
        ids: list[str] = []
        for state in LIVE_STATES:
            members = await self.redis.zrange(self._k("jobs", "state", state), 0, -1)
            ids += [_text(m) for m in members]
        rows = await self.job_rows(ids)
        rows = [r for r in rows if r.state in {s.value for s in LIVE_STATES}
                and _visible(principal, r.owner)]
        return sorted(rows, key=lambda r: r.created_at, reverse=True)

    async def _minutes(self, now: float, count: int) -> list[tuple[int, dict[str, str]]]:
        last = minute_of(now)
        minutes = [last - 60 * i for i in range(count - 1, -1, -1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for minute in minutes:
                pipe.hgetall(self._k("dash", "m", str(minute)))
            raws = await pipe.execute()
        return [(m, {_text(k): _text(v) for k, v in raw.items()})
                for m, raw in zip(minutes, raws, strict=True)]

    async def _links(self) -> list[str]:
        # links the optimizer has seen stay listed after they drain, as in GET /links
        names = {_text(m) for m in await self.redis.smembers(self._k("links"))}
        names |= {_text(m) for m in await self.redis.smembers(self._k("opt", "links"))}
        for prefix in ("inflight", "q"):
            pattern = self._k(prefix, "*")
            cut = len(self._k(prefix)) + 1
            async for key in self.redis.scan_iter(match=pattern, count=1000):
                names.add(_text(key)[cut:])
        return sorted(names)

    # -- views --------------------------------------------------------------------------
    async def queues(self, now: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(per link, per backend): queued, dispatched, active, throughput, target, success."""
        links = await self._links()
        hour = await self._minutes(now, HISTORY_MINUTES)
        per_link: list[dict[str, Any]] = []
        backends: dict[str, dict[str, Any]] = defaultdict(
            lambda: {"queued": 0, "dispatched": 0, "active": 0, "rate_bps": 0.0}
        )
        targets = await self.targets(links) if self.targets is not None else {}
        for link in links:
            queued = int(await self.redis.zcard(self._k("q", link)))
            members = [_text(m) for m in await self.redis.smembers(self._k("inflight", link))]
            active = dispatched = 0
            rate = 0.0
            if members:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for fid in members:
                        pipe.hmget(self._k("file", fid), ["state", "rate_bps", "backend"])
                    raws = await pipe.execute()
                for state, file_rate, backend in raws:
                    b = backends[_text(backend or b"?")]
                    if _text(state or b"") == FileState.ACTIVE.value:
                        active += 1
                        b["active"] += 1
                        rate += max(0.0, _num(file_rate))
                        b["rate_bps"] += max(0.0, _num(file_rate))
                    else:
                        dispatched += 1
                        b["dispatched"] += 1
            if queued:
                flat = await self._count_backends(
                    keys=[], args=[self.ns, link, MAX_BACKEND_COUNT]
                )
                counted = {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
                seen = sum(counted.values()) or 1
                for backend, n in counted.items():
                    # beyond the cap the rest is assumed to split as the first ids do
                    backends[backend]["queued"] += round(n * queued / seen)
            finished = sum(int(_num(b.get(f"lfin|{link}"))) for _, b in hour)
            failed = sum(int(_num(b.get(f"lfail|{link}"))) for _, b in hour)
            history = [
                _num(b.get(f"lrate|{link}")) / max(1.0, _num(b.get("n"))) for _, b in hour
            ]
            if link in targets:
                target = targets[link]
            else:
                optimized = await self.redis.hget(self._k("opt", link), "target")
                target = int(_num(optimized)) if optimized else self.link_limit(link)
            per_link.append({
                "link": link, "queued": queued, "dispatched": dispatched, "active": active,
                "target": target, "rate_bps": rate,
                "finished_1h": finished, "failed_1h": failed,
                "success_rate": finished / (finished + failed) if finished + failed else None,
                "history_bps": history,
            })
        per_backend = [{"backend": name, **values} for name, values in sorted(backends.items())]
        return per_link, per_backend

    async def active_files(
        self, principal: Principal | None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """ACTIVE files the principal may see, fastest first."""
        ids = [_text(m) for m in await self.redis.zrange(self._k("leases"), 0, MAX_ACTIVE_READ - 1)]
        if not ids:
            return []
        fields = ["file_id", "job_id", "index", "source", "destination", "state", "size",
                  "bytes_done", "rate_bps", "attempts", "backend", "link", "started_at"]
        async with self.redis.pipeline(transaction=False) as pipe:
            for fid in ids:
                pipe.hmget(self._k("file", fid), fields)
            raws = await pipe.execute()
        rows = [dict(zip(fields, (None if v is None else _text(v) for v in raw), strict=True))
                for raw in raws if raw[0] is not None]
        rows = [r for r in rows if r["state"] == FileState.ACTIVE.value]
        owners = await self._owners_of(r["job_id"] or "" for r in rows)
        out: list[dict[str, Any]] = []
        for r in rows:
            owner = owners.get(r["job_id"] or "")
            if owner is None or not _visible(principal, owner):
                continue
            size = int(r["size"]) if r["size"] else None
            done = int(_num(r["bytes_done"]))
            rate = max(0.0, _num(r["rate_bps"]))
            eta = (size - done) / rate if size is not None and rate > 0 and size > done else None
            out.append({
                "file_id": r["file_id"], "job_id": r["job_id"], "owner": owner,
                "index": int(_num(r["index"])),
                "source": redact_url(r["source"] or ""),
                "destination": redact_url(r["destination"] or ""),
                "size": size, "bytes_done": done, "rate_bps": rate, "eta_s": eta,
                "attempts": int(_num(r["attempts"])), "backend": r["backend"], "link": r["link"],
                "started_at": _num(r["started_at"]) or None,
            })
        out.sort(key=lambda f: (-f["rate_bps"], f["file_id"]))
        return out[:limit]

    async def failures(self, principal: Principal | None, now: float) -> list[dict[str, Any]]:
        """FAILED files of jobs touched in the last 24 h, grouped by error class and reason."""
        key = self._k("jobs") if principal is None or principal.sees_all_tenants else (
            self._k("jobs", "owner", principal.tenant))
        ids = [_text(m) for m in await self.redis.zrevrange(key, 0, MAX_FAILURE_JOBS - 1)]
        rows = [r for r in await self.job_rows(ids)
                if r.files_by_state.get("FAILED") and r.updated_at >= now - 86400
                and _visible(principal, r.owner)]
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows:
            fids = await self.redis.zrange(
                self._k("job", row.job_id, "files", FileState.FAILED.value),
                0, MAX_FAILED_FILES_PER_JOB - 1,
            )
            async with self.redis.pipeline(transaction=False) as pipe:
                for fid in fids:
                    pipe.hmget(self._k("file", _text(fid)), ["error_class", "reason"])
                raws = await pipe.execute()
            for error_class, reason in raws:
                reason_text = redact_text(_text(reason or b"")) or ""
                group_key = (_text(error_class or b"unknown"), reason_text)
                group = groups.setdefault(group_key, {
                    "error_class": group_key[0], "reason": group_key[1], "count": 0, "jobs": {},
                })
                group["count"] += 1
                group["jobs"][row.job_id] = group["jobs"].get(row.job_id, 0) + 1
        out = []
        for group in sorted(groups.values(), key=lambda g: (-g["count"], g["error_class"])):
            jobs = sorted(group["jobs"].items(), key=lambda kv: -kv[1])
            out.append({**group, "jobs": [{"job_id": j, "count": n} for j, n in jobs]})
        return out

    async def summary(self, principal: Principal, now: float | None = None) -> dict[str, Any]:
        """The dashboard's overview for ``principal`` (tenant-filtered unless operator)."""
        now = time.time() if now is None else now
        live = await self.live_jobs(principal)
        day = await self._minutes(now, DAY_MINUTES)
        suffixes = None if principal.sees_all_tenants else {principal.tenant}

        def total(prefix: str, buckets: list[tuple[int, dict[str, str]]]) -> float:
            return sum(
                _num(v) for _, b in buckets for k, v in b.items()
                if k.startswith(prefix + "|") and (
                    suffixes is None or k.split("|", 1)[1] in suffixes)
            )

        hour = day[-HISTORY_MINUTES:]
        history = [
            {"t": minute, "bps": total("rate", [(minute, b)]) / max(1.0, _num(b.get("n")))}
            for minute, b in hour
        ]
        body: dict[str, Any] = {
            "generated_at": now,
            "scope": "all tenants" if principal.sees_all_tenants else principal.tenant,
            "principal": {"tenant": principal.tenant, "role": principal.role.value},
            "tiles": {
                "queued": sum(r.files_by_state.get("SUBMITTED", 0) for r in live),
                "active": sum(r.files_by_state.get("ACTIVE", 0) for r in live),
                "finished_24h": int(total("fin", day)),
                "failed_24h": int(total("fail", day)),
                "rate_bps": sum(r.rate_bps for r in live if r.state == JobState.ACTIVE.value),
                "jobs_live": len(live),
            },
            "throughput": history,
            "live_jobs": [r.progress_json() for r in live[:200]],
            "active_files": await self.active_files(principal),
            "failures": await self.failures(principal, now),
            "links": None,
            "backends": None,
        }
        if principal.sees_all_tenants:
            body["links"], body["backends"] = await self.queues(now)
        return body

    async def snapshot(self, now: float | None = None) -> Snapshot:
        """All-tenant figures for ``/metrics``."""
        now = time.time() if now is None else now
        snap = Snapshot()
        for state in JobState:
            snap.jobs_by_state[state.value] = int(
                await self.redis.zcard(self._k("jobs", "state", state.value)))
        snap.files_by_state = {s.value: 0 for s in FileState}
        cursor = 0
        while True:
            cursor, members = await self.redis.zscan(self._k("jobs"), cursor, count=1000)
            for row in await self.job_rows([_text(m) for m, _ in members]):
                snap.bytes_done += row.bytes_done
                snap.bytes_total += row.bytes_total
                for s, n in row.files_by_state.items():
                    snap.files_by_state[s] += n
            if cursor == 0:
                break
        snap.links, snap.backends = await self.queues(now)
        leases: list[Any] = await self.redis.zrange(
            self._k("leases"), 0, MAX_ACTIVE_READ - 1, withscores=True)
        if leases:
            async with self.redis.pipeline(transaction=False) as pipe:
                for fid, _ in leases:
                    pipe.hget(self._k("file", _text(fid)), "lease_owner")
                owners = await pipe.execute()
            for (_, until), owner in zip(leases, owners, strict=True):
                if not owner:
                    continue
                name = _text(owner)
                files, latest = snap.workers.get(name, (0, 0.0))
                snap.workers[name] = (files + 1, max(latest, float(until)))
        raw = await self.redis.hgetall(self._k("dash", "counters"))
        snap.counters = {_text(k): int(_num(v)) for k, v in raw.items()}
        leader = await self.redis.get(self._k("leader"))
        snap.leader = _text(leader) if leader is not None else None
        return snap


def _visible(principal: Principal | None, owner: str) -> bool:
    return principal is None or principal.sees_all_tenants or principal.tenant == owner


class Sampler:
    """Writes the per-minute buckets and counters; one node at a time does the work."""

    def __init__(self, redis: Redis, overview: Overview, *, namespace: str = "td") -> None:
        self.redis = redis
        self.overview = overview
        self.ns = namespace
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stop = asyncio.Event()
        self._last_sample = 0.0

    def _k(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    async def run(self) -> None:
        """Until :meth:`stop`: hold the lock, fold new events in, sample rates every 10 s."""
        while not self._stop.is_set():
            try:
                if await self._hold_lock():
                    while await self.fold_events() == EVENT_BATCH:
                        pass
                    if time.monotonic() - self._last_sample >= SAMPLE_INTERVAL_S:
                        await self.sample_rates(time.time())
                        self._last_sample = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dashboard sampler step failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)

    async def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            if _text(await self.redis.get(self._k("dash", "lock")) or b"") == self.node_id:
                await self.redis.delete(self._k("dash", "lock"))

    async def _hold_lock(self) -> bool:
        key = self._k("dash", "lock")
        if await self.redis.set(key, self.node_id, nx=True, px=LOCK_TTL_MS):
            return True
        if _text(await self.redis.get(key) or b"") == self.node_id:
            await self.redis.pexpire(key, LOCK_TTL_MS)
            return True
        return False

    async def fold_events(self) -> int:
        """Count one batch of events after the cursor into buckets and counters."""
        cursor_key = self._k("dash", "cursor")
        cursor = _text(await self.redis.get(cursor_key) or b"0-0")
        reply: Any = await self.redis.xread({self._k("events"): cursor}, count=EVENT_BATCH)
        entries: list[tuple[str, dict[str, str]]] = []
        for _stream, items in reply or []:
            for entry_id, fields in items:
                entries.append((_text(entry_id), {_text(k): _text(v) for k, v in fields.items()}))
        if not entries:
            return 0
        files = [e for _, e in entries if e.get("type") == "file"]
        owners = await self.overview._owners_of(e.get("job_id", "") for e in files)
        terminal = [e for e in files if e.get("state") in ("FINISHED", "FAILED")]
        links: list[Any] = []
        if terminal:
            async with self.redis.pipeline(transaction=False) as pipe:
                for e in terminal:
                    pipe.hget(self._k("file", e.get("id", "")), "link")
                links = await pipe.execute()
        link_of = {id(e): _text(link or b"?") for e, link in zip(terminal, links, strict=True)}
        oldest = time.time() - MINUTE_TTL_S
        async with self.redis.pipeline(transaction=True) as pipe:
            for e in files:
                state, error_class = e.get("state"), e.get("error_class")
                if error_class and state in ("SUBMITTED", "FAILED"):
                    pipe.hincrby(self._k("dash", "counters"), f"attempt_failures|{error_class}", 1)
                    if state == "SUBMITTED":
                        pipe.hincrby(self._k("dash", "counters"), "retries", 1)
                if state not in ("FINISHED", "FAILED"):
                    continue
                ts = _num(e.get("ts"))
                if ts < oldest:
                    continue
                bucket = self._k("dash", "m", str(minute_of(ts)))
                short = "fin" if state == "FINISHED" else "fail"
                pipe.hincrby(bucket, f"{short}|{owners.get(e.get('job_id', ''), '?')}", 1)
                pipe.hincrby(bucket, f"l{short}|{link_of[id(e)]}", 1)
                pipe.expire(bucket, MINUTE_TTL_S)
            pipe.set(cursor_key, entries[-1][0])
            await pipe.execute()
        return len(entries)

    async def sample_rates(self, now: float) -> None:
        """Add one throughput sample (per tenant and per link) to the current minute."""
        ids = [_text(m) for m in await self.redis.zrange(self._k("leases"), 0, MAX_ACTIVE_READ - 1)]
        rows: list[Any] = []
        if ids:
            async with self.redis.pipeline(transaction=False) as pipe:
                for fid in ids:
                    pipe.hmget(self._k("file", fid), ["job_id", "link", "rate_bps", "state"])
                rows = await pipe.execute()
        live = [r for r in rows if r[0] is not None and _text(r[3] or b"") == "ACTIVE"]
        owners = await self.overview._owners_of(_text(r[0]) for r in live)
        per_tenant: dict[str, float] = defaultdict(float)
        per_link: dict[str, float] = defaultdict(float)
        for job_id, link, rate, _ in live:
            per_tenant[owners.get(_text(job_id), "?")] += max(0.0, _num(rate))
            per_link[_text(link or b"?")] += max(0.0, _num(rate))
        bucket = self._k("dash", "m", str(minute_of(now)))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(bucket, "n", 1)
            for tenant, rate_bps in per_tenant.items():
                pipe.hincrbyfloat(bucket, f"rate|{tenant}", rate_bps)
            for link, rate_bps in per_link.items():
                pipe.hincrbyfloat(bucket, f"lrate|{link}", rate_bps)
            pipe.expire(bucket, MINUTE_TTL_S)
            await pipe.execute()


def counters_by_prefix(counters: Mapping[str, int], prefix: str) -> dict[str, int]:
    """``{suffix: n}`` for the counters named ``prefix|suffix``."""
    return {k.split("|", 1)[1]: v for k, v in counters.items() if k.startswith(prefix + "|")}
