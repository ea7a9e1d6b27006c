"""An FTS3-compatible REST façade under ``/fts3``: FTS clients and Rucio submit to transferd.

Jobs submitted here are ordinary transferd jobs (visible in ``/api/v1`` and the
dashboard, moved by our workers); this module only translates between FTS3's
JSON (PROTOCOLS.md §3) and ours.  The translations are pure functions
(``parse_submission``, ``job_json``, ``file_json``, ``deterministic_job_id``);
the handlers authenticate, call the store and shape answers as FTS does:

    GET  /                      {"api": {"major": 3, "minor": 14, "patch": 0}, ...}
    GET  /whoami                dn, vos, delegation_id, user_dn, method
    POST /jobs                  200 {"job_id"}; 409 for a deterministic id already used
    GET  /jobs                  a list of jobs (``state_in``, ``limit``)
    GET  /jobs/{id}             the job; ``?files=a,b`` adds its files with those fields
    GET  /jobs/{id1,id2}        a list, each with ``http_status``; 207 when some are
                                unknown, 404 when all are
    GET  /jobs/{id}/files       the job's files;  GET /jobs/{id}/dm -> []
    DELETE /jobs/{id}           cancel; the job as it is after (terminal jobs unchanged)

The fts3 client puts a second slash in front of every path (``POST //jobs``), so
the façade is one catch-all route that collapses slashes itself: a redirect
would turn the client's POST into a GET.  Errors are FTS-shaped
``{"status", "message"}`` JSON.  Auth: the node's bearer credentials; with
``[fts3] anonymous_tenant`` a request without one acts as that tenant's
submitter (Rucio sends no credential to an ``http://`` FTS).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from transferd.auth import Authenticator
from transferd.config import NodeConfig
from transferd.models import FileRecord, FileSpec, Job, JobParams, JobRequest, Principal, Role
from transferd.paths import Confiner, PathNotAllowed
from transferd.problem import Problem
from transferd.states import FileState, JobState
from transferd.store import JobStore
from transferd.validation import (
    MAX_METADATA_BYTES,
    check_url,
    decode_json,
    parse_checksum,
    token_problem,
)

__all__ = [
    "API_VERSION",
    "FTS3_PREFIX",
    "ID_NAMESPACE",
    "FtsBadRequest",
    "deterministic_job_id",
    "file_json",
    "fts_time",
    "job_json",
    "parse_submission",
    "setup_fts3",
]

log = logging.getLogger(__name__)

FTS3_PREFIX = "/fts3"
API_VERSION = {"major": 3, "minor": 14, "patch": 0}
ID_NAMESPACE = uuid.UUID("01874efb-4735-4595-bc9c-591aef8240c9")  # FTS3's, for deterministic ids
DEFAULT_RETRY_DELAY_S = 120.0  # FTS: retry_delay 0 means "the server's default"
MAX_LIST = 1000
FILES_PAGE = 1000
_VERIFY_LETTER = {"both": "b", "source": "s", "target": "t", "none": "n"}
_VERIFY_WORDS = {"both": "both", "b": "both", "source": "source", "s": "source",
                 "target": "target", "t": "target", "destination": "target",
                 "none": "none", "n": "none"}
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

STORE: web.AppKey[JobStore] = web.AppKey("fts3.store", JobStore)
AUTH: web.AppKey[Authenticator] = web.AppKey("fts3.auth", Authenticator)
CONFIG: web.AppKey[NodeConfig] = web.AppKey("fts3.config", NodeConfig)


class FtsBadRequest(ValueError):
    """A submission FTS would refuse with 400; the message says why."""


# -- pure translations ------------------------------------------------------------------------


def fts_time(ts: float | None) -> str | None:
    """Unix seconds as FTS writes times: naive UTC ``%Y-%m-%dT%H:%M:%S``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def deterministic_job_id(vo: str, sid: str) -> str:
    """FTS3's ``id_generator: deterministic`` job id for ``sid`` under ``vo``."""
    return str(uuid.uuid5(uuid.uuid5(ID_NAMESPACE, vo), sid))


def _verify_mode(value: Any, any_checksum_value: bool) -> str:
    if value is None or value is False:
        return "target" if any_checksum_value else "none"
    if value is True:
        return "both"
    if isinstance(value, str) and value.lower() in _VERIFY_WORDS:
        return _VERIFY_WORDS[value.lower()]
    raise FtsBadRequest(f"verify_checksum: unexpected value {value!r}")


def _checksum(value: Any) -> str | None:
    """FTS "ADLER32:0a1b2c3d" / "ADLER32" / "adler32:1b2c3d" as ours (values zero-padded)."""
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise FtsBadRequest(f"checksum: expected a string, got {value!r}")
    alg, sep, hexval = value.strip().partition(":")
    alg = alg.lower()
    if sep and alg in ("adler32", "crc32", "crc32c"):
        hexval = hexval.lower().rjust(8, "0")
    try:
        return parse_checksum(f"{alg}:{hexval}" if sep else alg)
    except ValueError as exc:
        raise FtsBadRequest(f"checksum: {exc}") from None


def _int_param(params: Mapping[str, Any], key: str, default: int) -> int:
    value = params.get(key, default)
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise FtsBadRequest(f"{key}: expected an integer, got {value!r}") from None


def _queue_hours(value: Any) -> float | None:
    """``max_time_in_queue``: an int of hours, or "30m" / "2h" / "45s"."""
    if value in (None, 0, "", "0"):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = re.fullmatch(r"\s*(\d+)\s*([smh]?)\s*", str(value))
    if match is None:
        raise FtsBadRequest(f"max_time_in_queue: expected hours or e.g. '30m', got {value!r}")
    number, unit = float(match.group(1)), match.group(2) or "h"
    return number / {"s": 3600.0, "m": 60.0, "h": 1.0}[unit]


def _endpoint_token(raw: dict[str, Any], side: str, where: str, url: str) -> str | None:
    """FTS's ``source_tokens``/``destination_tokens``: the first entry goes with the
    first (the one we use) source or destination; the value is never echoed."""
    key = f"{side}_tokens"
    tokens = raw.get(key)
    if tokens is None or tokens == []:
        return None
    if not isinstance(tokens, list):
        raise FtsBadRequest(f"{where}.{key}: expected a list of strings")
    if tokens[0] is None:
        return None
    if (why := token_problem(tokens[0], url, side)) is not None:
        raise FtsBadRequest(f"{where}.{key}[0]: {why}")
    return str(tokens[0])


def _file(index: int, raw: Any) -> tuple[FileSpec, str | None]:
    where = f"files[{index}]"
    if not isinstance(raw, dict):
        raise FtsBadRequest(f"{where}: expected an object")
    sources, destinations = raw.get("sources"), raw.get("destinations")
    if not isinstance(sources, list) or not sources:
        raise FtsBadRequest(f"{where}.sources: expected a non-empty list")
    if not isinstance(destinations, list) or len(destinations) != 1:
        raise FtsBadRequest(f"{where}.destinations: expected exactly one destination")
    source, destination = sources[0], destinations[0]
    for name, url in (("sources[0]", source), ("destinations[0]", destination)):
        if (why := check_url(url)) is not None:
            raise FtsBadRequest(f"{where}.{name}: {why}")
    size = raw.get("filesize")
    if size is not None:
        size = _int_param(raw, "filesize", 0)
        if size < 0:
            raise FtsBadRequest(f"{where}.filesize: must be >= 0")
        size = size or None  # FTS clients send 0 for "unknown"
    metadata = raw.get("metadata")
    if metadata is None:
        meta: dict[str, Any] = {}
    elif isinstance(metadata, dict):
        meta = metadata
    else:
        meta = {"fts_metadata": metadata}
    if len(json.dumps(meta, separators=(",", ":")).encode()) > MAX_METADATA_BYTES:
        raise FtsBadRequest(f"{where}.metadata: larger than {MAX_METADATA_BYTES} bytes")
    source_token = _endpoint_token(raw, "source", where, source)
    destination_token = _endpoint_token(raw, "destination", where, destination)
    spec = FileSpec(source=source, destination=destination, size=size,
                    checksum=_checksum(raw.get("checksum")), metadata=meta,
                    source_token=source_token, destination_token=destination_token)
    activity = raw.get("activity")
    return spec, activity if isinstance(activity, str) and activity else None


def parse_submission(body: Any, *, vo: str, now: float) -> tuple[JobRequest, str]:
    """The transferd job an FTS ``POST /jobs`` body asks for, and its job id."""
    if not isinstance(body, dict):
        raise FtsBadRequest("expected a JSON object")
    if body.get("delete") or body.get("staging"):
        raise FtsBadRequest("only transfer jobs are supported here (no delete or staging)")
    raw_files, params = body.get("files"), body.get("params") or {}
    if not isinstance(raw_files, list) or not raw_files:
        raise FtsBadRequest("files: expected a non-empty list")
    if not isinstance(params, dict):
        raise FtsBadRequest("params: expected an object")
    parsed = [_file(i, f) for i, f in enumerate(raw_files)]
    files = [spec for spec, _ in parsed]
    activity = next((a for _, a in parsed if a), None) or "default"
    retry = _int_param(params, "retry", 0)
    retry_delay = _int_param(params, "retry_delay", 0)
    priority = _int_param(params, "priority", 3)
    if not 1 <= priority <= 5:
        raise FtsBadRequest("priority: expected 1..5")
    job_metadata = params.get("job_metadata") or {}
    if not isinstance(job_metadata, dict):
        job_metadata = {"fts_metadata": job_metadata}
    hours = _queue_hours(params.get("max_time_in_queue"))
    deadline = None
    if hours is not None:
        deadline = datetime.fromtimestamp(now + hours * 3600, UTC).isoformat().replace(
            "+00:00", "Z"
        )
    job_params = JobParams(
        backend="auto",
        verify_checksum=_verify_mode(params.get("verify_checksum"),
                                     any(":" in (f.checksum or "") for f in files)),
        overwrite=bool(params.get("overwrite", False)),
        priority=priority,
        max_retries=3 if retry == 0 else max(0, min(retry, 100)),
        retry_delay_s=float(retry_delay) if retry_delay > 0 else DEFAULT_RETRY_DELAY_S,
        deadline=deadline,
        activity=activity[:200],
        metadata=job_metadata,
    )
    if params.get("id_generator") == "deterministic":
        sid = params.get("sid")
        if not isinstance(sid, str) or not sid:
            raise FtsBadRequest("id_generator deterministic needs a sid")
        job_id = deterministic_job_id(vo, sid)
    else:
        job_id = str(uuid.uuid4())
    return JobRequest(files=files, params=job_params), job_id


def _fts_job_state(job: Job) -> str:
    if job.state is JobState.AWAITING_ACCEPTANCE:
        return "SUBMITTED"
    if job.state is JobState.EXPIRED:
        return "CANCELED"  # FTS cancels jobs that outstay max_time_in_queue
    return job.state.value


def _se(url: str) -> str:
    match = re.match(r"([A-Za-z][A-Za-z0-9+.\-]*://[^/]*)", url)
    return match.group(1) if match else url


def job_json(job: Job, first: FileRecord | None) -> dict[str, Any]:
    """A transferd job as FTS3's job object."""
    state = _fts_job_state(job)
    reason = ""
    if state == "CANCELED":
        reason = "Job canceled by the user" if job.cancel_requested else "Job expired"
    elif state in ("FAILED", "FINISHEDDIRTY"):
        n = job.files_by_state.get(FileState.FAILED, 0)
        reason = f"{n} of {job.files_total} files failed"
    params = job.params
    return {
        "job_id": job.job_id,
        "job_state": state,
        "job_type": "N",
        "source_se": _se(first.source) if first else None,
        "dest_se": _se(first.destination) if first else None,
        "submit_time": fts_time(job.created_at),
        "job_finished": fts_time(job.finished_at),
        "reason": reason,
        "priority": params.priority,
        "verify_checksum": _VERIFY_LETTER.get(params.verify_checksum, "b"),
        "overwrite_flag": params.overwrite,
        "job_metadata": params.metadata,
        "retry": params.max_retries,
        "retry_delay": int(params.retry_delay_s),
        "vo_name": job.owner,
        "user_dn": job.submitter,
        "cred_id": _delegation_id(job.submitter),
        "max_time_in_queue": None,
        "http_status": "200 Ok",
    }


def file_json(record: FileRecord) -> dict[str, Any]:
    """A transferd file record as FTS3's file object."""
    duration = None
    if record.started_at is not None and record.finished_at is not None:
        duration = max(0.0, record.finished_at - record.started_at)
    throughput = 0.0
    if duration and record.state is FileState.FINISHED:
        throughput = record.bytes_done / duration / (1024 * 1024)
    elif record.rate_bps:
        throughput = record.rate_bps / (1024 * 1024)
    meta: Any = record.metadata
    if set(meta) == {"fts_metadata"}:
        meta = meta["fts_metadata"]
    return {
        "file_id": record.index + 1,
        "file_index": record.index,
        "job_id": record.job_id,
        "file_state": record.state.value,
        "source_surl": record.source,
        "dest_surl": record.destination,
        "source_se": _se(record.source),
        "dest_se": _se(record.destination),
        "reason": record.reason or "",
        "filesize": record.size or 0,
        "checksum": _fts_checksum(record.verified_checksum or record.checksum),
        "start_time": fts_time(record.started_at),
        "finish_time": fts_time(record.finished_at),
        "staging_start": None,
        "staging_finished": None,
        "throughput": round(throughput, 3),
        "tx_duration": round(duration, 3) if duration is not None else None,
        "retry": max(0, record.attempts - 1),
        "file_metadata": meta,
        "activity": "default",
    }


def _fts_checksum(value: str | None) -> str:
    """Ours ("adler32:0a1b2c3d") as FTS writes it ("ADLER32:0a1b2c3d")."""
    if not value:
        return ""
    alg, _, hexval = value.partition(":")
    return f"{alg.upper()}:{hexval}" if hexval else alg.upper()


def _delegation_id(subject: str) -> str:
    return hashlib.sha1(subject.encode()).hexdigest()[:16]


# -- handlers ---------------------------------------------------------------------------------


def _error(status: int, message: str) -> web.Response:
    reasons = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
               405: "Method Not Allowed", 409: "Conflict", 500: "Internal Server Error"}
    return web.json_response(
        {"status": f"{status} {reasons.get(status, '')}".strip(), "message": message},
        status=status,
    )


async def _principal(request: web.Request, *, write: bool) -> Principal:
    header = request.headers.get("Authorization", "").strip()
    anonymous = request.app[CONFIG].fts3_anonymous_tenant
    if not header and anonymous:
        return Principal(subject=f"fts3-anonymous@{anonymous}", tenant=anonymous,
                         role=Role.SUBMITTER)
    principal = await request.app[AUTH].authenticate(request)
    if write and principal.role is Role.READER:
        raise Problem(403, "this credential may only read", kind="forbidden")
    return principal


async def _visible(request: web.Request, principal: Principal, job_id: str) -> Job | None:
    if not _JOB_ID.match(job_id):
        return None
    job = await request.app[STORE].get_job(job_id)
    if job is None or not (principal.sees_all_tenants or job.owner == principal.tenant):
        return None
    return job


async def _files(store: JobStore, job_id: str) -> list[FileRecord]:
    out: list[FileRecord] = []
    cursor: str | None = None
    while True:
        page, cursor = await store.list_files(job_id, cursor=cursor, limit=FILES_PAGE)
        out.extend(page)
        if not cursor:
            return out


async def _first_file(store: JobStore, job_id: str) -> FileRecord | None:
    page, _ = await store.list_files(job_id, limit=1)
    return page[0] if page else None


def _not_found(job_id: str) -> dict[str, Any]:
    return {"job_id": job_id, "http_status": "404 Not Found",
            "http_message": f"No job with the id {job_id} has been found"}


async def root(request: web.Request, parts: list[str]) -> web.Response:
    return web.json_response({
        "api": API_VERSION, "schema": API_VERSION, "delegation": API_VERSION,
        "server": "transferd", "_links": {"jobs": {"href": "/jobs"}},
    })


async def whoami(request: web.Request, parts: list[str]) -> web.Response:
    principal = await _principal(request, write=False)
    dlg = _delegation_id(principal.subject)
    return web.json_response({
        "dn": [principal.subject], "vos": [principal.tenant], "vos_id": [],
        "roles": [principal.role.value], "voms_cred": [],
        "delegation_id": dlg, "base_id": dlg, "user_dn": principal.subject,
        "method": "oauth2", "is_root": principal.role is Role.ADMIN,
        "level": {"transfer": "all" if principal.sees_all_tenants else "vo"},
    })


async def submit(request: web.Request, parts: list[str]) -> web.Response:
    principal = await _principal(request, write=True)
    try:
        body = decode_json(await request.read())
        job_request, job_id = parse_submission(body, vo=principal.tenant, now=time.time())
    except FtsBadRequest as exc:
        return _error(400, str(exc))
    except (ValueError, RecursionError) as exc:
        return _error(400, f"not valid JSON: {exc}")
    config = request.app[CONFIG]
    confine = Confiner(config.roots_for(principal.tenant))
    for i, spec in enumerate(job_request.files):
        checks = [spec.destination, spec.source] if config.confine_file_sources else [
            spec.destination
        ]
        for url in checks:
            try:
                confine.check(url)
            except PathNotAllowed as exc:
                return _error(400, f"files[{i}]: {exc}")
    try:
        job, created = await request.app[STORE].submit(principal, job_request, job_id=job_id)
    except ValueError as exc:
        return _error(400, str(exc))
    if not created:
        return _error(409, f"a job with the id {job.job_id} already exists")
    log.info("fts3 submit %s: %d files by %s", job.job_id, len(job_request.files),
             principal.subject)
    return web.json_response({"job_id": job.job_id})


async def list_jobs(request: web.Request, parts: list[str]) -> web.Response:
    principal = await _principal(request, write=False)
    store = request.app[STORE]
    wanted = {s.strip().upper() for s in request.query.get("state_in", "").split(",") if s.strip()}
    limit = min(int(request.query.get("limit", "100") or 100), MAX_LIST)
    owner = None if principal.sees_all_tenants else principal.tenant
    vo = request.query.get("vo_name")
    if vo and principal.sees_all_tenants:
        owner = vo
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(out) < limit:
        jobs, cursor = await store.list_jobs(owner=owner, cursor=cursor, limit=MAX_LIST)
        for job in jobs:
            if wanted and _fts_job_state(job) not in wanted:
                continue
            out.append(job_json(job, await _first_file(store, job.job_id)))
            if len(out) >= limit:
                break
        if not cursor:
            break
    return web.json_response(out)


def _pick(file: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    return {k: file.get(k) for k in fields} if fields else file


async def get_jobs(request: web.Request, parts: list[str]) -> web.Response:
    principal = await _principal(request, write=False)
    store = request.app[STORE]
    ids = [i for i in parts[1].split(",") if i]
    raw_fields = request.query.get("files")
    fields = [f for f in raw_fields.split(",") if f] if raw_fields is not None else None
    answers: list[dict[str, Any]] = []
    missing = 0
    for job_id in ids:
        job = await _visible(request, principal, job_id)
        if job is None:
            missing += 1
            answers.append(_not_found(job_id))
            continue
        if raw_fields is not None:
            files = await _files(store, job.job_id)
            body = job_json(job, files[0] if files else None)
            body["files"] = [_pick(file_json(f), fields) for f in files]
        else:
            body = job_json(job, await _first_file(store, job.job_id))
        answers.append(body)
    if len(ids) == 1:
        return web.json_response(answers[0], status=404 if missing else 200)
    status = 200 if not missing else (404 if missing == len(ids) else 207)
    return web.json_response(answers, status=status)


async def job_files(request: web.Request, parts: list[str]) -> web.Response:
    principal = await _principal(request, write=False)
    job = await _visible(request, principal, parts[1])
    if job is None:
        return web.json_response(_not_found(parts[1]), status=404)
    return web.json_response([file_json(f) for f in await _files(request.app[STORE], job.job_id)])


async def job_dm(request: web.Request, parts: list[str]) -> web.Response:
    principal = await _principal(request, write=False)
    if await _visible(request, principal, parts[1]) is None:
        return web.json_response(_not_found(parts[1]), status=404)
    return web.json_response([])


async def cancel(request: web.Request, parts: list[str]) -> web.Response:
    principal = await _principal(request, write=True)
    store = request.app[STORE]
    ids = [i for i in parts[1].split(",") if i]
    answers: list[dict[str, Any]] = []
    for job_id in ids:
        job = await _visible(request, principal, job_id)
        if job is None:
            answers.append(_not_found(job_id))
            continue
        after = await store.cancel_job(job.job_id) or job
        answers.append(job_json(after, await _first_file(store, job.job_id)))
    if len(ids) == 1:
        status = 404 if answers[0].get("http_status", "").startswith("404") else 200
        return web.json_response(answers[0], status=status)
    return web.json_response(answers, status=207 if any(
        a["http_status"].startswith("404") for a in answers) else 200)


Route = Callable[[web.Request, list[str]], Awaitable[web.Response]]


def _route(method: str, parts: list[str]) -> Route | None:
    """The handler for a slash-collapsed path split into parts (pure)."""
    n = len(parts)
    table: dict[tuple[str, int, str | None, str | None], Route] = {
        ("GET", 0, None, None): root,
        ("GET", 1, "whoami", None): whoami,
        ("GET", 1, "jobs", None): list_jobs,
        ("POST", 1, "jobs", None): submit,
        ("GET", 2, "jobs", None): get_jobs,
        ("DELETE", 2, "jobs", None): cancel,
        ("GET", 3, "jobs", "files"): job_files,
        ("GET", 3, "jobs", "dm"): job_dm,
    }
    head = parts[0] if n else None
    tail = parts[2] if n == 3 else None
    return table.get((method, n, head, tail))


async def dispatch(request: web.Request) -> web.StreamResponse:
    """The one route under /fts3: collapse slashes, pick a handler, answer FTS-style errors."""
    parts = [p for p in request.match_info.get("tail", "").split("/") if p]
    method = "GET" if request.method == "HEAD" else request.method
    handler = _route(method, parts)
    if handler is None:
        return _error(404 if _route("GET", parts) is None and _route("POST", parts) is None
                      and _route("DELETE", parts) is None else 405,
                      f"{request.method} {request.path} is not part of this FTS3 API")
    try:
        return await handler(request, parts)
    except Problem as exc:
        return _error(exc.status_code, exc.detail)
    except Exception:
        log.exception("fts3 %s %s failed", request.method, request.path)
        return _error(500, "internal error; the node's log has the details")


def setup_fts3(
    app: web.Application, store: JobStore, auth: Authenticator, config: NodeConfig
) -> None:
    """Mount the façade on ``app`` under ``/fts3``."""
    app[STORE] = store
    app[AUTH] = auth
    app[CONFIG] = config
    app.router.add_route("*", FTS3_PREFIX, dispatch)
    app.router.add_route("*", FTS3_PREFIX + "/{tail:.*}", dispatch)
