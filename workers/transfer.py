"""Moving one file with the streaming mover, as a worker does it.

claim (lease) → heartbeat every second with progress → copy with the chunk
manifest in Redis → verified: FINISHED; failed: classified and handed to the
store, which decides retry-with-backoff or FAILED.  Safe under at-least-once
delivery: a message for a file that is not claimable is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import redis.exceptions
from redis.exceptions import RedisError
from tenacity import (
    retry,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from policies import retry as retry_policy
from policies.chunking import tune
from transferd.endpoint_tokens import endpoint_headers
from transferd.errors import Canceled, ChecksumMismatch, TransferError
from transferd.links import record_rtt
from transferd.models import FileRecord
from transferd.ocm.exchange import share_headers
from transferd.states import FileState
from workers.runtime import StopReason, WorkerRuntime
from workers.stream.base import no_headers
from workers.stream.endpoints import open_sink, open_source
from workers.stream.engine import copy_file
from workers.stream.manifest import RedisManifestStore

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 1.0

# A verified copy whose FINISHED report is lost to a Redis blip would be
# reaped and copied again; reports are retried for a while instead.
report_retry = retry(
    retry=retry_if_exception_type(
        (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
    ),
    wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
    stop=stop_after_delay(60),
    reraise=True,
)


@dataclass
class _Progress:
    bytes_done: int = 0
    rate_bps: float = 0.0


def manifest_key(file_id: str) -> str:
    return f"td:manifest:{file_id}"


async def _heartbeat(
    rt: WorkerRuntime, file_id: str, progress: _Progress, cancel: asyncio.Event, why: list[str]
) -> None:
    assert rt.store is not None
    while not cancel.is_set():
        try:
            alive = await rt.store.heartbeat(
                file_id, rt.worker_id, progress.bytes_done, progress.rate_bps, rt.lease_s
            )
        except Exception:  # Redis hiccup: keep moving, the lease has slack
            log.warning("heartbeat for %s failed", file_id, exc_info=True)
            alive = True
        if not alive:
            why.append("lost")
            cancel.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cancel.wait(), HEARTBEAT_INTERVAL_S)


async def move_stream_file(rt: WorkerRuntime, file_id: str) -> None:
    """Claim and move one file with the streaming mover; every outcome is recorded."""
    store, session, redis = rt.store, rt.session, rt.redis
    assert store is not None and session is not None and redis is not None
    if not rt.accepting:
        return
    record = await store.claim(file_id, rt.worker_id, rt.lease_s)
    if record is None:
        return  # duplicate delivery, canceled, or someone else holds it
    cancel = asyncio.Event()
    why: list[str] = []
    rt.running[file_id] = (cancel, why)
    progress = _Progress()
    beat = asyncio.create_task(_heartbeat(rt, file_id, progress, cancel, why))
    try:
        await _copy(rt, record, progress, cancel, why)
    finally:
        cancel.set()
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        rt.running.pop(file_id, None)


async def _copy(
    rt: WorkerRuntime,
    record: FileRecord,
    progress: _Progress,
    cancel: asyncio.Event,
    why: list[str],
) -> None:
    store, session, redis = rt.store, rt.session, rt.redis
    assert store is not None and session is not None and redis is not None
    params = await rt.job_params(record.job_id)
    manifest = RedisManifestStore(redis, manifest_key(record.file_id))
    limiter = await rt.limiter_for(record.link)
    chunk_policy = rt.chunk_policy
    if not rt.chunk_policy_fixed:
        chunk_policy, _why = tune(
            record.size, await rt.link_stats(record.link), rt.policy.chunking
        )

    async def on_progress(bytes_done: int, rate_bps: float) -> None:
        progress.bytes_done = bytes_done
        progress.rate_bps = rate_bps

    sink = None
    try:
        # a file's own endpoint tokens first; a job from an OCM share reads with the
        # share's secret or an exchanged token
        source_auth, sink_auth = await endpoint_headers(redis, record.job_id, record.index)
        headers = source_auth or await share_headers(redis, session, record.job_id) or no_headers
        source = open_source(record.source, session, headers)
        sink = open_sink(
            record.destination, session, sink_auth or no_headers,
            params.overwrite if params else False
        )
        try:
            known = None
            if record.size is None:
                # learn the size now, not at the end: the job's bytes_total and ETA need it
                known = await source.stat()
                if known.size is not None:
                    await store.set_size(record.file_id, known.size)
            result = await copy_file(
                source,
                sink,
                info=known,
                expected_checksum=record.checksum,
                verify=params.verify_checksum if params else "both",
                manifest=manifest,
                policy=chunk_policy,
                progress=on_progress,
                cancel=cancel,
                limiter=limiter,
            )
        finally:
            await source.aclose()
            if source.rtt_s is not None:  # a round-trip sample for the link's chunk tuning
                with contextlib.suppress(RedisError):
                    await record_rtt(redis, record.link, source.rtt_s)
    except Canceled:
        await _stopped(rt, record, sink, why)
        return
    except TransferError as exc:
        await _failed(rt, record, sink, exc)
        return
    except Exception as exc:  # a bug or a library surprise: record it, never lose the file
        log.exception("unexpected error moving %s", record.file_id)
        err = TransferError(f"internal error: {type(exc).__name__}")
        err.retryable = True
        await _failed(rt, record, sink, err)
        return
    finished = await _report_finished(rt, record, result.checksum, result.size)
    await manifest.clear()
    if not finished:
        log.info("%s finished copying but was no longer ours (canceled or reaped)", record.file_id)


@report_retry
async def _report_finished(rt: WorkerRuntime, record: FileRecord, checksum: str, size: int) -> bool:
    store = rt.store
    assert store is not None
    if record.size is None:
        await store.set_size(record.file_id, size)
    return await store.finish(record.file_id, rt.worker_id, checksum, size)


async def _stopped(
    rt: WorkerRuntime, record: FileRecord, sink: object | None, why: list[str]
) -> None:
    """The copy stopped on our cancel event: release, cancel, or a lost lease."""
    store = rt.store
    assert store is not None
    if StopReason.RELEASE in why:
        await _abort(sink, keep_partial=True)
        await store.release(record.file_id, rt.worker_id)
        return
    current = await store.get_file(record.file_id)
    if current is not None and current.state == FileState.CANCELED:
        await _abort(sink, keep_partial=False)
        await RedisManifestStore(rt.redis, manifest_key(record.file_id)).clear()  # type: ignore[arg-type]
    else:
        # Reaped while we stalled: another worker may be resuming the .part now.
        log.warning("%s: lease lost, leaving the partial file to its new owner", record.file_id)


async def _failed(
    rt: WorkerRuntime, record: FileRecord, sink: object | None, exc: TransferError
) -> None:
    store = rt.store
    assert store is not None
    retry_after = getattr(exc, "retry_after_s", None)
    retryable = retry_policy.retryable(
        exc.error_class, exc.retryable, (await rt.current_policy()).retry_classes
    )
    if (
        retryable
        and exc.error_class == ChecksumMismatch.error_class
        and await report_retry(store.checksum_mismatches)(record.file_id) >= 1
    ):
        # A second mismatch is not bad luck on the wire.  Counted apart from
        # attempts: a reset connection before the first one must not use up its retry.
        retryable = False
    state = await report_retry(store.fail)(
        record.file_id,
        rt.worker_id,
        exc.error_class,
        exc.reason,
        retryable=retryable,
        retry_after_s=retry_after,
    )
    if state == FileState.FAILED:
        await _abort(sink, keep_partial=False)
        await RedisManifestStore(rt.redis, manifest_key(record.file_id)).clear()  # type: ignore[arg-type]
    else:
        await _abort(sink, keep_partial=True)
    log.info(
        "%s failed (%s): %s -> %s at %.0f", record.file_id, exc.error_class, exc.reason, state,
        time.time(),
    )


async def _abort(sink: object | None, *, keep_partial: bool) -> None:
    abort = getattr(sink, "abort", None)
    if abort is None:
        return
    try:
        await abort(keep_partial=keep_partial)
    except Exception:  # cleaning up must not hide the original outcome
        log.warning("abort of %s failed", getattr(sink, "url", "?"), exc_info=True)
