"""The job and file state machines, as pure functions over plain values.

File: SUBMITTED (optionally with ``not_before``) → ACTIVE → FINISHED | FAILED | CANCELED.
Job:  AWAITING_ACCEPTANCE → SUBMITTED → ACTIVE → FINISHED | FINISHEDDIRTY | FAILED
      | CANCELED | EXPIRED.
These follow FTS3 so the FTS façade maps one to one.  The Redis store applies
them atomically (its Lua scripts are fed the tables below), so the decision
lives here and is tested table by table.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class FileState(StrEnum):
    SUBMITTED = "SUBMITTED"
    ACTIVE = "ACTIVE"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


class JobState(StrEnum):
    AWAITING_ACCEPTANCE = "AWAITING_ACCEPTANCE"
    SUBMITTED = "SUBMITTED"
    ACTIVE = "ACTIVE"
    FINISHED = "FINISHED"
    FINISHEDDIRTY = "FINISHEDDIRTY"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    EXPIRED = "EXPIRED"


class FileEvent(StrEnum):
    CLAIM = "claim"  # a worker takes the file
    FINISH = "finish"  # copied and verified
    REQUEUE = "requeue"  # retryable failure with attempts left, a reaped lease, or a release
    FAIL = "fail"  # permanent failure, or retries exhausted, or deadline passed
    CANCEL = "cancel"  # the job (or this file) was canceled
    RETRY = "retry"  # an operator asked to retry a failed or canceled file


FILE_TERMINAL = frozenset({FileState.FINISHED, FileState.FAILED, FileState.CANCELED})
JOB_TERMINAL = frozenset(
    {
        JobState.FINISHED,
        JobState.FINISHEDDIRTY,
        JobState.FAILED,
        JobState.CANCELED,
        JobState.EXPIRED,
    }
)

# event -> (states it may start from, state it leads to)
FILE_TRANSITIONS: Mapping[FileEvent, tuple[frozenset[FileState], FileState]] = {
    FileEvent.CLAIM: (frozenset({FileState.SUBMITTED}), FileState.ACTIVE),
    FileEvent.FINISH: (frozenset({FileState.ACTIVE}), FileState.FINISHED),
    FileEvent.REQUEUE: (frozenset({FileState.ACTIVE}), FileState.SUBMITTED),
    FileEvent.FAIL: (frozenset({FileState.SUBMITTED, FileState.ACTIVE}), FileState.FAILED),
    FileEvent.CANCEL: (frozenset({FileState.SUBMITTED, FileState.ACTIVE}), FileState.CANCELED),
    FileEvent.RETRY: (frozenset({FileState.FAILED, FileState.CANCELED}), FileState.SUBMITTED),
}


def next_file_state(current: FileState, event: FileEvent) -> FileState | None:
    """The state ``event`` leads to from ``current``, or None when it does not apply.

    None is not an error: under at-least-once delivery a duplicate FINISH for a
    FINISHED file, or a CANCEL racing a FINISH, must be a harmless no-op.
    """
    sources, target = FILE_TRANSITIONS[event]
    return target if current in sources else None


def job_state(
    counts: Mapping[FileState, int],
    *,
    accepted: bool = True,
    cancel_requested: bool = False,
    expired: bool = False,
) -> JobState:
    """The job state implied by its files' states and the job-level flags.

    - not yet accepted (OCM share awaiting the user) → AWAITING_ACCEPTANCE
    - some file not terminal → ACTIVE once any file started or ended, else SUBMITTED
    - all terminal → CANCELED if the job was canceled, EXPIRED if its deadline
      passed with files unfinished, FINISHED if all finished, FINISHEDDIRTY if
      some finished, FAILED if any failed, else CANCELED.
    """
    submitted = counts.get(FileState.SUBMITTED, 0)
    active = counts.get(FileState.ACTIVE, 0)
    finished = counts.get(FileState.FINISHED, 0)
    failed = counts.get(FileState.FAILED, 0)
    canceled = counts.get(FileState.CANCELED, 0)
    total = submitted + active + finished + failed + canceled
    if not accepted:
        return JobState.AWAITING_ACCEPTANCE
    if submitted + active > 0:
        if active > 0 or finished + failed + canceled > 0:
            return JobState.ACTIVE
        return JobState.SUBMITTED
    if cancel_requested and finished < total:
        return JobState.CANCELED
    if expired and finished < total:
        return JobState.EXPIRED
    if finished == total:
        return JobState.FINISHED
    if finished > 0:
        return JobState.FINISHEDDIRTY
    if failed > 0:
        return JobState.FAILED
    return JobState.CANCELED
