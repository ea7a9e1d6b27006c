"""The CS3 ``TxInfo`` view of a job, so a Reva node can delegate datatx to transferd (pure).

Status mapping (PROTOCOLS.md §2): AWAITING_ACCEPTANCE → TRANSFER_AWAITING_ACCEPTANCE;
SUBMITTED → TRANSFER_ACCEPTED for a share's job, TRANSFER_NEW otherwise; ACTIVE →
TRANSFER_IN_PROGRESS; FINISHED → TRANSFER_COMPLETE; FAILED and FINISHEDDIRTY →
TRANSFER_FAILED; CANCELED → TRANSFER_CANCELLED; EXPIRED → TRANSFER_EXPIRED.
"""

from __future__ import annotations

from typing import Any

from transferd.models import Job
from transferd.states import JobState

__all__ = ["STATUS_CODES", "tx_info", "tx_status"]

STATUS_CODES = {
    "STATUS_INVALID": 0, "STATUS_DESTINATION_NOT_FOUND": 1, "STATUS_TRANSFER_NEW": 2,
    "STATUS_TRANSFER_AWAITING_ACCEPTANCE": 3, "STATUS_TRANSFER_ACCEPTED": 4,
    "STATUS_TRANSFER_IN_PROGRESS": 5, "STATUS_TRANSFER_COMPLETE": 6,
    "STATUS_TRANSFER_FAILED": 7, "STATUS_TRANSFER_CANCELLED": 8,
    "STATUS_TRANSFER_CANCEL_FAILED": 9, "STATUS_TRANSFER_EXPIRED": 10,
}

_BY_STATE = {
    JobState.AWAITING_ACCEPTANCE: "STATUS_TRANSFER_AWAITING_ACCEPTANCE",
    JobState.ACTIVE: "STATUS_TRANSFER_IN_PROGRESS",
    JobState.FINISHED: "STATUS_TRANSFER_COMPLETE",
    JobState.FAILED: "STATUS_TRANSFER_FAILED",
    JobState.FINISHEDDIRTY: "STATUS_TRANSFER_FAILED",
    JobState.CANCELED: "STATUS_TRANSFER_CANCELLED",
    JobState.EXPIRED: "STATUS_TRANSFER_EXPIRED",
}


def tx_status(state: JobState, *, from_share: bool) -> str:
    if state == JobState.SUBMITTED:
        return "STATUS_TRANSFER_ACCEPTED" if from_share else "STATUS_TRANSFER_NEW"
    return _BY_STATE.get(state, "STATUS_INVALID")


def tx_info(job: Job, share_id: str | None, grantee: str | None = None) -> dict[str, Any]:
    """A job as CS3 ``TxInfo`` JSON (field names as the protobuf's JSON mapping)."""
    status = tx_status(job.state, from_share=share_id is not None)
    return {
        "id": {"opaque_id": job.job_id},
        "status": status,
        "status_code": STATUS_CODES[status],
        "grantee": {"opaque_id": grantee or ""},
        "creator": {"opaque_id": job.submitter},
        "ctime": {"seconds": int(job.created_at)},
        "description": f"{job.bytes_done}/{job.bytes_total} bytes, {job.files_total} file(s)",
        "share_id": {"opaque_id": share_id or ""},
    }
