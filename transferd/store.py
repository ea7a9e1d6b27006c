"""The job store: Redis as the single source of truth (CONTRACT SKELETON, being implemented).

Every state change is one atomic step (Lua script) whose decision comes from
``transferd.states``.  All methods are async (``redis.asyncio``).
"""

from __future__ import annotations

from redis.asyncio import Redis

from transferd.models import FileRecord, Job, JobRequest, Principal
from transferd.states import FileState, JobState


class JobStore:
    def __init__(self, redis: Redis, *, namespace: str = "td") -> None:
        self.redis = redis
        self.ns = namespace

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
        """Store a job and its files; returns (job, created). Same key+principal within 24 h → same job, created=False."""
        raise NotImplementedError

    async def get_job(self, job_id: str) -> Job | None: ...
    async def list_jobs(
        self, *, owner: str | None, state: JobState | None, cursor: str | None, limit: int
    ) -> tuple[list[Job], str | None]: ...
    async def get_file(self, file_id: str) -> FileRecord | None: ...
    async def list_files(
        self, job_id: str, *, state: FileState | None, cursor: str | None, limit: int
    ) -> tuple[list[FileRecord], str | None]: ...
    async def cancel_job(self, job_id: str) -> Job | None: ...
    async def retry_job(self, job_id: str) -> tuple[Job | None, int]: ...
    async def accept_job(self, job_id: str) -> Job | None: ...
