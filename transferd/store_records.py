"""How the job store's Redis hashes read back as ``Job`` and ``FileRecord``.

The field names are the key layout of docs/contracts.md, as ``transferd.store``
writes them and the Lua scripts (``transferd.store_lua``) update them; a hash
comes either from HGETALL (a mapping) or from a script (a flat list).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from transferd.models import FileRecord, Job, JobParams
from transferd.states import FileState, JobState

__all__ = ["as_text", "decode_hash", "file_from_hash", "job_from_hash"]


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
    )
