"""The job store's Redis rows: written at submission, read back as ``Job`` and ``FileRecord``.

The field names are the key layout of docs/contracts.md, as ``transferd.store``
writes them and the Lua scripts (``transferd.store_lua``) update them; a hash
comes either from HGETALL (a mapping) or from a script (a flat list).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from policies.routing import link_of
from transferd.models import FileRecord, FileSpec, Job, JobParams, JobRequest, Principal
from transferd.states import JOB_TERMINAL, FileState, JobState

__all__ = [
    "as_text",
    "deadline_ts",
    "decode_hash",
    "file_from_hash",
    "file_row",
    "job_from_hash",
    "new_job_row",
]


def deadline_ts(deadline: str | None) -> float | None:
    """An RFC 3339 deadline as unix seconds (a time without offset is taken as UTC)."""
    if not deadline:
        return None
    moment = datetime.fromisoformat(deadline.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def file_row(index: int, spec: FileSpec, backend: str) -> list[str]:
    """One file as the submission loader script takes it (transferd/store_lua.py)."""
    return [
        str(index),
        spec.source,
        spec.destination,
        backend,
        link_of(spec.source, spec.destination),
        "" if spec.size is None else str(spec.size),
        spec.checksum or "",
        json.dumps(spec.metadata) if spec.metadata else "",
    ]


def new_job_row(
    job_id: str,
    principal: Principal,
    request: JobRequest,
    *,
    state: JobState,
    now: float,
    accepted: bool,
    deadline_ts: float | None,
    nonce: str,
) -> dict[str, str | int | float]:
    """The ``job:{id}`` hash of a new job, every file SUBMITTED.  ``nonce`` is private to
    the store (never read into a ``Job``): it tells a submission its own commit."""
    files = request.files
    return {
        "job_id": job_id,
        "owner": principal.tenant,
        "submitter": principal.subject,
        "state": state.value,
        "params": json.dumps(request.params.to_json()),
        "created_at": repr(now),
        "updated_at": repr(now),
        "started_at": "",
        "finished_at": repr(now) if state in JOB_TERMINAL else "",
        "files_total": len(files),
        "bytes_total": sum(spec.size or 0 for spec in files),
        "bytes_done": 0,
        "rate_bps": 0,
        "accepted": int(accepted),
        "cancel_requested": 0,
        "expired": 0,
        "deadline_ts": "" if deadline_ts is None else repr(deadline_ts),
        "nonce": nonce,
        **{f"n:{s.value}": 0 for s in FileState},
        f"n:{FileState.SUBMITTED.value}": len(files),
    }


def as_text(value: object) -> str:
    """A Redis reply value (bytes or not) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_hash(raw: Any) -> dict[str, str]:
    """A Redis hash as str → str, from HGETALL's mapping or a script's flat list."""
    if isinstance(raw, Mapping):
        return {as_text(k): as_text(v) for k, v in raw.items()}
    return {as_text(raw[i]): as_text(raw[i + 1]) for i in range(0, len(raw), 2)}


def _opt_float(h: Mapping[str, str], key: str) -> float | None:
    value = h.get(key)
    return float(value) if value else None


def _opt_int(h: Mapping[str, str], key: str) -> int | None:
    value = h.get(key)
    return int(value) if value else None


def _opt_str(h: Mapping[str, str], key: str) -> str | None:
    return h.get(key) or None


def job_from_hash(h: Mapping[str, str]) -> Job:
    """A job from its decoded ``job:{id}`` hash."""
    return Job(
        job_id=h["job_id"],
        state=JobState(h["state"]),
        owner=h["owner"],
        submitter=h["submitter"],
        params=JobParams.from_json(json.loads(h["params"])),
        created_at=float(h["created_at"]),
        updated_at=float(h.get("updated_at") or h["created_at"]),
        started_at=_opt_float(h, "started_at"),
        finished_at=_opt_float(h, "finished_at"),
        files_total=int(h.get("files_total") or 0),
        files_by_state={s: int(h.get(f"n:{s.value}") or 0) for s in FileState},
        bytes_total=int(h.get("bytes_total") or 0),
        bytes_done=int(h.get("bytes_done") or 0),
        rate_bps=max(0.0, float(h.get("rate_bps") or 0.0)),
        cancel_requested=h.get("cancel_requested") == "1",
    )


def file_from_hash(h: Mapping[str, str]) -> FileRecord:
    """A file record from its decoded ``file:{id}`` hash."""
    return FileRecord(
        file_id=h["file_id"],
        job_id=h["job_id"],
        index=int(h["index"]),
        source=h["source"],
        destination=h["destination"],
        state=FileState(h["state"]),
        size=_opt_int(h, "size"),
        checksum=_opt_str(h, "checksum"),
        verified_checksum=_opt_str(h, "verified_checksum"),
        bytes_done=int(h.get("bytes_done") or 0),
        rate_bps=float(h.get("rate_bps") or 0.0),
        attempts=int(h.get("attempts") or 0),
        error_class=_opt_str(h, "error_class"),
        reason=_opt_str(h, "reason"),
        not_before=_opt_float(h, "not_before"),
        backend=h["backend"],
        link=h["link"],
        lease_owner=_opt_str(h, "lease_owner"),
        lease_until=_opt_float(h, "lease_until"),
        started_at=_opt_float(h, "started_at"),
        finished_at=_opt_float(h, "finished_at"),
        metadata=json.loads(h["metadata"]) if h.get("metadata") else {},
        members=json.loads(h["members"]) if h.get("members") else None,
    )
