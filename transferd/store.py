"""The job store: Redis as the single source of truth for jobs, files and queues.

The key layout and the methods are the contract in docs/contracts.md.  A job
and its files are written in one MULTI (guarded by WATCH for idempotency);
every later file transition is one Lua script (transferd/store_lua.py) that is
fed the allowed transitions from ``transferd.states.FILE_TRANSITIONS`` and
updates the file, the job's counters, totals and state, the queues and the
event stream together.  Steps that touch every file of a large job (cancel,
retry, accept, expire) run as a sequence of bounded scripts
(transferd/store_lua_jobs.py) so Redis is never blocked for long; the first
one sets the job flag that makes the rest safe against racing workers (a
canceled job's files cannot be claimed).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import WatchError

from policies import retry as retry_policy
from policies.routing import RouteRule, route
from transferd import endpoint_tokens, store_lua, store_lua_jobs
from transferd.errors import ChecksumMismatch
from transferd.models import FileRecord, Job, JobRequest, Principal
from transferd.states import (
    FILE_TRANSITIONS,
    FileEvent,
    FileState,
    JobState,
    job_state,
)
from transferd.store_records import (
    as_text,
    deadline_ts,
    decode_hash,
    file_from_hash,
    file_row,
    job_from_hash,
    new_job_row,
)

MAX_FILES_PER_JOB = 100_000
IDEMPOTENCY_TTL_S = 24 * 3600
BATCH_FILES = 5_000  # files per bulk script (cancel, retry, accept, expire) or per ZADD
SCAN_BATCH = 1_000  # ids per promote / reap script
LOAD_BATCH_FILES = 1_000  # files per loader script in submit (a few ms of Redis time each)
T = TypeVar("T")


def _edge(event: FileEvent) -> tuple[str, str]:
    """The allowed from-states (comma-separated) and the target of ``event``, for a script."""
    sources, target = FILE_TRANSITIONS[event]
    return ",".join(sorted(s.value for s in sources)), target.value


class JobStore:
    """Jobs, files, link queues, leases and the event stream in one Redis.

    ``dispatch_timeout_s`` is how long a dispatched file may wait for a worker
    to claim it before ``reap`` puts it back in its link queue.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        namespace: str = "td",
        dispatch_timeout_s: float = 120.0,
        routing_rules: Callable[[], Sequence[RouteRule]] | None = None,
    ) -> None:
        self.redis = redis
        self.ns = namespace
        self.dispatch_timeout_s = dispatch_timeout_s
        # the policy's rules in force (a reload changes them for later submissions)
        self.routing_rules = routing_rules or (lambda: ())
        self.cancel_channel = f"{namespace}:cancel"
        self.events_key = f"{namespace}:events"

        def load(body: str) -> Any:
            return redis.register_script(store_lua.script(body))

        self._store_files_lua = store_lua.script(store_lua.STORE_FILES)
        self._claim = load(store_lua.CLAIM)
        self._heartbeat = load(store_lua.HEARTBEAT)
        self._finish = load(store_lua.FINISH)
        self._fail = load(store_lua.FAIL)
        self._release = load(store_lua.RELEASE)
        self._set_size = load(store_lua.SET_SIZE)
        self._set_members = load(store_lua.SET_MEMBERS)
        self._dispatch = load(store_lua.DISPATCH)
        self._dispatch_fair = load(store_lua.DISPATCH_FAIR)
        self._promote = load(store_lua.PROMOTE_DELAYED)
        self._reap = load(store_lua.REAP)
        self._cancel = load(store_lua_jobs.CANCEL_BATCH)
        self._retry = load(store_lua_jobs.RETRY_BATCH)
        self._accept = load(store_lua_jobs.ACCEPT_BATCH)
        self._expire = load(store_lua_jobs.EXPIRE_BATCH)

    def _k(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    async def _run(self, script: Any, now: float | None, *args: object) -> Any:
        stamp = repr(time.time() if now is None else now)
        return await script(keys=[], args=[self.ns, stamp, *(str(a) for a in args)])

    # -- submission side (API) -------------------------------------------------
    async def submit(
        self,
        principal: Principal,
        request: JobRequest,
        *,
        idempotency_key: str | None = None,
        job_id: str | None = None,
        awaiting_acceptance: bool = False,
    ) -> tuple[Job, bool]:
        """Store a job and its files; returns (job, created).

        Same key + principal within 24 h → the same job, created=False; so does
        an explicit ``job_id`` that already exists.  Raises ValueError for more
        than MAX_FILES_PER_JOB files, a URL pair no backend handles, or a bad
        deadline — before anything is stored.
        """
        files = request.files
        if len(files) > MAX_FILES_PER_JOB:
            raise ValueError(f"a job holds at most {MAX_FILES_PER_JOB} files, got {len(files)}")
        idem_key = self._k("idem", principal.subject, idempotency_key) if idempotency_key else None
        if idem_key and (replay := await self._job_for_key(idem_key)):
            return replay, False
        job_id = job_id or str(uuid.uuid4())
        job_key = self._k("job", job_id)
        if (existing := await self.get_job(job_id)) is not None:
            return existing, False

        params = request.params
        due_ts = deadline_ts(params.deadline)
        now = time.time()
        accepted = not awaiting_acceptance
        state = job_state({FileState.SUBMITTED: len(files)}, accepted=accepted)
        rules = self.routing_rules()
        file_rows = [
            file_row(
                index,
                spec,
                route(spec.source, spec.destination, params.backend, size=spec.size, rules=rules),
            )
            for index, spec in enumerate(files)
        ]
        # the nonce tells this submission's own commit from a concurrent one's (see below)
        nonce = uuid.uuid4().hex
        job_row = new_job_row(
            job_id,
            principal,
            request,
            state=state,
            now=now,
            accepted=accepted,
            deadline_ts=due_ts,
            nonce=nonce,
        )
        # FIFO numbers reserved outside the transaction: a lost race only leaves a gap
        seq_end = int(await self.redis.incrby(self._k("seq"), max(1, len(files))))
        seq_start = seq_end - len(files) + 1

        watched = [job_key] + ([idem_key] if idem_key else [])
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(*watched)
                if idem_key and await pipe.get(idem_key) is not None:
                    raise WatchError("idempotency key taken")
                if await pipe.exists(job_key):
                    raise WatchError("job id taken")
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.execute_command("HSET", job_key, *chain.from_iterable(job_row.items()))
                pipe.zadd(self._k("jobs"), {job_id: now})
                pipe.zadd(self._k("jobs", "owner", principal.tenant), {job_id: now})
                pipe.zadd(self._k("jobs", "state", state.value), {job_id: now})
                # files go as JSON to a loader script: packing 100k HSETs client-side is slow
                for chunk in _chunks(file_rows, LOAD_BATCH_FILES):
                    pipe.eval(
                        self._store_files_lua, 0, self.ns, job_id, FileState.SUBMITTED.value,
                        params.priority, params.max_retries, repr(float(params.retry_delay_s)),
                        int(accepted), seq_start, json.dumps(chunk), principal.tenant,
                        params.activity or "default",
                    )  # fmt: skip
                    seq_start += len(chunk)
                if due_ts is not None:
                    pipe.zadd(self._k("deadlines"), {job_id: due_ts})
                # endpoint tokens (secrets) beside the job, never in its file hashes
                creds, refs = endpoint_tokens.token_rows(files)
                if creds:
                    pipe.execute_command(
                        "HSET",
                        endpoint_tokens.creds_key(self.ns, job_id),
                        *chain.from_iterable(creds.items()),
                    )
                for ref_chunk in _chunks(list(refs.items()), BATCH_FILES):
                    pipe.execute_command(
                        "HSET",
                        endpoint_tokens.refs_key(self.ns, job_id),
                        *chain.from_iterable(ref_chunk),
                    )
                if idem_key:
                    pipe.set(idem_key, job_id, ex=IDEMPOTENCY_TTL_S)
                pipe.xadd(
                    self.events_key,
                    {"type": "job", "id": job_id, "job_id": job_id, "state": state.value,
                     "ts": repr(now)},
                    maxlen=100_000, approximate=True,
                )  # fmt: skip
                await pipe.execute()
            except WatchError:
                # Either a concurrent submit with the same key or id committed first (replay
                # it), or our own EXEC committed and its reply was lost: redis-py reports a
                # connection error or timeout while watching as WatchError.  The nonce tells.
                taken = await self.redis.get(idem_key) if idem_key else None
                for winner_id in ([as_text(taken)] if taken is not None else []) + [job_id]:
                    row = decode_hash(await self.redis.hgetall(self._k("job", winner_id)))
                    if row:
                        return job_from_hash(row), row.get("nonce") == nonce
                raise
        job = await self.get_job(job_id)
        assert job is not None
        return job, True

    async def replay(self, principal: Principal, idempotency_key: str) -> Job | None:
        """The job ``principal`` already submitted under ``idempotency_key`` (24 h), if any;
        lets the API answer a replay before it lists folders again."""
        return await self._job_for_key(self._k("idem", principal.subject, idempotency_key))

    async def _job_for_key(self, idem_key: str) -> Job | None:
        job_id = await self.redis.get(idem_key)
        return await self.get_job(as_text(job_id)) if job_id is not None else None

    async def get_job(self, job_id: str) -> Job | None:
        raw = await self.redis.hgetall(self._k("job", job_id))
        return job_from_hash(decode_hash(raw)) if raw else None

    async def _get_jobs(self, job_ids: Sequence[str]) -> list[Job | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self._k("job", job_id))
            raws = await pipe.execute()
        return [job_from_hash(decode_hash(r)) if r else None for r in raws]

    async def list_jobs(
        self,
        *,
        owner: str | None = None,
        state: JobState | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> tuple[list[Job], str | None]:
        """Jobs newest first, optionally of one owner and/or state; (page, next cursor)."""
        if state is not None:
            key = self._k("jobs", "state", state.value)
        elif owner is not None:
            key = self._k("jobs", "owner", owner)
        else:
            key = self._k("jobs")
        limit = max(1, limit)
        max_score: float | str = "+inf"
        after: tuple[float, str] | None = None
        if cursor:
            score_txt, _, member = cursor.partition("|")
            after = (float(score_txt), member)
            max_score = after[0]
        page: list[Job] = []
        offset = 0
        while True:
            rows = await self.redis.zrevrangebyscore(
                key, max_score, "-inf", start=offset, num=max(limit, 50), withscores=True
            )
            if not rows:
                return page, None
            offset += len(rows)
            entries = [(as_text(row[0]), float(row[1])) for row in rows]
            # equal scores come in descending member order: skip up to the cursor's member
            entries = [(m, s) for m, s in entries if after is None or s < after[0] or m < after[1]]
            jobs = await self._get_jobs([m for m, _ in entries])
            for job in jobs:
                if job is None or (owner is not None and job.owner != owner):
                    continue
                if state is not None and job.state != state:
                    continue
                if len(page) == limit:
                    last = page[-1]
                    return page, f"{last.created_at!r}|{last.job_id}"
                page.append(job)

    async def get_file(self, file_id: str) -> FileRecord | None:
        raw = await self.redis.hgetall(self._k("file", file_id))
        return file_from_hash(decode_hash(raw)) if raw else None

    async def _get_files(self, file_ids: Iterable[str]) -> list[FileRecord]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for file_id in file_ids:
                pipe.hgetall(self._k("file", file_id))
            raws = await pipe.execute()
        return [file_from_hash(decode_hash(r)) for r in raws if r]

    async def list_files(
        self,
        job_id: str,
        *,
        state: FileState | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> tuple[list[FileRecord], str | None]:
        """A job's files by index, optionally only those in ``state``; (page, next cursor)."""
        start = int(cursor) if cursor else 0
        if state is None:
            total = int(await self.redis.hget(self._k("job", job_id), "files_total") or 0)
            end = min(start + limit, total)
            ids = [f"{job_id}.{i}" for i in range(start, end)]
            return await self._get_files(ids), (str(end) if end < total else None)
        rows = await self.redis.zrangebyscore(
            self._k("job", job_id, "files", state.value),
            start, "+inf", start=0, num=limit + 1, withscores=True,
        )  # fmt: skip
        next_cursor = str(int(rows[limit][1])) if len(rows) > limit else None
        return await self._get_files(as_text(row[0]) for row in rows[:limit]), next_cursor

    async def cancel_job(self, job_id: str) -> Job | None:
        """Cancel every SUBMITTED and ACTIVE file now; terminal jobs stay as they are."""
        cancel_from, cancel_to = _edge(FileEvent.CANCEL)
        first = True
        while True:
            remaining = int(
                await self._run(
                    self._cancel, None, job_id, BATCH_FILES, int(first), cancel_from, cancel_to
                )
            )
            if remaining == -1:
                return None
            first = False
            if remaining <= 0:
                return await self.get_job(job_id)

    async def retry_job(self, job_id: str) -> tuple[Job | None, int]:
        """Queue the job's FAILED and CANCELED files afresh; returns (job, files retried)."""
        retry_from, retry_to = _edge(FileEvent.RETRY)
        first, total = True, 0
        while True:
            retried, remaining = (
                int(x)
                for x in await self._run(
                    self._retry, None, job_id, BATCH_FILES, int(first), retry_from, retry_to
                )
            )
            if retried == -1:
                return None, 0
            first = False
            total += retried
            if remaining == 0 or retried == 0:
                return await self.get_job(job_id), total

    async def accept_job(self, job_id: str) -> Job | None:
        """Accept a job awaiting acceptance: its files are queued. Idempotent."""
        start = 0
        while start >= 0:
            start = int(await self._run(self._accept, None, job_id, start, BATCH_FILES))
            if start == -1:
                return None
        return await self.get_job(job_id)

    async def expire_due(self, now: float) -> list[str]:
        """Fail the unfinished files of jobs whose deadline passed; returns those job ids."""
        fail_from, fail_to = _edge(FileEvent.FAIL)
        due = await self.redis.zrangebyscore(self._k("deadlines"), "-inf", now)
        expired: list[str] = []
        for raw in due:
            job_id = as_text(raw)
            remaining = int(
                await self._run(self._expire, now, job_id, BATCH_FILES, fail_from, fail_to)
            )
            if remaining == -1:
                continue
            while remaining > 0:
                remaining = int(
                    await self._run(self._expire, now, job_id, BATCH_FILES, fail_from, fail_to)
                )
            expired.append(job_id)
        return expired

    # -- scheduler side ----------------------------------------------------------
    async def links(self) -> list[str]:
        """Links that have queued files."""
        return sorted(as_text(m) for m in await self.redis.smembers(self._k("links")))

    async def promote_delayed(self, now: float) -> int:
        """Queue the files whose retry delay is over; returns how many."""
        claim_from, _ = _edge(FileEvent.CLAIM)
        moved = 0
        while True:
            scanned, promoted = await self._run(self._promote, now, SCAN_BATCH, claim_from)
            moved += int(promoted)
            if int(scanned) < SCAN_BATCH:
                return moved

    async def dispatch(self, link: str, limit: int, now: float) -> list[tuple[str, str]]:
        """Take up to ``limit`` minus in-flight files from the link queue: [(file_id, backend)]."""
        claim_from, _ = _edge(FileEvent.CLAIM)
        flat = await self._run(
            self._dispatch, now, link, limit, repr(now + self.dispatch_timeout_s), claim_from
        )
        return [(as_text(flat[i]), as_text(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def flow_queues(self, link: str) -> dict[str, int]:
        """The link's fair-share flows ("tenant|activity") with files queued: flow → count."""
        flows = sorted(as_text(m) for m in await self.redis.smembers(self._k("qflows", link)))
        if not flows:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for flow in flows:
                pipe.zcard(f"{self._k('qf', link)}#{flow}")
            counts = await pipe.execute()
        return {f: int(n) for f, n in zip(flows, counts, strict=True) if int(n) > 0}

    async def dispatch_fair(
        self, link: str, limit: int, now: float, flows: Sequence[str]
    ) -> list[tuple[str, str, str]]:
        """Like :meth:`dispatch`, taking one file from each flow of ``flows`` in turn
        (the fair-share order, ``policies.fairshare.pick``): [(file_id, backend, flow)]."""
        if not flows:
            return []
        claim_from, _ = _edge(FileEvent.CLAIM)
        flat = await self._run(
            self._dispatch_fair, now, link, limit, repr(now + self.dispatch_timeout_s),
            claim_from, *flows,
        )  # fmt: skip
        return [
            (as_text(flat[i]), as_text(flat[i + 1]), as_text(flat[i + 2]))
            for i in range(0, len(flat), 3)
        ]

    async def inflight_count(self, link: str) -> int:
        return int(await self.redis.scard(self._k("inflight", link)))

    async def reap(self, now: float) -> list[str]:
        """Put back files whose lease or dispatch ran out; returns their ids."""
        requeue_from, requeue_to = _edge(FileEvent.REQUEUE)
        fail_from, fail_to = _edge(FileEvent.FAIL)
        claim_from, _ = _edge(FileEvent.CLAIM)
        reaped: list[str] = []
        while True:
            out = await self._run(
                self._reap, now, SCAN_BATCH,
                requeue_from, requeue_to, fail_from, fail_to, claim_from,
            )  # fmt: skip
            reaped += [as_text(x) for x in out[2:]]
            if int(out[0]) < SCAN_BATCH and int(out[1]) < SCAN_BATCH:
                return reaped

    # -- worker side ---------------------------------------------------------------
    async def claim(
        self, file_id: str, worker_id: str, lease_s: float, *, now: float | None = None
    ) -> FileRecord | None:
        """Take a SUBMITTED file under a lease; None when it is not claimable (a duplicate)."""
        claim_from, claim_to = _edge(FileEvent.CLAIM)
        raw = await self._run(
            self._claim, now, file_id, worker_id, repr(float(lease_s)), claim_from, claim_to
        )
        return file_from_hash(decode_hash(raw)) if raw else None

    async def heartbeat(
        self,
        file_id: str,
        worker_id: str,
        bytes_done: int,
        rate_bps: float,
        lease_s: float,
        *,
        now: float | None = None,
    ) -> bool:
        """Record progress and extend the lease; False means stop (canceled or lease lost)."""
        ok = await self._run(
            self._heartbeat, now, file_id, worker_id,
            int(bytes_done), repr(float(rate_bps)), repr(float(lease_s)),
        )  # fmt: skip
        return bool(ok)

    async def finish(
        self,
        file_id: str,
        worker_id: str,
        verified_checksum: str | None,
        bytes_done: int,
        *,
        now: float | None = None,
    ) -> bool:
        """ACTIVE → FINISHED for the lease holder; False for a duplicate or a lost lease."""
        finish_from, finish_to = _edge(FileEvent.FINISH)
        ok = await self._run(
            self._finish, now, file_id, worker_id,
            verified_checksum or "", int(bytes_done), finish_from, finish_to,
        )  # fmt: skip
        return bool(ok)

    async def fail(
        self,
        file_id: str,
        worker_id: str,
        error_class: str,
        reason: str,
        *,
        retryable: bool,
        retry_after_s: float | None = None,
        now: float | None = None,
    ) -> FileState:
        """Report a failed attempt; returns the file's state after it.

        SUBMITTED (delayed by policies.retry's backoff) while retries remain,
        else FAILED.  From a worker that no longer holds the lease this changes
        nothing and returns the current state.  KeyError for an unknown file.
        A ``ChecksumMismatch`` (its error class) also adds one to the file's
        ``checksum_mismatches``, in the same step.
        """
        stamp = time.time() if now is None else now
        fields = await self.redis.hmget(
            self._k("file", file_id), ["state", "attempts", "max_retries", "retry_delay_s"]
        )
        if fields[0] is None:
            raise KeyError(file_id)
        attempts = int(fields[1] or 0)
        decision = retry_policy.decide(
            retryable=retryable,
            attempts=attempts,
            max_retries=int(fields[2] or 0),
            retry_delay_s=float(fields[3] or 0.0),
            retry_after_s=retry_after_s,
            jitter=random.uniform(-1.0, 1.0),
        )
        requeue_from, requeue_to = _edge(FileEvent.REQUEUE)
        fail_from, fail_to = _edge(FileEvent.FAIL)
        result = await self._run(
            self._fail, stamp, file_id, worker_id, error_class, reason,
            int(decision.retry), repr(stamp + decision.delay_s), attempts,
            requeue_from, requeue_to, fail_from, fail_to,
            int(error_class == ChecksumMismatch.error_class),
        )  # fmt: skip
        return FileState(as_text(result))

    async def checksum_mismatches(self, file_id: str) -> int:
        """How many attempts of this run of the file ended in a checksum mismatch.

        A run starts at submission or at a job-wide retry; the count is kept
        apart from ``attempts`` so that transient failures do not use up the
        one retry a mismatch gets.
        """
        value = await self.redis.hget(self._k("file", file_id), "checksum_mismatches")
        return int(value or 0)

    async def release(self, file_id: str, worker_id: str, *, now: float | None = None) -> bool:
        """Give a file back (the worker is shutting down): queued again, attempt not counted."""
        requeue_from, requeue_to = _edge(FileEvent.REQUEUE)
        ok = await self._run(self._release, now, file_id, worker_id, requeue_from, requeue_to)
        return bool(ok)

    async def set_size(self, file_id: str, size: int) -> bool:
        """Record a size learned by the worker; the job's bytes_total follows."""
        return bool(await self._run(self._set_size, None, file_id, int(size)))

    async def set_members(self, file_id: str, members: Sequence[Mapping[str, Any]]) -> None:
        """Record the member files of a dataset source and their states (while it exists)."""
        await self._run(self._set_members, None, file_id, json.dumps(members))

    async def active_files(self, job_id: str) -> list[FileRecord]:
        """The job's ACTIVE files (for cancel fan-out to backends like FTS or Rucio)."""
        key = self._k("job", job_id, "files", FileState.ACTIVE.value)
        ids = await self.redis.zrange(key, 0, -1)
        return await self._get_files(as_text(i) for i in ids)

    async def events(
        self, last_id: str = "0-0", count: int = 100, block_ms: int | None = None
    ) -> list[tuple[str, dict[str, str]]]:
        """Events after ``last_id`` ("$" for only new ones), waiting up to ``block_ms``."""
        reply = await self.redis.xread({self.events_key: last_id}, count=count, block=block_ms)
        if not reply:
            return []
        streams = reply.items() if isinstance(reply, dict) else reply
        out: list[tuple[str, dict[str, str]]] = []
        for _, entries in streams:
            for entry_id, fields in entries:
                out.append((as_text(entry_id), decode_hash(fields)))
        return out


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
