"""The per-file contract every non-stream backend shares (rclone, FTS, Rucio).

claim (lease) → heartbeat every second with the progress the mover reports →
the mover's verified checksum: FINISHED; a ``TransferError``: classified and
handed to the store (retry with backoff, or FAILED); ``Canceled``: the file was
canceled (the mover has already stopped the remote work) or the worker is
shutting down (the file is released, attempt not counted).  A message for a
file that is not claimable is a no-op, so duplicate delivery is harmless.

A mover is one coroutine function, :data:`Mover`; it polls its engine, writes
``progress`` and returns when the copy is verified, watching ``cancel``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from transferd.errors import Canceled, TransferError
from transferd.models import FileRecord, JobParams
from workers.runtime import StopReason, WorkerRuntime
from workers.transfer import _heartbeat, _Progress, report_retry

__all__ = ["Copied", "FileRun", "Mover", "run_file"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Copied:
    """What a mover returns: the destination's verified checksum ("alg:hex") and size."""

    checksum: str | None
    size: int


@dataclass
class FileRun:
    """One claimed file as a mover sees it."""

    record: FileRecord
    params: JobParams | None
    progress: _Progress
    cancel: asyncio.Event
    why: list[str]

    @property
    def releasing(self) -> bool:
        """True when the stop is the worker shutting down, not the file being canceled."""
        return StopReason.RELEASE in self.why

    def report(self, bytes_done: int, rate_bps: float = 0.0) -> None:
        self.progress.bytes_done = bytes_done
        self.progress.rate_bps = rate_bps


Mover = Callable[[WorkerRuntime, FileRun], Awaitable[Copied]]


async def run_file(rt: WorkerRuntime, file_id: str, mover: Mover) -> None:
    """Claim ``file_id``, run ``mover`` on it under heartbeats, record every outcome."""
    store = rt.store
    assert store is not None
    if not rt.accepting:
        return
    record = await store.claim(file_id, rt.worker_id, rt.lease_s)
    if record is None:
        return
    run = FileRun(record, await rt.job_params(record.job_id), _Progress(), asyncio.Event(), [])
    rt.running[file_id] = (run.cancel, run.why)
    beat = asyncio.create_task(_heartbeat(rt, file_id, run.progress, run.cancel, run.why))
    try:
        await _run(rt, run, mover)
    finally:
        run.cancel.set()
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        rt.running.pop(file_id, None)


async def _run(rt: WorkerRuntime, run: FileRun, mover: Mover) -> None:
    store = rt.store
    assert store is not None
    record = run.record
    try:
        copied = await mover(rt, run)
    except Canceled:
        if run.releasing:
            await store.release(record.file_id, rt.worker_id)
        return  # canceled: the store already says so; lease lost: the new owner decides
    except TransferError as exc:
        await _failed(rt, record, exc)
        return
    except Exception as exc:  # a bug or a library surprise: record it, never lose the file
        log.exception("unexpected error moving %s with %s", record.file_id, record.backend)
        err = TransferError(f"internal error: {type(exc).__name__}: {exc}"[:500])
        err.retryable = True
        await _failed(rt, record, err)
        return
    if record.size is None:
        await store.set_size(record.file_id, copied.size)
    done = await report_retry(store.finish)(
        record.file_id, rt.worker_id, copied.checksum, copied.size
    )
    if not done:
        log.info("%s finished but was no longer ours (canceled or reaped)", record.file_id)


async def _failed(rt: WorkerRuntime, record: FileRecord, exc: TransferError) -> None:
    store = rt.store
    assert store is not None
    retryable = exc.retryable
    if exc.error_class == "checksum" and record.attempts >= 2:
        retryable = False  # a second mismatch is not bad luck on the wire
    state = await report_retry(store.fail)(
        record.file_id, rt.worker_id, exc.error_class, exc.reason,
        retryable=retryable, retry_after_s=getattr(exc, "retry_after_s", None),
    )  # fmt: skip
    log.info("%s failed (%s): %s -> %s", record.file_id, exc.error_class, exc.reason, state)
