"""The REST API under ``/api/v1``: submit, list, inspect, cancel and retry jobs.

Every route except ``/health`` and ``/openapi.json`` needs a bearer credential
(``transferd.auth``).  Who may do what:

    role        read own tenant   write own tenant   other tenants
    reader      yes               no (403)           404
    submitter   yes               yes                404
    operator    yes               yes                yes
    admin       yes               yes                yes

Another tenant's job answers 404, exactly as a job that does not exist, so
ids cannot be probed.  Checks run in the order authenticate (401) → role
(403) → request (400) → folder expansion (422/502/504, ``transferd.folders``)
→ store, so a refused request stores nothing.  Every error is
``application/problem+json`` (``transferd.problem``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from policies.policy import Policy
from transferd.auth import Authenticator
from transferd.config import NodeConfig
from transferd.folders import FolderLimits, expand_folders
from transferd.links import LinkBook
from transferd.models import Job, JobRequest, Principal, Role
from transferd.openapi import openapi_document
from transferd.paths import Confiner, PathNotAllowed
from transferd.problem import FieldError, Problem
from transferd.states import FileState, JobState
from transferd.store import JobStore
from transferd.validation import Invalid, decode_json, is_folder, parse_job_request

__all__ = [
    "API_PREFIX",
    "AUTH_KEY",
    "CONFIG_KEY",
    "PRINCIPAL_KEY",
    "STORE_KEY",
    "setup_api",
]

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
MAX_BODY_BYTES = 128 * 1024 * 1024  # 100,000 files with long URLs fit
MAX_IDEMPOTENCY_KEY_CHARS = 200
DEFAULT_PAGE = 100
MAX_PAGE = 1000

STORE_KEY = web.AppKey("transferd.store", JobStore)
AUTH_KEY = web.AppKey("transferd.auth", Authenticator)
CONFIG_KEY = web.AppKey("transferd.config", NodeConfig)
PRINCIPAL_KEY = web.RequestKey("transferd.principal", Principal)
POLICY_KEY: web.AppKey[Callable[[], Policy]] = web.AppKey("transferd.policy")
LINKS_KEY = web.AppKey("transferd.links", LinkBook)


class _ListingSession:
    """The HTTP session folder listings use, opened on the first folder and closed with the app."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


LISTING_KEY = web.AppKey("transferd.listing", _ListingSession)
FOLDER_LIMITS_KEY = web.AppKey("transferd.folder_limits", FolderLimits)

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def setup_api(
    app: web.Application,
    store: JobStore,
    auth: Authenticator,
    config: NodeConfig,
    *,
    policy: Callable[[], Policy] | None = None,
    links: LinkBook | None = None,
    folder_limits: FolderLimits | None = None,
) -> None:
    """Mount ``/api/v1`` on ``app`` with its middleware; the caller owns and closes ``auth``.

    ``policy`` gives the policy in force (default: the shipped one); ``links`` reads
    per-link state (default: one over ``store``'s Redis); ``folder_limits`` bounds
    the listing of folder sources at submission."""
    default = Policy()
    app[STORE_KEY] = store
    app[AUTH_KEY] = auth
    app[CONFIG_KEY] = config
    app[POLICY_KEY] = policy or (lambda: default)
    app[LINKS_KEY] = links or LinkBook(
        store.redis, app[POLICY_KEY], config.link_limit, namespace=store.ns
    )
    app[FOLDER_LIMITS_KEY] = folder_limits or FolderLimits()
    listing = app[LISTING_KEY] = _ListingSession()

    async def close_listing(app: web.Application) -> AsyncIterator[None]:
        yield
        await listing.close()

    app.cleanup_ctx.append(close_listing)
    app.middlewares.append(api_middleware)
    app.router.add_get(f"{API_PREFIX}/health", health)
    app.router.add_get(f"{API_PREFIX}/openapi.json", openapi)
    app.router.add_post(f"{API_PREFIX}/jobs", submit_job)
    app.router.add_get(f"{API_PREFIX}/jobs", list_jobs)
    app.router.add_get(f"{API_PREFIX}/jobs/{{job_id}}", get_job)
    app.router.add_delete(f"{API_PREFIX}/jobs/{{job_id}}", cancel_job)
    app.router.add_get(f"{API_PREFIX}/jobs/{{job_id}}/files", list_files)
    app.router.add_post(f"{API_PREFIX}/jobs/{{job_id}}/retry", retry_job)
    app.router.add_get(f"{API_PREFIX}/links", list_links)
    app.router.add_get(f"{API_PREFIX}/policy", get_policy)


# -- middleware ----------------------------------------------------------------------------


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Log each API request (never its headers) and turn every API error into a problem."""
    if not request.path.startswith(API_PREFIX):
        return await handler(request)
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except Problem as exc:
        status = exc.status
        raise
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        raise Problem(exc.status, exc.reason, headers=headers) from None
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        raise Problem(500, "internal error; the node's log has the details") from None
    finally:
        principal = request.get(PRINCIPAL_KEY)
        log.info(
            "%s %s %d %.1fms %s", request.method, request.path, status,
            (time.monotonic() - started) * 1000, principal.subject if principal else "-",
        )


# -- helpers -------------------------------------------------------------------------------


async def _principal(request: web.Request, *, write: bool) -> Principal:
    principal = await request.app[AUTH_KEY].authenticate(request)
    request[PRINCIPAL_KEY] = principal
    if write and principal.role is Role.READER:
        raise Problem(403, "this credential may only read", kind="forbidden")
    return principal


def _may_see(principal: Principal, job: Job) -> bool:
    return principal.sees_all_tenants or job.owner == principal.tenant


async def _visible_job(request: web.Request, principal: Principal) -> Job:
    job_id = request.match_info["job_id"]
    job = await request.app[STORE_KEY].get_job(job_id) if _JOB_ID.match(job_id) else None
    if job is None or not _may_see(principal, job):
        raise Problem(404, f"no job {job_id!r}", kind="not-found")
    return job


def _bad(field: str, message: str) -> Problem:
    return Problem(400, f"{field}: {message}", kind="invalid-request",
                   errors=[FieldError(field, message)])


def _query(
    request: web.Request, allowed: tuple[str, ...]
) -> tuple[Mapping[str, str], int, str | None]:
    query = request.query
    for key in query:
        if key not in allowed:
            raise _bad(key, "unknown query parameter")
    for key in allowed:
        if len(query.getall(key, [])) > 1:
            raise _bad(key, "given more than once")
    limit = DEFAULT_PAGE
    if "limit" in query:
        raw = query["limit"]
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
            raise _bad("limit", f"expected an integer in 1..{MAX_PAGE}")
        limit = int(raw)
    cursor = query.get("cursor") or None
    if cursor is not None and (len(cursor) > 200 or not _PRINTABLE.match(cursor)):
        raise _bad("cursor", "not a cursor this API returned")
    return query, limit, cursor


async def _read_body(request: web.Request) -> bytes:
    ctype = request.content_type
    if request.headers.get("Content-Type") and ctype != "application/json" and not (
        ctype.endswith("+json")
    ):
        raise Problem(415, "send the job as application/json", kind="unsupported-media-type")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise Problem(413, f"the body is larger than {MAX_BODY_BYTES} bytes", kind="too-large")
    body = bytearray()
    async for chunk in request.content.iter_chunked(1 << 20):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise Problem(413, f"the body is larger than {MAX_BODY_BYTES} bytes", kind="too-large")
    return bytes(body)


def _confine(request: JobRequest, roots: list[Path], *, sources_too: bool
             ) -> tuple[list[FieldError], JobRequest]:
    """The confinement errors, and ``request`` with file:// destinations resolved.

    Resolved once, here: the worker's sink then refuses any symbolic link along a
    destination, which can only be one planted after the check.
    """
    errors: list[FieldError] = []
    confine = Confiner(roots)
    files = list(request.files)
    for i, spec in enumerate(request.files):
        checks = [("destination", spec.destination)]
        if sources_too:
            checks.append(("source", spec.source))
        for name, url in checks:
            try:
                resolved = confine.check(url)
            except PathNotAllowed as exc:
                errors.append(FieldError(f"files[{i}].{name}", str(exc)))
                continue
            if name == "destination" and resolved is not None and not is_folder(
                    spec.source, spec.destination):
                files[i] = dataclasses.replace(spec, destination=Path(resolved).as_uri())
        if len(errors) >= 100:
            break
    return errors, dataclasses.replace(request, files=files)


def _validate(raw: bytes, principal: Principal, config: NodeConfig) -> JobRequest:
    """Decode, check and confine a job body; runs in a thread (100,000 files take a while)."""
    try:
        body = decode_json(raw)
    except (ValueError, RecursionError) as exc:
        raise _bad("body", f"not valid JSON: {exc}") from None
    try:
        job_request = parse_job_request(body, now=time.time())
    except Invalid as exc:
        first = exc.errors[0]
        more = f" (and {len(exc.errors) - 1} more)" if len(exc.errors) > 1 else ""
        raise Problem(400, f"{first.field}: {first.message}{more}", kind="invalid-request",
                      errors=exc.errors) from None
    errors, job_request = _confine(job_request, config.roots_for(principal.tenant),
                      sources_too=config.confine_file_sources)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise Problem(400, f"{errors[0].field}: {errors[0].message}{more}",
                      kind="path-not-allowed", errors=errors)
    return job_request


# -- handlers ------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def openapi(request: web.Request) -> web.Response:
    """The document for the routes this node really mounts (OCM and dashboard are optional)."""
    from transferd.dashboard import OVERVIEW_KEY
    from transferd.ocm.server import OCM_KEY

    app = request.app
    return web.json_response(
        openapi_document(ocm=OCM_KEY in app, dashboard=OVERVIEW_KEY in app)
    )


async def submit_job(request: web.Request) -> web.Response:
    principal = await _principal(request, write=True)
    key = request.headers.get("Idempotency-Key")
    if key is not None and (
        len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not _PRINTABLE.match(key)
    ):
        raise _bad("Idempotency-Key",
                   f"1..{MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters without spaces")
    raw = await _read_body(request)
    config, store = request.app[CONFIG_KEY], request.app[STORE_KEY]
    job_request = await asyncio.to_thread(_validate, raw, principal, config)
    job: Job | None = None
    created = False
    if any(is_folder(f.source, f.destination) for f in job_request.files):
        # a replay answers with the job stored before, whatever the folder holds now
        job = await store.replay(principal, key) if key is not None else None
        if job is None:
            job_request = await expand_folders(
                job_request, request.app[LISTING_KEY].get(),
                roots=config.roots_for(principal.tenant),
                confine_sources=config.confine_file_sources,
                limits=request.app[FOLDER_LIMITS_KEY],
            )
    if job is None:
        try:
            job, created = await store.submit(principal, job_request, idempotency_key=key)
        except ValueError as exc:  # the store's own last-line checks (e.g. no backend for a pair)
            raise _bad("files", str(exc)) from None
    return web.json_response(
        {"job_id": job.job_id, "state": job.state.value},
        status=201 if created else 200,
        headers={"Location": f"{API_PREFIX}/jobs/{job.job_id}"},
    )


async def list_jobs(request: web.Request) -> web.Response:
    principal = await _principal(request, write=False)
    query, limit, cursor = _query(request, ("state", "owner", "cursor", "limit"))
    state: JobState | None = None
    if query.get("state"):
        try:
            state = JobState(query["state"].upper())
        except ValueError:
            raise _bad("state", f"expected one of {', '.join(JobState)}") from None
    owner = query.get("owner") or None
    if not principal.sees_all_tenants:
        if owner not in (None, principal.tenant):
            raise Problem(403, "only operators may list other tenants' jobs", kind="forbidden",
                          errors=[FieldError("owner", "not your tenant")])
        owner = principal.tenant
    try:
        jobs, next_cursor = await request.app[STORE_KEY].list_jobs(
            owner=owner, state=state, cursor=cursor, limit=limit
        )
    except ValueError:
        raise _bad("cursor", "not a cursor this API returned") from None
    visible = [job.to_json() for job in jobs if _may_see(principal, job)]
    return web.json_response({"jobs": visible, "next_cursor": next_cursor})


async def get_job(request: web.Request) -> web.Response:
    principal = await _principal(request, write=False)
    job = await _visible_job(request, principal)
    return web.json_response(job.to_json())


async def list_files(request: web.Request) -> web.Response:
    principal = await _principal(request, write=False)
    query, limit, cursor = _query(request, ("state", "cursor", "limit"))
    state: FileState | None = None
    if query.get("state"):
        try:
            state = FileState(query["state"].upper())
        except ValueError:
            raise _bad("state", f"expected one of {', '.join(FileState)}") from None
    job = await _visible_job(request, principal)
    try:
        files, next_cursor = await request.app[STORE_KEY].list_files(
            job.job_id, state=state, cursor=cursor, limit=limit
        )
    except ValueError:
        raise _bad("cursor", "not a cursor this API returned") from None
    return web.json_response({"files": [f.to_json() for f in files], "next_cursor": next_cursor})


async def cancel_job(request: web.Request) -> web.Response:
    principal = await _principal(request, write=True)
    job = await _visible_job(request, principal)
    canceled = await request.app[STORE_KEY].cancel_job(job.job_id)
    if canceled is None:
        raise Problem(404, f"no job {job.job_id!r}", kind="not-found")
    return web.json_response(canceled.to_json())


async def retry_job(request: web.Request) -> web.Response:
    principal = await _principal(request, write=True)
    job = await _visible_job(request, principal)
    retried, n = await request.app[STORE_KEY].retry_job(job.job_id)
    if retried is None:
        raise Problem(404, f"no job {job.job_id!r}", kind="not-found")
    body: dict[str, Any] = {"job_id": retried.job_id, "state": retried.state.value, "retried": n}
    return web.json_response(body)


async def list_links(request: web.Request) -> web.Response:
    """Per link: actives, optimizer target, queue, throughput, success rate, decisions.

    Links name every tenant's hosts, so only operators and admins see them."""
    principal = await _principal(request, write=False)
    if not principal.sees_all_tenants:
        raise Problem(403, "only operators may see the links", kind="forbidden")
    _query(request, ())
    return web.json_response({"links": await request.app[LINKS_KEY].view()})


async def get_policy(request: web.Request) -> web.Response:
    """The policy in force (defaults overlaid with the node's policy file)."""
    await _principal(request, write=False)
    _query(request, ())
    return web.json_response(request.app[POLICY_KEY]().to_json())
