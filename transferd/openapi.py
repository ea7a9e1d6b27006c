"""The OpenAPI 3.1 description of ``/api/v1``, written by hand to match ``transferd.api``.

``tests/test_api.py`` checks that every route the API registers is described
here and that the enums agree with the validator's tables.
"""

from __future__ import annotations

import copy
from typing import Any

from transferd import __version__
from transferd.models import Role
from transferd.states import FileState, JobState
from transferd.validation import (
    BACKENDS,
    CHECKSUM_HEX_CHARS,
    MAX_FILES,
    MAX_METADATA_BYTES,
    MAX_TOKEN_CHARS,
    SCHEMES,
    VERIFY_MODES,
)

__all__ = ["openapi_document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_CHECKSUM_PATTERN = "^(" + "|".join(
    f"{alg}(:[0-9a-fA-F]{{{n}}})?" for alg, n in CHECKSUM_HEX_CHARS.items()
) + ")$"

_ERRORS: dict[str, Any] = {
    "400": _problem("The request is malformed; `errors` names each offending field."),
    "401": _problem("No bearer credential, or one that is unknown, expired, for another "
                    "audience or from an untrusted issuer (`WWW-Authenticate: Bearer`)."),
    "403": _problem("The credential's role may not do this (a reader writing, a tenant "
                    "listing another tenant's jobs)."),
    "503": _problem("The token's issuer could not be reached to fetch its keys."),
}
_NOT_FOUND = _problem("No such job, or a job of another tenant.")
_JOB_ID_PARAM = {
    "name": "job_id", "in": "path", "required": True, "schema": {"type": "string"},
}
_PAGE_PARAMS = [
    {"name": "cursor", "in": "query", "schema": {"type": "string"},
     "description": "`next_cursor` from the previous page."},
    {"name": "limit", "in": "query",
     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
]

_SCHEMAS: dict[str, Any] = {
    "FileSpec": {
        "type": "object",
        "additionalProperties": False,
        "required": ["source", "destination"],
        "properties": {
            "source": {"type": "string", "format": "uri", "maxLength": 8192,
                       "description": "Scheme one of " + ", ".join(sorted(SCHEMES))
                       + "; file:// only inside the tenant's roots.  A folder (http(s)/dav(s) "
                       "collection or file:// directory) ends in `/`, as its destination "
                       "must: it is listed at submission (recursive PROPFIND, or a walk) and "
                       "becomes one file per file, relative paths kept, sizes and declared "
                       "checksums from the listing."},
            "destination": {"type": "string", "format": "uri", "maxLength": 8192,
                            "description": "As source; file:// must resolve inside the "
                            "tenant's allowed roots (no `..`, no symlink escape)."},
            "size": {"type": ["integer", "null"], "minimum": 0, "description": "Bytes."},
            "checksum": {"type": ["string", "null"], "pattern": _CHECKSUM_PATTERN,
                         "examples": ["adler32:0a1b2c3d", "sha256"],
                         "description": "`alg:hex` to verify against, or `alg` to compute "
                         "and record."},
            "metadata": {"type": "object", "description":
                         f"At most {MAX_METADATA_BYTES} bytes serialized."},
            "source_token": {
                "type": "string", "minLength": 1, "maxLength": MAX_TOKEN_CHARS,
                "pattern": "^[\\x21-\\x7e]+$", "writeOnly": True,
                "description": "A bearer token the stream mover or rclone sends to an "
                "http(s)/dav(s) source (and uses to list a folder source), as FTS3's "
                "`source_tokens` (the fts backend passes it on as those; the rucio backend "
                "refuses it).  Never returned; kept only until the job ends."},
            "destination_token": {
                "type": "string", "minLength": 1, "maxLength": MAX_TOKEN_CHARS,
                "pattern": "^[\\x21-\\x7e]+$", "writeOnly": True,
                "description": "As `source_token`, for a dav(s)/http(s) destination."},
        },
    },
    "JobParams": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "backend": {"enum": list(BACKENDS), "default": "auto"},
            "verify_checksum": {"enum": list(VERIFY_MODES), "default": "both"},
            "overwrite": {"type": "boolean", "default": False},
            "priority": {"type": "integer", "minimum": 1, "maximum": 5, "default": 3,
                         "description": "5 is most urgent."},
            "max_retries": {"type": "integer", "minimum": 0, "maximum": 100, "default": 3},
            "retry_delay_s": {"type": "number", "minimum": 0, "default": 5.0},
            "deadline": {"type": ["string", "null"], "format": "date-time",
                         "description": "RFC 3339, in the future; unfinished files then expire."},
            "activity": {"type": "string", "minLength": 1, "maxLength": 200,
                         "default": "default"},
            "metadata": {"type": "object", "description":
                         f"At most {MAX_METADATA_BYTES} bytes serialized."},
        },
    },
    "JobRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["files"],
        "properties": {
            "files": {"type": "array", "minItems": 1, "maxItems": MAX_FILES,
                      "items": _ref("FileSpec")},
            "params": _ref("JobParams"),
        },
    },
    "Submitted": {
        "type": "object",
        "required": ["job_id", "state"],
        "properties": {"job_id": {"type": "string"}, "state": {"enum": list(JobState)}},
    },
    "Retried": {
        "type": "object",
        "required": ["job_id", "state", "retried"],
        "properties": {
            "job_id": {"type": "string"},
            "state": {"enum": list(JobState)},
            "retried": {"type": "integer", "minimum": 0,
                        "description": "Failed and canceled files put back in the queue."},
        },
    },
    "Job": {
        "type": "object",
        "required": ["job_id", "state", "owner", "submitter", "params", "created_at", "totals"],
        "properties": {
            "job_id": {"type": "string"},
            "state": {"enum": list(JobState)},
            "owner": {"type": "string", "description": "The tenant."},
            "submitter": {"type": "string"},
            "params": _ref("JobParams"),
            "created_at": {"type": "number", "description": "Unix seconds."},
            "updated_at": {"type": "number"},
            "started_at": {"type": ["number", "null"]},
            "finished_at": {"type": ["number", "null"]},
            "totals": {
                "type": "object",
                "properties": {
                    "files": {"type": "integer"},
                    "files_by_state": {
                        "type": "object",
                        "properties": {s.value: {"type": "integer"} for s in FileState},
                    },
                    "bytes_total": {"type": "integer"},
                    "bytes_done": {"type": "integer"},
                    "rate_bps": {"type": "number", "description": "Bytes per second."},
                    "eta_s": {"type": ["number", "null"]},
                },
            },
        },
    },
    "File": {
        "type": "object",
        "required": ["file_id", "job_id", "index", "source", "destination", "state"],
        "properties": {
            "file_id": {"type": "string"},
            "job_id": {"type": "string"},
            "index": {"type": "integer"},
            "source": {"type": "string"},
            "destination": {"type": "string"},
            "state": {"enum": list(FileState)},
            "size": {"type": ["integer", "null"]},
            "checksum": {"type": ["string", "null"]},
            "verified_checksum": {"type": ["string", "null"]},
            "bytes_done": {"type": "integer"},
            "rate_bps": {"type": "number"},
            "attempts": {"type": "integer"},
            "error_class": {"type": ["string", "null"]},
            "reason": {"type": ["string", "null"], "description": "One human sentence."},
            "not_before": {"type": ["number", "null"]},
            "backend": {"type": "string"},
            "link": {"type": "string"},
            "started_at": {"type": ["number", "null"]},
            "finished_at": {"type": ["number", "null"]},
            "metadata": {"type": "object"},
            "members": {
                "type": "array",
                "description": "Only for a dataset source (rucio://scope/dataset): its files, "
                "each with its own state from its Rucio replica lock.",
                "items": {
                    "type": "object",
                    "required": ["did", "bytes", "state", "lock", "checksum"],
                    "properties": {
                        "did": {"type": "string", "description": "scope:name"},
                        "bytes": {"type": "integer"},
                        "state": {"enum": ["SUBMITTED", "ACTIVE", "FINISHED", "FAILED",
                                           "CANCELED"]},
                        "lock": {"type": ["string", "null"],
                                 "description": "Rucio's lock state (OK, REPLICATING, STUCK)"},
                        "checksum": {"type": ["string", "null"],
                                     "description": "adler32 as Rucio records it"},
                    },
                },
            },
        },
    },
    "JobPage": {
        "type": "object",
        "required": ["jobs", "next_cursor"],
        "properties": {"jobs": {"type": "array", "items": _ref("Job")},
                       "next_cursor": {"type": ["string", "null"]}},
    },
    "FilePage": {
        "type": "object",
        "required": ["files", "next_cursor"],
        "properties": {"files": {"type": "array", "items": _ref("File")},
                       "next_cursor": {"type": ["string", "null"]}},
    },
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail", "errors"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "field": {"type": "string", "description": "The first offending field."},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {
                        "field": {"type": "string", "examples": ["files[3].destination"]},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    },
}

_PATHS: dict[str, Any] = {
    "/health": {
        "get": {
            "summary": "Liveness", "operationId": "health", "security": [],
            "responses": {"200": _json("The node answers.", {
                "type": "object", "properties": {"status": {"const": "ok"}}})},
        },
    },
    "/openapi.json": {
        "get": {
            "summary": "This document", "operationId": "openapi", "security": [],
            "responses": {"200": _json("OpenAPI 3.1", {"type": "object"})},
        },
    },
    "/jobs": {
        "post": {
            "summary": "Submit a job",
            "operationId": "submitJob",
            "parameters": [{
                "name": "Idempotency-Key", "in": "header",
                "schema": {"type": "string", "maxLength": 200},
                "description": "The same key from the same caller within 24 h returns the "
                "same job (200) instead of creating another.",
            }],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("JobRequest")}}},
            "responses": {
                "201": _json("Created.", _ref("Submitted")),
                "200": _json("An idempotent replay: the job created before.", _ref("Submitted")),
                **_ERRORS,
                "413": _problem("The body is too large."),
                "415": _problem("The body is not JSON."),
                "422": _problem("A folder source is missing, refuses the listing, is not a "
                                "folder, is empty, or holds too many files; `field` names it."),
                "502": _problem("A folder source's server failed to list it (5xx, connection "
                                "refused or reset)."),
                "504": _problem("Listing the folder sources took longer than the time limit."),
            },
        },
        "get": {
            "summary": "List jobs (own tenant; operators: all)",
            "operationId": "listJobs",
            "parameters": [
                {"name": "state", "in": "query", "schema": {"enum": list(JobState)}},
                {"name": "owner", "in": "query", "schema": {"type": "string"},
                 "description": "A tenant; others than your own need operator or admin."},
                *_PAGE_PARAMS,
            ],
            "responses": {"200": _json("A page of jobs, newest first.", _ref("JobPage")),
                          **_ERRORS},
        },
    },
    "/jobs/{job_id}": {
        "parameters": [_JOB_ID_PARAM],
        "get": {
            "summary": "One job with its totals", "operationId": "getJob",
            "responses": {"200": _json("The job.", _ref("Job")), **_ERRORS, "404": _NOT_FOUND},
        },
        "delete": {
            "summary": "Cancel a job", "operationId": "cancelJob",
            "description": "Queued and running files become CANCELED; running transfers stop.",
            "responses": {"200": _json("The job after the cancel.", _ref("Job")), **_ERRORS,
                          "404": _NOT_FOUND},
        },
    },
    "/jobs/{job_id}/files": {
        "parameters": [_JOB_ID_PARAM],
        "get": {
            "summary": "The job's files, by index", "operationId": "listFiles",
            "parameters": [
                {"name": "state", "in": "query", "schema": {"enum": list(FileState)}},
                *_PAGE_PARAMS,
            ],
            "responses": {"200": _json("A page of files.", _ref("FilePage")), **_ERRORS,
                          "404": _NOT_FOUND},
        },
    },
    "/jobs/{job_id}/retry": {
        "parameters": [_JOB_ID_PARAM],
        "post": {
            "summary": "Retry the failed and canceled files", "operationId": "retryJob",
            "responses": {"200": _json("How many files were requeued.", _ref("Retried")),
                          **_ERRORS, "404": _NOT_FOUND},
        },
    },
}

_PATHS["/links"] = {
    "get": {
        "summary": "Links and their optimizer (operators and admins)",
        "operationId": "listLinks",
        "description": "Per link (`source-host -> destination-host`): transfers active and in "
        "flight, files queued, the optimizer's target within [min_active, max_active], "
        "throughput (EMA, bytes/s) and the last window's, success rate (last window and "
        "all time), bytes moved, the bandwidth cap, and the last decisions with their "
        "inputs and a one-line rationale, newest first.",
        "responses": {"200": _json("The links.", {"type": "object", "required": ["links"],
                                                  "properties": {"links": {
                                                      "type": "array", "items": _ref("Link")}}}),
                      **_ERRORS},
    },
}
_PATHS["/policy"] = {
    "get": {
        "summary": "The policy in force", "operationId": "getPolicy",
        "description": "`policies/default.toml` overlaid with the node's `--policy` file "
        "(`source`); re-read on SIGHUP.",
        "responses": {"200": _json("The policy.", {"type": "object", "required": [
            "source", "optimizer", "limits", "fairshare", "retry", "chunking", "routing"]}),
            **_ERRORS},
    },
}
_SCHEMAS["Link"] = {
    "type": "object",
    "required": ["link", "active", "inflight", "queued", "target", "max_active",
                 "throughput_bps", "success_rate", "bytes", "decisions"],
    "properties": {
        "link": {"type": "string", "examples": ["archive.surf.nl -> proc.example.org"]},
        "active": {"type": "integer"}, "inflight": {"type": "integer"},
        "queued": {"type": "integer"}, "target": {"type": "integer"},
        "max_active": {"type": "integer"}, "min_active": {"type": "integer"},
        "optimizer": {"type": "boolean"},
        "throughput_bps": {"type": "number"}, "last_throughput_bps": {"type": "number"},
        "rtt_s": {"type": ["number", "null"],
                  "description": "round-trip EMA from the workers' quickest responses"},
        "success_rate": {"type": ["number", "null"]},
        "success_rate_total": {"type": ["number", "null"]},
        "successes": {"type": "integer"}, "failures": {"type": "integer"},
        "bytes": {"type": "integer", "description": "Bytes moved on the link, ever."},
        "mean_duration_s": {"type": ["number", "null"]},
        "bandwidth_bps": {"type": ["integer", "null"]},
        "decisions": {"type": "array", "items": {"type": "object", "properties": {
            "ts": {"type": "number"}, "target": {"type": "integer"},
            "previous": {"type": "integer"}, "rationale": {"type": "string"},
            "inputs": {"type": "object"}}}},
    },
}

# OCM (transferd/ocm): received datatx shares and their CS3 TxInfo view; mounted only
# when the node has an [ocm] section, so documented only on request (openapi_document(ocm=True))
_OCM_PATHS: dict[str, Any] = {
    "/shares": {
        "get": {
            "summary": "Received OCM shares of the caller's tenant", "operationId": "listShares",
            "parameters": [{"name": "state", "in": "query", "schema": {
                "enum": ["pending", "accepted", "declined", "unshared"]}}],
            "responses": {"200": _json("The shares (never their secrets).", {
                "type": "object", "properties": {"shares": {"type": "array",
                                                             "items": _ref("Share")}}}),
                **_ERRORS},
        },
    },
    **{
        f"/shares/{{share_id}}/{action}": {
            "parameters": [{"name": "share_id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "post": {
                "summary": f"{action.capitalize()} a share (tells the sender SHARE_"
                           f"{action.upper()}ED)",
                "operationId": f"{action}Share",
                "responses": {"200": _json("The share after it.", _ref("Share")), **_ERRORS,
                              "404": _NOT_FOUND, "409": _problem("The share has ended.")},
            },
        }
        for action in ("accept", "decline")
    },
    "/transfers": {
        "get": {
            "summary": "CS3 TxInfo of share transfers", "operationId": "listTransfers",
            "parameters": [{"name": "share_id", "in": "query", "schema": {"type": "string"}}],
            "responses": {"200": _json("TxInfo list.", {
                "type": "object", "properties": {"transfers": {"type": "array",
                                                                "items": _ref("TxInfo")}}}),
                **_ERRORS},
        },
    },
    "/transfers/{tx_id}": {
        "parameters": [{"name": "tx_id", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "get": {
            "summary": "CS3 TxInfo of one transfer (a job id)", "operationId": "getTransfer",
            "responses": {"200": _json("TxInfo.", _ref("TxInfo")), **_ERRORS,
                          "404": _NOT_FOUND},
        },
    },
}

_SCHEMAS["Share"] = {
    "type": "object",
    "required": ["id", "name", "owner", "sender", "provider", "size", "state", "job_id",
                 "created_at"],
    "properties": {
        "id": {"type": "string"}, "name": {"type": "string"}, "owner": {"type": "string"},
        "sender": {"type": "string"}, "provider": {"type": "string"},
        "size": {"type": ["integer", "null"]},
        "state": {"enum": ["pending", "accepted", "declined", "unshared"]},
        "job_id": {"type": "string"}, "created_at": {"type": "number"},
        "share_with": {"type": "string"}, "resource_type": {"enum": ["file", "folder"]},
        "expiration": {"type": ["number", "null"]},
    },
}
_SCHEMAS["TxInfo"] = {
    "type": "object",
    "properties": {
        "id": {"type": "object"}, "status": {"type": "string"},
        "status_code": {"type": "integer"}, "grantee": {"type": "object"},
        "creator": {"type": "object"}, "ctime": {"type": "object"},
        "description": {"type": "string"}, "share_id": {"type": "object"},
    },
}

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "transferd",
        "version": __version__,
        "description": "Large-dataset transfer orchestrator. Roles: "
        + ", ".join(r.value for r in Role)
        + ". A reader may only read; submitters act on their own tenant's jobs; operators "
        "and admins on all. Another tenant's job answers 404.",
    },
    "servers": [{"url": "/api/v1"}],
    "security": [{"bearer": []}],
    "paths": _PATHS,
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "An API token (td_…) or an OIDC JWT from a "
                       "configured issuer."},
        },
    },
}


# the dashboard's read-only routes (transferd/dashboard.py), mounted by every `transferd serve`
_DASHBOARD_PATHS: dict[str, Any] = {
    "/summary": {
        "get": {
            "summary": "The dashboard overview (own tenant; operators: all)",
            "operationId": "getSummary",
            "description": "Tiles (queued, active, finished and failed files in the last 24 h, "
            "throughput now), per-minute throughput for the last hour, live jobs, active "
            "files, failed files grouped by error class and reason, and for operators queues "
            "per link and per backend (`links`, `backends`; null for other roles).",
            "responses": {"200": _json("The overview.", {"type": "object", "required": [
                "tiles", "throughput", "live_jobs", "active_files", "failures"]}), **_ERRORS},
        },
    },
    "/events": {
        "get": {
            "summary": "Live events (server-sent events)", "operationId": "streamEvents",
            "description": "`job` and `file` events ({type, id, job_id, state, ts, "
            "error_class?}) carry the stream id as the SSE id: reconnect with `Last-Event-ID` "
            "to miss nothing. `progress` events (no id) list the caller's live jobs every "
            "second while any are live; a comment every 15 s keeps idle streams open.",
            "parameters": [
                {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                {"name": "last_event_id", "in": "query", "schema": {"type": "string"},
                 "description": "The same, for clients that cannot set headers."},
            ],
            "responses": {"200": {"description": "An endless event stream.",
                                  "content": {"text/event-stream": {"schema": {
                                      "type": "string"}}}}, **_ERRORS},
        },
    },
}


def openapi_document(*, ocm: bool = False, dashboard: bool = False) -> dict[str, Any]:
    """A fresh copy of the document (callers may not mutate the shared one).

    ``ocm`` adds the OCM share and CS3 transfer routes (nodes with ``[ocm]``);
    ``dashboard`` the dashboard's summary and event-stream routes.
    """
    doc = copy.deepcopy(_DOCUMENT)
    if ocm:
        doc["paths"].update(copy.deepcopy(_OCM_PATHS))
    if dashboard:
        doc["paths"].update(copy.deepcopy(_DASHBOARD_PATHS))
    return doc
