"""transferd.store.JobStore against a real redis-server: what users and workers see."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio

from tests.servers import FaultProxy
from transferd import store_lua
from transferd.models import FileSpec, JobParams, JobRequest, Principal, Role
from transferd.states import FileState, JobState, job_state
from transferd.store import MAX_FILES_PER_JOB, JobStore

ALICE = Principal("alice", "lofar", Role.SUBMITTER)
BOB = Principal("bob", "lofar", Role.SUBMITTER)
CAROL = Principal("carol", "escape", Role.SUBMITTER)
LINK = "archive.surf.example -> local"
LEASE_S = 30.0


def request(n: int, *, size: int | None = 1000, **params: object) -> JobRequest:
    files = [
        FileSpec(f"https://archive.surf.example/SB{i:03}.tar", f"file:///data/SB{i:03}.tar", size)
        for i in range(n)
    ]
    return JobRequest(files, JobParams(**params))  # type: ignore[arg-type]


@pytest.fixture
async def store(aredis: redis.asyncio.Redis) -> AsyncIterator[JobStore]:
    yield JobStore(aredis)


async def job_of(store: JobStore, job_id: str) -> tuple[JobState, dict[FileState, int]]:
    job = await store.get_job(job_id)
    assert job is not None
    return job.state, {s: n for s, n in job.files_by_state.items() if n}


async def assert_consistent(aredis: redis.asyncio.Redis, job_id: str) -> None:
    """The job's counters match its per-state indexes and add up to its files."""
    job = await aredis.hgetall(f"td:job:{job_id}")
    total = 0
    for state in FileState:
        indexed = await aredis.zcard(f"td:job:{job_id}:files:{state.value}")
        assert int(job[f"n:{state.value}".encode()]) == indexed, state
        total += indexed
    assert total == int(job[b"files_total"])


async def take(store: JobStore, job_id: str, index: int, worker: str = "w1") -> str:
    """Claim one file of the job for ``worker`` (a worker handling its message)."""
    file_id = f"{job_id}.{index}"
    assert await store.claim(file_id, worker, LEASE_S) is not None
    return file_id


# -- submission ---------------------------------------------------------------------------


async def test_submit_then_get_and_list_files(store: JobStore) -> None:
    job, created = await store.submit(ALICE, request(3))
    assert created
    assert job.state == JobState.SUBMITTED
    assert (job.owner, job.submitter, job.files_total) == ("lofar", "alice", 3)
    assert job.bytes_total == 3000
    assert job.files_by_state[FileState.SUBMITTED] == 3
    assert await store.get_job(job.job_id) == job
    assert await store.get_job("no-such-job") is None

    first = await store.get_file(f"{job.job_id}.0")
    assert first is not None
    assert (first.state, first.backend, first.link) == (FileState.SUBMITTED, "stream", LINK)
    assert first.source.endswith("SB000.tar")

    page, cursor = await store.list_files(job.job_id, limit=2)
    assert [f.index for f in page] == [0, 1]
    page2, cursor2 = await store.list_files(job.job_id, cursor=cursor, limit=2)
    assert [f.index for f in page2] == [2]
    assert cursor2 is None
    assert await store.links() == [LINK]


async def test_list_jobs_newest_first_with_cursor_and_filters(store: JobStore) -> None:
    ids = [(await store.submit(ALICE, request(1)))[0].job_id for _ in range(5)]
    carol_job, _ = await store.submit(CAROL, request(1))
    ids.append(carol_job.job_id)

    seen: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = await store.list_jobs(cursor=cursor, limit=2)
        seen += [j.job_id for j in page]
        if cursor is None:
            break
    assert seen == list(reversed(ids))

    lofar, cursor = await store.list_jobs(owner="lofar", limit=10)
    assert [j.job_id for j in lofar] == list(reversed(ids[:5]))
    assert cursor is None

    await store.cancel_job(ids[0])
    canceled, _ = await store.list_jobs(state=JobState.CANCELED, limit=10)
    assert [j.job_id for j in canceled] == [ids[0]]
    both, _ = await store.list_jobs(owner="escape", state=JobState.SUBMITTED, limit=10)
    assert [j.job_id for j in both] == [carol_job.job_id]
    none, _ = await store.list_jobs(owner="escape", state=JobState.CANCELED, limit=10)
    assert none == []


async def test_list_files_by_state(store: JobStore) -> None:
    job, _ = await store.submit(ALICE, request(5, max_retries=0))
    for index in (1, 3, 4):
        file_id = await take(store, job.job_id, index)
        await store.fail(file_id, "w1", "not_found", "404 from the source", retryable=False)
    page, cursor = await store.list_files(job.job_id, state=FileState.FAILED, limit=2)
    assert [f.index for f in page] == [1, 3]
    assert all(f.error_class == "not_found" for f in page)
    page, cursor = await store.list_files(job.job_id, state=FileState.FAILED, cursor=cursor)
    assert [f.index for f in page] == [4]
    assert cursor is None
    page, _ = await store.list_files(job.job_id, state=FileState.SUBMITTED)
    assert [f.index for f in page] == [0, 2]


async def test_same_idempotency_key_gives_one_job(
    store: JobStore, aredis: redis.asyncio.Redis
) -> None:
    first, created = await store.submit(ALICE, request(2), idempotency_key="run-42")
    again, created_again = await store.submit(ALICE, request(2), idempotency_key="run-42")
    assert created and not created_again
    assert again.job_id == first.job_id
    assert await aredis.zcard("td:jobs") == 1

    other, created_other = await store.submit(BOB, request(2), idempotency_key="run-42")
    assert created_other
    assert other.job_id != first.job_id
    assert await aredis.zcard("td:jobs") == 2


async def test_concurrent_duplicate_submissions_store_one_job(
    store: JobStore, aredis: redis.asyncio.Redis
) -> None:
    results = await asyncio.gather(
        *(store.submit(ALICE, request(50), idempotency_key="burst") for _ in range(5))
    )
    assert len({job.job_id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert await aredis.zcard("td:jobs") == 1
    job = results[0][0]
    assert await aredis.zcard(f"td:job:{job.job_id}:files:SUBMITTED") == 50
    assert await aredis.zcard(f"td:q:{LINK}") == 50


async def test_explicit_job_id_is_idempotent(store: JobStore) -> None:
    job, created = await store.submit(ALICE, request(1), job_id="ocm-share-7")
    again, created_again = await store.submit(ALICE, request(1), job_id="ocm-share-7")
    assert job.job_id == again.job_id == "ocm-share-7"
    assert created and not created_again


async def test_hundred_thousand_files(store: JobStore, aredis: redis.asyncio.Redis) -> None:
    job, created = await store.submit(ALICE, request(MAX_FILES_PER_JOB, size=5_000_000_000))
    assert created
    assert job.files_total == MAX_FILES_PER_JOB
    assert job.files_by_state[FileState.SUBMITTED] == MAX_FILES_PER_JOB
    assert job.bytes_total == MAX_FILES_PER_JOB * 5_000_000_000
    assert await aredis.zcard(f"td:q:{LINK}") == MAX_FILES_PER_JOB
    last = await store.get_file(f"{job.job_id}.{MAX_FILES_PER_JOB - 1}")
    assert last is not None and last.size == 5_000_000_000

    canceled = await store.cancel_job(job.job_id)
    assert canceled is not None
    assert canceled.state == JobState.CANCELED
    assert canceled.files_by_state[FileState.CANCELED] == MAX_FILES_PER_JOB
    assert await aredis.zcard(f"td:q:{LINK}") == 0
    await assert_consistent(aredis, job.job_id)


async def test_a_submission_whose_commit_reply_is_lost_still_answers_created(
    aredis: redis.asyncio.Redis, redis_url: str, fault_proxy: Callable[[str], FaultProxy]
) -> None:
    # The connection drops after EXEC reached Redis and before its reply came back (as
    # when a busy server answers a 100,000-file submission after the client timed out):
    # redis-py reports WatchError.  The submitter must still hear "created" (the API's
    # 201), not "a replay of your own job" (200).
    proxy = fault_proxy(redis_url)
    proxy.set(cut_after_request=b"EXEC\r\n")
    through_proxy = redis.asyncio.Redis(host="127.0.0.1", port=proxy.port)
    try:
        job, created = await JobStore(through_proxy).submit(
            ALICE, request(10), idempotency_key="lost-reply"
        )
    finally:
        await through_proxy.aclose()
    assert proxy.resets == 1  # the reply was lost
    assert created
    assert await aredis.zcard("td:jobs") == 1
    assert job.files_by_state[FileState.SUBMITTED] == 10
    # a real replay of the same key is still a replay
    again, created_again = await JobStore(aredis).submit(
        ALICE, request(10), idempotency_key="lost-reply"
    )
    assert again.job_id == job.job_id and not created_again


async def test_too_many_files_or_bad_urls_store_nothing(
    store: JobStore, aredis: redis.asyncio.Redis
) -> None:
    with pytest.raises(ValueError):
        await store.submit(ALICE, request(MAX_FILES_PER_JOB + 1))
    bad = JobRequest([FileSpec("s3://bucket/x", "file:///x")])
    with pytest.raises(ValueError):
        await store.submit(ALICE, bad, idempotency_key="k")
    assert await aredis.zcard("td:jobs") == 0
    assert await aredis.exists("td:idem:alice:k") == 0


# -- worker transitions and the totals a user sees ----------------------------------------


async def test_claim_heartbeat_finish_completes_job(store: JobStore) -> None:
    job, _ = await store.submit(ALICE, request(2))
    record = await store.claim(f"{job.job_id}.0", "w1", LEASE_S)
    assert record is not None
    assert (record.state, record.attempts, record.lease_owner) == (FileState.ACTIVE, 1, "w1")
    state, _ = await job_of(store, job.job_id)
    assert state == JobState.ACTIVE

    assert await store.heartbeat(record.file_id, "w1", 400, 100.0, LEASE_S)
    during = await store.get_job(job.job_id)
    assert during is not None
    assert (during.bytes_done, during.rate_bps) == (400, 100.0)
    assert during.started_at is not None and during.finished_at is None

    assert await store.finish(record.file_id, "w1", "adler32:0a0b0c0d", 1000)
    assert not await store.finish(record.file_id, "w1", "adler32:0a0b0c0d", 1000)
    after = await store.get_job(job.job_id)
    assert after is not None
    assert (after.bytes_done, after.rate_bps, after.state) == (1000, 0.0, JobState.ACTIVE)

    second = await take(store, job.job_id, 1, "w2")
    assert await store.finish(second, "w2", "adler32:01", 1000)
    done = await store.get_job(job.job_id)
    assert done is not None
    assert done.state == JobState.FINISHED
    assert done.bytes_done == done.bytes_total == 2000
    assert done.finished_at is not None
    record_done = await store.get_file(second)
    assert record_done is not None
    assert record_done.verified_checksum == "adler32:01"
    assert record_done.lease_owner is None


async def test_duplicates_are_noops(store: JobStore) -> None:
    job, _ = await store.submit(ALICE, request(1))
    file_id = await take(store, job.job_id, 0, "w1")
    assert await store.claim(file_id, "w2", LEASE_S) is None  # already ACTIVE
    assert not await store.heartbeat(file_id, "w2", 10, 1.0, LEASE_S)  # not the lease holder
    assert not await store.finish(file_id, "w2", None, 1000)
    assert await store.fail(file_id, "w2", "transient", "x", retryable=True) == FileState.ACTIVE
    assert not await store.release(file_id, "w2")
    assert await store.claim("no-such.0", "w1", LEASE_S) is None
    _, counts = await job_of(store, job.job_id)
    assert counts == {FileState.ACTIVE: 1}


async def test_concurrent_claims_have_one_winner(store: JobStore) -> None:
    job, _ = await store.submit(ALICE, request(1))
    file_id = f"{job.job_id}.0"
    results = await asyncio.gather(*(store.claim(file_id, f"w{i}", LEASE_S) for i in range(8)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    _, counts = await job_of(store, job.job_id)
    assert counts == {FileState.ACTIVE: 1}


async def test_finish_records_the_copied_size(store: JobStore) -> None:
    job, _ = await store.submit(ALICE, request(2, size=None))
    assert job.bytes_total == 0
    first = await take(store, job.job_id, 0)
    assert await store.set_size(first, 700)
    assert (await store.get_job(job.job_id)).bytes_total == 700  # type: ignore[union-attr]
    assert await store.finish(first, "w1", None, 700)
    second = await take(store, job.job_id, 1)
    assert await store.finish(second, "w1", None, 300)
    done = await store.get_job(job.job_id)
    assert done is not None
    assert (done.bytes_total, done.bytes_done, done.state) == (1000, 1000, JobState.FINISHED)
    assert not await store.set_size("no-such.0", 1)


async def test_finish_corrects_a_declared_size(store: JobStore) -> None:
    job, _ = await store.submit(ALICE, request(1, size=1000))
    file_id = await take(store, job.job_id, 0)
    assert await store.finish(file_id, "w1", None, 1200)
    done = await store.get_job(job.job_id)
    assert done is not None
    assert (done.bytes_total, done.bytes_done) == (1200, 1200)


async def test_retryable_failure_backs_off_then_retries(store: JobStore) -> None:
    job, _ = await store.submit(ALICE, request(1, retry_delay_s=10.0, max_retries=2))
    file_id = await take(store, job.job_id, 0)
    assert await store.heartbeat(file_id, "w1", 500, 50.0, LEASE_S)
    before = time.time()
    state = await store.fail(file_id, "w1", "transient", "connection reset", retryable=True)
    assert state == FileState.SUBMITTED
    record = await store.get_file(file_id)
    assert record is not None and record.not_before is not None
    assert before + 9.0 <= record.not_before <= time.time() + 11.0  # 10 s ± 10 %
    assert (record.error_class, record.reason) == ("transient", "connection reset")
    during = await store.get_job(job.job_id)
    assert during is not None
    assert (during.state, during.bytes_done, during.rate_bps) == (JobState.SUBMITTED, 0, 0.0)

    # not claimable, not dispatched and not promoted before its time
    assert await store.claim(file_id, "w1", LEASE_S) is None
    assert await store.dispatch(LINK, 10, time.time()) == []
    assert await store.promote_delayed(record.not_before - 1) == 0
    assert await store.promote_delayed(record.not_before) == 1
    assert await store.dispatch(LINK, 10, record.not_before) == [(file_id, "stream")]

    again = await store.claim(file_id, "w1", LEASE_S, now=record.not_before)
    assert again is not None and again.attempts == 2
    at = record.not_before
    await store.fail(file_id, "w1", "transient", "reset again", retryable=True, now=at)
    second = await store.get_file(file_id)
    assert second is not None and second.not_before is not None
    assert at + 18.0 <= second.not_before <= at + 22.0  # doubled

    await store.promote_delayed(second.not_before)
    assert await store.claim(file_id, "w1", LEASE_S, now=second.not_before) is not None
    final = await store.fail(
        file_id, "w1", "transient", "still down", retryable=True, now=second.not_before
    )
    assert final == FileState.FAILED  # 3 tries = max_retries + 1
    state_, counts = await job_of(store, job.job_id)
    assert (state_, counts) == (JobState.FAILED, {FileState.FAILED: 1})


async def test_retry_after_longer_than_backoff_wins(store: JobStore) -> None:
    job, _ = await store.submit(ALICE, request(1, retry_delay_s=1.0))
    file_id = await take(store, job.job_id, 0)
    await store.fail(
        file_id, "w1", "transient", "429", retryable=True, retry_after_s=120.0, now=1000.0
    )
    record = await store.get_file(file_id)
    assert record is not None and record.not_before == pytest.approx(1120.0)


async def test_permanent_failure_and_finisheddirty(store: JobStore) -> None:
    job, _ = await store.submit(ALICE, request(2))
    bad = await take(store, job.job_id, 0)
    state = await store.fail(bad, "w1", "not_found", "404 Not Found", retryable=False)
    assert state == FileState.FAILED
    record = await store.get_file(bad)
    assert record is not None
    assert (record.error_class, record.reason) == ("not_found", "404 Not Found")
    assert record.finished_at is not None
    good = await take(store, job.job_id, 1)
    await store.finish(good, "w1", None, 1000)
    state_, counts = await job_of(store, job.job_id)
    assert state_ == JobState.FINISHEDDIRTY
    assert counts == {FileState.FAILED: 1, FileState.FINISHED: 1}


async def test_release_requeues_without_counting(store: JobStore) -> None:
    job, _ = await store.submit(ALICE, request(1))
    file_id = await take(store, job.job_id, 0)
    await store.heartbeat(file_id, "w1", 300, 30.0, LEASE_S)
    assert await store.release(file_id, "w1")
    record = await store.get_file(file_id)
    assert record is not None
    assert (record.state, record.attempts, record.lease_owner) == (FileState.SUBMITTED, 0, None)
    assert await store.links() == [LINK]
    assert await store.dispatch(LINK, 5, time.time()) == [(file_id, "stream")]
    current = await store.get_job(job.job_id)
    assert current is not None and current.bytes_done == 0


async def test_reap_requeues_expired_leases_then_fails_when_out_of_attempts(
    store: JobStore,
) -> None:
    job, _ = await store.submit(ALICE, request(1, max_retries=1))
    file_id = f"{job.job_id}.0"
    record = await store.claim(file_id, "w1", LEASE_S, now=1000.0)
    assert record is not None
    assert await store.reap(1000.0 + LEASE_S - 1) == []
    assert await store.reap(1000.0 + LEASE_S) == [file_id]
    requeued = await store.get_file(file_id)
    assert requeued is not None
    assert (requeued.state, requeued.error_class) == (FileState.SUBMITTED, "lease_expired")
    assert not await store.heartbeat(file_id, "w1", 1, 1.0, LEASE_S)  # the old worker stops

    assert await store.claim(file_id, "w2", LEASE_S, now=2000.0) is not None
    assert await store.reap(2000.0 + LEASE_S) == [file_id]
    failed = await store.get_file(file_id)
    assert failed is not None
    assert (failed.state, failed.error_class) == (FileState.FAILED, "lease_expired")
    state, _ = await job_of(store, job.job_id)
    assert state == JobState.FAILED


async def test_reap_returns_unclaimed_dispatches_to_the_queue(
    store: JobStore, aredis: redis.asyncio.Redis
) -> None:
    await store.submit(ALICE, request(1))
    [(file_id, _)] = await store.dispatch(LINK, 1, 1000.0)
    assert await store.dispatch(LINK, 1, 1000.0) == []
    assert await aredis.scard(f"td:inflight:{LINK}") == 1
    assert await store.reap(1000.0 + store.dispatch_timeout_s) == [file_id]
    assert await aredis.scard(f"td:inflight:{LINK}") == 0
    assert await store.dispatch(LINK, 1, 2000.0) == [(file_id, "stream")]


async def test_dispatch_respects_link_limit_and_priority(store: JobStore) -> None:
    low, _ = await store.submit(ALICE, request(3, priority=1))
    high, _ = await store.submit(BOB, request(2, priority=5))
    now = time.time()
    first = await store.dispatch(LINK, 3, now)
    assert [f for f, _ in first] == [f"{high.job_id}.0", f"{high.job_id}.1", f"{low.job_id}.0"]
    assert await store.dispatch(LINK, 3, now) == []  # the link is full

    claimed = await store.claim(first[0][0], "w1", LEASE_S)
    assert claimed is not None
    assert await store.finish(first[0][0], "w1", None, 1000)
    nxt = await store.dispatch(LINK, 3, now)
    assert [f for f, _ in nxt] == [f"{low.job_id}.1"]
    assert await store.dispatch(LINK, 10, now) == [(f"{low.job_id}.2", "stream")]
    assert await store.links() == []


# -- cancel, retry, accept, deadlines -------------------------------------------------------


async def test_cancel_stops_submitted_and_active_files(
    store: JobStore, aredis: redis.asyncio.Redis
) -> None:
    job, _ = await store.submit(ALICE, request(4))
    done = await take(store, job.job_id, 0)
    await store.finish(done, "w1", None, 1000)
    active = await take(store, job.job_id, 1, "w2")
    await store.heartbeat(active, "w2", 200, 20.0, LEASE_S)
    assert [f.file_id for f in await store.active_files(job.job_id)] == [active]

    async with aredis.pubsub() as pubsub:
        await pubsub.subscribe(store.cancel_channel)
        await pubsub.get_message(timeout=5)  # the subscribe confirmation
        canceled = await store.cancel_job(job.job_id)
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
    assert message is not None and message["data"] == active.encode()

    assert canceled is not None
    assert canceled.state == JobState.CANCELED
    assert canceled.cancel_requested
    assert canceled.files_by_state[FileState.CANCELED] == 3
    assert canceled.files_by_state[FileState.FINISHED] == 1
    assert (canceled.bytes_done, canceled.rate_bps) == (1000, 0.0)
    assert not await store.heartbeat(active, "w2", 300, 20.0, LEASE_S)
    assert not await store.finish(active, "w2", None, 1000)
    assert await store.claim(f"{job.job_id}.2", "w3", LEASE_S) is None
    assert await store.dispatch(LINK, 10, time.time()) == []
    assert await aredis.scard(f"td:inflight:{LINK}") == 0
    assert await store.active_files(job.job_id) == []

    again = await store.cancel_job(job.job_id)  # a terminal job stays as it is
    assert again is not None and again.updated_at == canceled.updated_at
    assert await store.cancel_job("no-such-job") is None
    await assert_consistent(aredis, job.job_id)


async def test_cancel_leaves_finished_jobs_alone(store: JobStore) -> None:
    job, _ = await store.submit(ALICE, request(1))
    file_id = await take(store, job.job_id, 0)
    await store.finish(file_id, "w1", None, 1000)
    after = await store.cancel_job(job.job_id)
    assert after is not None
    assert (after.state, after.cancel_requested) == (JobState.FINISHED, False)


async def test_retry_requeues_only_failed_and_canceled(
    store: JobStore, aredis: redis.asyncio.Redis
) -> None:
    job, _ = await store.submit(ALICE, request(3, max_retries=0))
    ok = await take(store, job.job_id, 0)
    await store.finish(ok, "w1", None, 1000)
    bad = await take(store, job.job_id, 1)
    await store.fail(bad, "w1", "checksum", "adler32 mismatch", retryable=True)
    await store.cancel_job(job.job_id)
    state, counts = await job_of(store, job.job_id)
    assert state == JobState.CANCELED
    assert counts == {FileState.FINISHED: 1, FileState.FAILED: 1, FileState.CANCELED: 1}

    retried_job, retried = await store.retry_job(job.job_id)
    assert retried == 2
    assert retried_job is not None
    assert retried_job.state == JobState.ACTIVE
    assert not retried_job.cancel_requested
    assert retried_job.files_by_state[FileState.SUBMITTED] == 2
    assert retried_job.files_by_state[FileState.FINISHED] == 1
    record = await store.get_file(bad)
    assert record is not None
    assert (record.attempts, record.error_class, record.reason) == (0, None, None)
    dispatched = await store.dispatch(LINK, 10, time.time())
    assert sorted(f for f, _ in dispatched) == sorted([bad, f"{job.job_id}.2"])
    assert await store.retry_job(job.job_id) == (await store.get_job(job.job_id), 0)
    assert await store.retry_job("no-such-job") == (None, 0)
    await assert_consistent(aredis, job.job_id)


async def test_awaiting_acceptance_queues_nothing_until_accepted(store: JobStore) -> None:
    job, _ = await store.submit(ALICE, request(2), awaiting_acceptance=True)
    assert job.state == JobState.AWAITING_ACCEPTANCE
    assert job.files_by_state[FileState.SUBMITTED] == 2
    assert await store.links() == []
    assert await store.claim(f"{job.job_id}.0", "w1", LEASE_S) is None

    accepted = await store.accept_job(job.job_id)
    assert accepted is not None and accepted.state == JobState.SUBMITTED
    again = await store.accept_job(job.job_id)
    assert again is not None and again.state == JobState.SUBMITTED
    dispatched = await store.dispatch(LINK, 10, time.time())
    assert sorted(f for f, _ in dispatched) == [f"{job.job_id}.0", f"{job.job_id}.1"]
    assert await store.accept_job("no-such-job") is None


async def test_canceling_an_unaccepted_job_ends_it(store: JobStore) -> None:
    job, _ = await store.submit(ALICE, request(2), awaiting_acceptance=True)
    canceled = await store.cancel_job(job.job_id)
    assert canceled is not None and canceled.state == JobState.CANCELED


async def test_deadline_expires_unfinished_files(store: JobStore) -> None:
    job, _ = await store.submit(ALICE, request(3, deadline="2030-01-01T00:00:00Z"))
    deadline = 1893456000.0  # 2030-01-01T00:00:00Z
    done = await take(store, job.job_id, 0)
    await store.finish(done, "w1", None, 1000)
    running = await take(store, job.job_id, 1)

    assert await store.expire_due(deadline - 1) == []
    assert await store.expire_due(deadline) == [job.job_id]
    expired = await store.get_job(job.job_id)
    assert expired is not None
    assert expired.state == JobState.EXPIRED
    assert expired.files_by_state[FileState.FAILED] == 2
    record = await store.get_file(running)
    assert record is not None and record.error_class == "expired"
    assert not await store.heartbeat(running, "w1", 10, 1.0, LEASE_S)
    assert await store.expire_due(deadline + 10) == []


async def test_events_stream_records_transitions(store: JobStore) -> None:
    job, _ = await store.submit(ALICE, request(1, max_retries=0))
    file_id = await take(store, job.job_id, 0)
    await store.fail(file_id, "w1", "disk_full", "no space left", retryable=False)
    events = await store.events("0-0", count=100)
    seen = [(e["type"], e["id"], e["state"], e.get("error_class")) for _, e in events]
    assert seen == [
        ("job", job.job_id, "SUBMITTED", None),
        ("file", file_id, "ACTIVE", None),
        ("job", job.job_id, "ACTIVE", None),
        ("file", file_id, "FAILED", "disk_full"),
        ("job", job.job_id, "FAILED", None),
    ]
    last_id = events[-1][0]
    assert await store.events(last_id, count=10) == []
    assert await store.events(last_id, count=10, block_ms=1) == []


# -- the Lua job-state rule is the Python one ---------------------------------------------


async def test_lua_job_state_agrees_with_python(aredis: redis.asyncio.Redis) -> None:
    script = aredis.register_script(store_lua.script(store_lua.JOB_STATE))
    cases = [
        (flags, counts)
        for flags in itertools.product((0, 1), repeat=3)
        for counts in itertools.product(range(3), repeat=5)
    ]
    async with aredis.pipeline(transaction=False) as pipe:
        for flags, counts in cases:
            await script(keys=[], args=[*flags, *counts], client=pipe)
        lua_states = await pipe.execute()
    for (flags, counts), lua_state in zip(cases, lua_states, strict=True):
        accepted, cancel_requested, expired = (bool(f) for f in flags)
        expected = job_state(
            dict(zip(FileState, counts, strict=True)),
            accepted=accepted,
            cancel_requested=cancel_requested,
            expired=expired,
        )
        assert lua_state.decode() == expected.value, (flags, counts)


async def test_cancel_racing_worker_reports_keeps_counts_exact(
    store: JobStore, aredis: redis.asyncio.Redis
) -> None:
    job, _ = await store.submit(ALICE, request(40, max_retries=5))
    files = [await take(store, job.job_id, i, f"w{i}") for i in range(30)]
    reports: list[Awaitable[object]] = []
    for i, file_id in enumerate(files):
        if i % 3 == 0:
            reports.append(store.finish(file_id, f"w{i}", None, 1000))
        elif i % 3 == 1:
            reports.append(store.fail(file_id, f"w{i}", "transient", "reset", retryable=True))
        else:
            reports.append(store.heartbeat(file_id, f"w{i}", 500, 5.0, LEASE_S))
    await asyncio.gather(store.cancel_job(job.job_id), *reports)
    final = await store.get_job(job.job_id)
    assert final is not None
    assert final.state == JobState.CANCELED
    assert final.files_by_state[FileState.SUBMITTED] == final.files_by_state[FileState.ACTIVE] == 0
    finished = final.files_by_state[FileState.FINISHED]
    assert final.bytes_done == finished * 1000
    assert final.rate_bps == 0.0
    assert await aredis.zcard("td:leases") == await aredis.zcard("td:delayed") == 0
    assert await aredis.scard(f"td:inflight:{LINK}") == 0
    await assert_consistent(aredis, job.job_id)


# -- fair-share flows -------------------------------------------------------------------------


async def test_flows_queue_per_tenant_and_activity_and_dispatch_in_the_given_order(
    store: JobStore, aredis: redis.asyncio.Redis
) -> None:
    carol = Principal("carol", "escape", Role.SUBMITTER)
    lofar, _ = await store.submit(ALICE, request(3, priority=1))
    urgent, _ = await store.submit(BOB, request(1, priority=5, activity="express"))
    escape, _ = await store.submit(carol, request(2))
    assert await store.flow_queues(LINK) == {
        "lofar|default": 3, "lofar|express": 1, "escape|default": 2,
    }
    now = time.time()
    sent = await store.dispatch_fair(
        LINK, 10, now, ["escape|default", "lofar|default", "escape|default", "lofar|express"]
    )
    assert sent == [
        (f"{escape.job_id}.0", "stream", "escape|default"),
        (f"{lofar.job_id}.0", "stream", "lofar|default"),
        (f"{escape.job_id}.1", "stream", "escape|default"),
        (f"{urgent.job_id}.0", "stream", "lofar|express"),
    ]
    # the link queue follows: what a flow gave is gone from it too
    assert await aredis.zcard(f"td:q:{LINK}") == 2
    assert await store.flow_queues(LINK) == {"lofar|default": 2}
    # a flow that runs dry gives up its turn; the limit still holds
    assert await store.dispatch_fair(LINK, 5, now, ["escape|default", "lofar|default"]) == [
        (f"{lofar.job_id}.1", "stream", "lofar|default")
    ]
    # the plain dispatch takes from the link queue and leaves the flow queue consistent
    assert await store.dispatch(LINK, 10, now) == [(f"{lofar.job_id}.2", "stream")]
    assert await store.flow_queues(LINK) == {}
    assert await store.links() == []


async def test_canceled_files_leave_their_flow_queue(store: JobStore) -> None:
    job, _ = await store.submit(ALICE, request(4, activity="bulk"))
    assert await store.flow_queues(LINK) == {"lofar|bulk": 4}
    await store.cancel_job(job.job_id)
    assert await store.flow_queues(LINK) == {}
    _, n = await store.retry_job(job.job_id)
    assert n == 4 and await store.flow_queues(LINK) == {"lofar|bulk": 4}


async def test_priority_within_a_flow_ages(store: JobStore, aredis: redis.asyncio.Redis) -> None:
    await aredis.set("td:fair:aging", 2)
    low, _ = await store.submit(ALICE, request(1, priority=1))
    high, _ = await store.submit(ALICE, request(6, priority=2))
    flows = ["lofar|default"] * 7
    order = [f for f, _, _ in await store.dispatch_fair(LINK, 10, time.time(), flows)]
    # one priority level is worth 2 arrivals: newer higher-priority files pass the low
    # one only while it has not waited that long
    assert order[0] == f"{high.job_id}.0"
    assert f"{low.job_id}.0" in order[1:3]
    assert order[3:] == [f"{high.job_id}.{i}" for i in range(2, 6)]
