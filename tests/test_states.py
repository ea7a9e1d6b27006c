"""transferd.states: every (file state, event) pair and the job-state rule, by table."""

from __future__ import annotations

import itertools

import pytest

from transferd.states import FileEvent, FileState, JobState, job_state, next_file_state

S, A, F, X, C = (
    FileState.SUBMITTED,
    FileState.ACTIVE,
    FileState.FINISHED,
    FileState.FAILED,
    FileState.CANCELED,
)

# written out by hand so a change to FILE_TRANSITIONS shows up here as a decision
EXPECTED: dict[tuple[FileState, FileEvent], FileState | None] = {
    (S, FileEvent.CLAIM): A,
    (A, FileEvent.FINISH): F,
    (A, FileEvent.REQUEUE): S,
    (S, FileEvent.FAIL): X,
    (A, FileEvent.FAIL): X,
    (S, FileEvent.CANCEL): C,
    (A, FileEvent.CANCEL): C,
    (X, FileEvent.RETRY): S,
    (C, FileEvent.RETRY): S,
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(FileState, FileEvent)))
def test_every_state_event_pair(state: FileState, event: FileEvent) -> None:
    assert next_file_state(state, event) == EXPECTED.get((state, event))


def test_finished_is_final() -> None:
    assert all(next_file_state(F, event) is None for event in FileEvent)


@pytest.mark.parametrize(
    ("counts", "flags", "expected"),
    [
        ({S: 2}, {}, JobState.SUBMITTED),
        ({S: 2}, {"accepted": False}, JobState.AWAITING_ACCEPTANCE),
        ({F: 2}, {"accepted": False}, JobState.AWAITING_ACCEPTANCE),
        ({S: 1, A: 1}, {}, JobState.ACTIVE),
        ({S: 1, F: 1}, {}, JobState.ACTIVE),
        ({S: 1, X: 1}, {}, JobState.ACTIVE),
        ({A: 1}, {"cancel_requested": True}, JobState.ACTIVE),
        ({F: 3}, {}, JobState.FINISHED),
        ({F: 3}, {"cancel_requested": True}, JobState.FINISHED),
        ({F: 3}, {"expired": True}, JobState.FINISHED),
        ({F: 2, X: 1}, {}, JobState.FINISHEDDIRTY),
        ({F: 2, C: 1}, {}, JobState.FINISHEDDIRTY),
        ({X: 2}, {}, JobState.FAILED),
        ({X: 1, C: 1}, {}, JobState.FAILED),
        ({C: 2}, {}, JobState.CANCELED),
        ({F: 1, C: 1}, {"cancel_requested": True}, JobState.CANCELED),
        ({F: 1, X: 1}, {"expired": True}, JobState.EXPIRED),
        ({X: 1}, {"expired": True, "cancel_requested": True}, JobState.CANCELED),
        ({}, {}, JobState.FINISHED),
    ],
)
def test_job_state(
    counts: dict[FileState, int], flags: dict[str, bool], expected: JobState
) -> None:
    assert job_state(counts, **flags) == expected
