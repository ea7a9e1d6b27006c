"""The FTS backend: each file becomes an FTS3 job on a remote FTS server, polled in bulk.

Driven with the ``fts3`` client (PyPI ``fts3``) in bearer-token mode.  The client
is synchronous (``requests``), so its calls run in threads.  Per worker
process one :class:`FtsLink` holds the client context, the VO the server
puts us in (``whoami``) and one poller that asks for every FTS job this
process follows in a single ``GET /jobs/a,b,c?files=...`` each second.

Idempotency: a file's FTS job id is deterministic, FTS3's
``uuid5(uuid5(NS, vo), sid)`` with ``sid = "<file_id>.<attempt>"``.  Before
submitting, and when a submission's answer is lost (connection reset, 409),
the worker looks the id up and adopts the job it finds instead of starting a
second copy.  A worker that shuts down leaves the FTS job running; the file's
next owner (same attempt number: a release does not count one) adopts it.

Settings (environment of the worker process, checked when the first file comes):

    TRANSFERD_FTS_ENDPOINT   the FTS3 REST URL, e.g. https://fts3.example.org:8446
    TRANSFERD_FTS_TOKEN      a bearer token (or TRANSFERD_FTS_TOKEN_FILE, read each time)
    TRANSFERD_FTS_VERIFY     "false" to skip TLS verification (labs only)

FTS does the copying, the retries inside one attempt (we submit ``retry: -1``
so our store decides) and the checksum check; we record FTS's checksum.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferd.endpoint_tokens import endpoint_tokens
from transferd.errors import (
    AuthError,
    Canceled,
    NotFound,
    PermanentError,
    RetryableError,
    TransferError,
)
from transferd.fts3 import deterministic_job_id
from workers.backend import Copied, FileRun
from workers.runtime import WorkerRuntime

__all__ = ["FtsLink", "FtsSettings", "classify_reason", "move_fts_file"]

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0
FILE_FIELDS = "file_state,dest_surl,finish_time,start_time,reason,source_surl,filesize,checksum"
VERIFY_PARAM = {"both": "both", "source": "source", "target": "target", "none": "none"}


@dataclass(frozen=True)
class FtsSettings:
    """Where the FTS server is and how to authenticate, from the environment."""

    endpoint: str
    token: str | None = None
    token_file: Path | None = None
    verify_tls: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FtsSettings:
        env = os.environ if env is None else env
        endpoint = env.get("TRANSFERD_FTS_ENDPOINT", "").rstrip("/")
        if not endpoint.startswith(("http://", "https://")):
            raise PermanentError(
                "TRANSFERD_FTS_ENDPOINT is not set to an http(s) URL on this worker"
            )
        token_file = env.get("TRANSFERD_FTS_TOKEN_FILE")
        return cls(
            endpoint=endpoint,
            token=env.get("TRANSFERD_FTS_TOKEN") or None,
            token_file=Path(token_file) if token_file else None,
            verify_tls=env.get("TRANSFERD_FTS_VERIFY", "true").lower() not in ("0", "false", "no"),
        )

    def bearer(self) -> str:
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        if self.token:
            return self.token
        raise PermanentError("neither TRANSFERD_FTS_TOKEN nor TRANSFERD_FTS_TOKEN_FILE is set")


# -- pure translations ---------------------------------------------------------------------

_REASONS: tuple[tuple[tuple[str, ...], type[TransferError], str | None], ...] = (
    (("404", "no such file", "not found", "does not exist", "enoent"), NotFound, None),
    (("checksum",), RetryableError, "checksum"),
    (("401", "403", "permission denied", "forbidden", "unauthorized"), AuthError, None),
    (("file exists", "overwrite is off", "eexist"), PermanentError, "exists"),
)


def classify_reason(reason: str) -> TransferError:
    """Our exception for an FTS file's failure reason (unknown ones are transient)."""
    text = reason.lower()
    sentence = f"FTS: {reason.strip() or 'failed without a reason'}"[:500]
    for needles, cls, error_class in _REASONS:
        if any(n in text for n in needles):
            err = cls(sentence)
            if error_class:
                err.error_class = error_class
            return err
    return RetryableError(sentence)


def fts_checksum(ours: str | None) -> str | None:
    """Ours ("adler32:0a1b2c3d" / "adler32") as the FTS client writes it."""
    if not ours:
        return None
    alg, _, value = ours.partition(":")
    return f"{alg.upper()}:{value}" if value else alg.upper()


def our_checksum(fts: Any) -> str | None:
    if not isinstance(fts, str) or not fts:
        return None
    alg, _, value = fts.partition(":")
    return f"{alg.lower()}:{value.lower()}" if value else None


# -- the shared client ---------------------------------------------------------------------


@dataclass
class _Watch:
    status: dict[str, Any] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class FtsLink:
    """One worker process's connection to its FTS server: client context + bulk poller."""

    def __init__(self, settings: FtsSettings) -> None:
        self.settings = settings
        self.vo = ""
        self._ctx: Any = None
        self._watched: dict[str, _Watch] = {}
        self._poller: asyncio.Task[None] | None = None

    async def open(self) -> None:
        import fts3.rest.client.easy as fts3

        def connect() -> tuple[Any, str]:
            ctx = fts3.Context(self.settings.endpoint, fts_access_token=self.settings.bearer(),
                               verify=self.settings.verify_tls)
            me = fts3.whoami(ctx)
            vos = me.get("vos") or [""]
            return ctx, str(vos[0])

        try:
            self._ctx, self.vo = await asyncio.to_thread(connect)
        except Exception as exc:
            raise _client_error(exc, "connecting to FTS") from None
        self._poller = asyncio.create_task(self._poll_forever(), name="fts-poller")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import fts3.rest.client.easy as fts3

        self._ctx._requester.fts_access_token = self.settings.bearer()  # a renewed token file
        try:
            return await asyncio.to_thread(getattr(fts3, fn), self._ctx, *args, **kwargs)
        except Exception as exc:
            raise _client_error(exc, what) from exc

    async def lookup(self, job_id: str) -> dict[str, Any] | None:
        """The FTS job with ``job_id`` (and its files), or None when FTS has no such job."""
        from fts3.rest.client.exceptions import NotFound as FtsNotFound

        try:
            status: dict[str, Any] = await self._call(
                "looking up a job", "get_job_status", job_id, list_files=True
            )
        except RetryableError as exc:
            if isinstance(exc.__cause__, FtsNotFound):
                return None
            raise
        return status

    async def submit(self, job: dict[str, Any], job_id: str) -> None:
        """Submit ``job``; a lost answer or a 409 is fine when the job turns out to exist."""
        try:
            got = await self._call("submitting", "submit", job)
        except TransferError as exc:
            if await self.lookup(job_id) is not None:
                log.info("FTS job %s exists after a failed submit (%s): adopted", job_id, exc)
                return
            raise
        if got != job_id:
            raise PermanentError(f"FTS answered job id {got}, expected {job_id}")

    async def cancel(self, job_id: str) -> None:
        with contextlib.suppress(TransferError):
            await self._call("canceling", "cancel", job_id)

    def watch(self, job_id: str) -> _Watch:
        return self._watched.setdefault(job_id, _Watch())

    def unwatch(self, job_id: str) -> None:
        self._watched.pop(job_id, None)

    async def _poll_forever(self) -> None:
        while True:
            started = time.monotonic()
            ids = list(self._watched)
            if ids:
                try:
                    await self._poll(ids)
                except Exception:  # the next round tries again; movers have leases with slack
                    log.warning("FTS bulk poll failed", exc_info=True)
            await asyncio.sleep(max(0.05, POLL_INTERVAL_S - (time.monotonic() - started)))

    async def _poll(self, ids: list[str]) -> None:
        try:
            answers = await self._call("polling", "get_jobs_statuses", ids, list_files=True)
        except RetryableError:
            # a 207 (some ids unknown) raises in the client: ask for each one alone
            answers = [await self.lookup(i) or {"job_id": i, "http_status": "404 Not Found"}
                       for i in ids]
        if isinstance(answers, dict):
            answers = [answers]
        for answer in answers:
            watch = self._watched.get(str(answer.get("job_id")))
            if watch is not None:
                watch.status = answer
                watch.changed.set()


def _client_error(exc: Exception, what: str) -> TransferError:
    from fts3.rest.client.exceptions import ClientError, Unauthorized

    if isinstance(exc, TransferError):
        return exc
    if isinstance(exc, Unauthorized):
        return AuthError(f"FTS refused our token while {what}")
    if isinstance(exc, ClientError) and "Bad request" in str(exc):
        return PermanentError(f"FTS refused the job: {exc}"[:500])
    return RetryableError(f"FTS {what}: {type(exc).__name__}: {exc}"[:500])


async def link_for(rt: WorkerRuntime) -> FtsLink:
    """The worker process's FTS client, opened on first use and closed with the runtime."""

    async def open_link() -> FtsLink:
        link = FtsLink(FtsSettings.from_env())
        await link.open()
        return link

    return await rt.shared("fts", open_link, FtsLink.close)


# -- the mover -----------------------------------------------------------------------------


def fts_job(run: FileRun, sid: str, *, source_token: str | None = None,
            destination_token: str | None = None) -> dict[str, Any]:
    """The FTS3 submission body for one of our files (with its endpoint tokens, if any)."""
    record, params = run.record, run.params
    transfer: dict[str, Any] = {"sources": [record.source], "destinations": [record.destination],
                                "metadata": {"transferd_file_id": record.file_id}}
    if source_token is not None:
        transfer["source_tokens"] = [source_token]
    if destination_token is not None:
        transfer["destination_tokens"] = [destination_token]
    if (checksum := fts_checksum(record.checksum)) is not None:
        transfer["checksum"] = checksum
    if record.size:
        transfer["filesize"] = record.size
    job_params: dict[str, Any] = {
        "verify_checksum": VERIFY_PARAM.get(params.verify_checksum if params else "both", "both"),
        "overwrite": bool(params and params.overwrite),
        "priority": params.priority if params else 3,
        "retry": -1,  # our store retries, with its own backoff and attempt count
        "id_generator": "deterministic",
        "sid": sid,
        "job_metadata": {"transferd_job_id": record.job_id},
    }
    return {"files": [transfer], "params": job_params}


async def move_fts_file(rt: WorkerRuntime, run: FileRun) -> Copied:
    """Submit (or adopt) the file's FTS job and follow it to its end."""
    link = await link_for(rt)
    sid = f"{run.record.file_id}.{run.record.attempts}"
    job_id = deterministic_job_id(link.vo, sid)
    watch = link.watch(job_id)
    try:
        existing = await link.lookup(job_id)
        if existing is None:
            assert rt.redis is not None
            source, destination = await endpoint_tokens(rt.redis, run.record.job_id,
                                                        run.record.index)
            job = fts_job(run, sid, source_token=source, destination_token=destination)
            await link.submit(job, job_id)
        else:
            log.info("%s: adopting FTS job %s", run.record.file_id, job_id)
            watch.status = existing
        return await _follow(link, watch, job_id, run)
    finally:
        link.unwatch(job_id)


async def _follow(link: FtsLink, watch: _Watch, job_id: str, run: FileRun) -> Copied:
    while True:
        status = watch.status
        if status is not None and status.get("http_status", "200 Ok") == "200 Ok":
            files = status.get("files") or []
            state = status.get("job_state")
            if files:
                file = files[0]
                if file.get("file_state") == "FINISHED":
                    return await _finished(link, job_id, file, run)
                if file.get("file_state") in ("FAILED", "CANCELED") or state in (
                    "FAILED", "CANCELED"
                ):
                    if file.get("file_state") == "CANCELED" or state == "CANCELED":
                        raise PermanentError("the FTS job was canceled at the FTS server")
                    raise classify_reason(str(file.get("reason") or status.get("reason") or ""))
        watch.changed.clear()
        waiter = asyncio.ensure_future(watch.changed.wait())
        stopper = asyncio.ensure_future(run.cancel.wait())
        try:
            await asyncio.wait({waiter, stopper}, timeout=POLL_INTERVAL_S * 5,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopper.cancel()
        if run.cancel.is_set():
            if not run.releasing:
                await link.cancel(job_id)
            raise Canceled("canceled" if not run.releasing else "worker shutting down")


async def _finished(link: FtsLink, job_id: str, file: dict[str, Any], run: FileRun) -> Copied:
    if "filesize" not in file or "checksum" not in file:
        full = await link.lookup(job_id)
        if full and full.get("files"):
            file = full["files"][0]
    size = int(file.get("filesize") or run.record.size or 0)
    run.report(size)
    return Copied(our_checksum(file.get("checksum")), size)
