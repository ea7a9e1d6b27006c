"""Plain data shared by the API, the store, the scheduler and the workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from transferd.states import FileState, JobState


class Role(StrEnum):
    READER = "reader"  # may only read its own tenant's jobs
    SUBMITTER = "submitter"
    OPERATOR = "operator"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, a role, and a stable id (token id or OIDC ``sub``)."""

    subject: str
    tenant: str
    role: Role

    @property
    def sees_all_tenants(self) -> bool:
        return self.role in (Role.OPERATOR, Role.ADMIN)


@dataclass(frozen=True)
class FileSpec:
    """One requested copy, as validated from the request."""

    source: str
    destination: str
    size: int | None = None
    checksum: str | None = None  # "alg:hexvalue" or "alg" (compute and record only)
    metadata: dict[str, Any] = field(default_factory=dict)
    # Bearer tokens for the source / destination endpoint (FTS3's source_tokens and
    # destination_tokens).  Secrets: kept out of repr, file records and answers
    # (transferd.endpoint_tokens keeps them in Redis while the job may run).
    source_token: str | None = field(default=None, repr=False)
    destination_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class JobParams:
    backend: str = "auto"  # auto|stream|rclone|fts|rucio
    verify_checksum: str = "both"  # both|source|target|none
    overwrite: bool = False
    priority: int = 3  # 1..5, 5 is most urgent (as FTS)
    max_retries: int = 3
    retry_delay_s: float = 5.0
    deadline: str | None = None  # RFC 3339
    activity: str = "default"
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "verify_checksum": self.verify_checksum,
            "overwrite": self.overwrite,
            "priority": self.priority,
            "max_retries": self.max_retries,
            "retry_delay_s": self.retry_delay_s,
            "deadline": self.deadline,
            "activity": self.activity,
            "metadata": self.metadata,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobParams:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class JobRequest:
    files: list[FileSpec]
    params: JobParams = field(default_factory=JobParams)


@dataclass
class Job:
    job_id: str
    state: JobState
    owner: str  # tenant
    submitter: str  # principal subject
    params: JobParams
    created_at: float  # unix seconds
    updated_at: float
    started_at: float | None
    finished_at: float | None
    files_total: int
    files_by_state: dict[FileState, int]
    bytes_total: int  # sum of known sizes
    bytes_done: int
    rate_bps: float  # bytes/s over active files
    cancel_requested: bool = False

    @property
    def eta_s(self) -> float | None:
        if self.rate_bps <= 0 or self.bytes_total <= self.bytes_done:
            return None
        return (self.bytes_total - self.bytes_done) / self.rate_bps

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state.value,
            "owner": self.owner,
            "submitter": self.submitter,
            "params": self.params.to_json(),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "totals": {
                "files": self.files_total,
                "files_by_state": {s.value: self.files_by_state.get(s, 0) for s in FileState},
                "bytes_total": self.bytes_total,
                "bytes_done": self.bytes_done,
                "rate_bps": self.rate_bps,
                "eta_s": self.eta_s,
            },
        }


@dataclass
class FileRecord:
    file_id: str  # f"{job_id}.{index}"
    job_id: str
    index: int
    source: str
    destination: str
    state: FileState
    size: int | None
    checksum: str | None  # requested "alg:value" / "alg"
    verified_checksum: str | None  # "alg:value" computed at the destination
    bytes_done: int
    rate_bps: float
    attempts: int
    error_class: str | None
    reason: str | None
    not_before: float | None  # unix seconds; a retry may not start before
    backend: str
    link: str  # "source-host -> destination-host"
    lease_owner: str | None
    lease_until: float | None
    started_at: float | None
    finished_at: float | None
    metadata: dict[str, Any] = field(default_factory=dict)
    # the files inside a dataset source and their own states (the Rucio backend's)
    members: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "file_id": self.file_id,
            "job_id": self.job_id,
            "index": self.index,
            "source": self.source,
            "destination": self.destination,
            "state": self.state.value,
            "size": self.size,
            "checksum": self.checksum,
            "verified_checksum": self.verified_checksum,
            "bytes_done": self.bytes_done,
            "rate_bps": self.rate_bps,
            "attempts": self.attempts,
            "error_class": self.error_class,
            "reason": self.reason,
            "not_before": self.not_before,
            "backend": self.backend,
            "link": self.link,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "metadata": self.metadata,
        } | ({"members": self.members} if self.members is not None else {})
