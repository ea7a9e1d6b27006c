"""A small synchronous client of the transferd REST API, standard library only.

    client = Client("http://127.0.0.1:8080", token)
    answer = client.submit([{"source": src, "destination": dst}], {"priority": 4},
                           idempotency_key="run-42")
    job = client.job(answer["job_id"])

Exceptions::

    ClientError            the server answered with an error (status, problem dict)
     └── Unreachable       no answer at all: connection refused, DNS, timeout

``str()`` of either is one human sentence built from the problem's detail and
the fields it names; the bearer token never appears in it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, is_dataclass
from typing import Any

from transferd.models import FileSpec, JobParams

__all__ = ["API_PREFIX", "Client", "ClientError", "Unreachable"]

API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT_S = 120.0
MAX_ERROR_BODY_CHARS = 300


class ClientError(Exception):
    """The server rejected a request; ``problem`` is its application/problem+json body."""

    def __init__(self, status: int, problem: Mapping[str, Any], *, secret: str | None = None):
        self.status = status
        self.problem = dict(problem)
        super().__init__(_redact(_describe(status, self.problem), secret))

    @property
    def fields(self) -> list[str]:
        """The request fields the server blamed, in order, without repeats."""
        names: list[str] = []
        top = self.problem.get("field")
        if isinstance(top, str) and top:
            names.append(top)
        for err in self.problem.get("errors") or []:
            if isinstance(err, Mapping):
                name = err.get("field")
                if isinstance(name, str) and name and name not in names:
                    names.append(name)
        return names


class Unreachable(ClientError):
    """No HTTP answer from the server (status 0)."""


def _describe(status: int, problem: Mapping[str, Any]) -> str:
    detail = problem.get("detail") or problem.get("title") or f"HTTP {status}"
    text = str(detail).rstrip(".")
    messages: list[str] = []
    for err in problem.get("errors") or []:
        if isinstance(err, Mapping) and err.get("field"):
            message = err.get("message")
            item = f"{err['field']}: {message}" if message else str(err["field"])
            # Servers often repeat the first error as the detail: say it once.
            if item not in text and item not in messages:
                messages.append(item)
    field = problem.get("field")
    if messages:
        text += " (" + "; ".join(messages[:10])
        if len(messages) > 10:
            text += f"; and {len(messages) - 10} more"
        text += ")"
    elif isinstance(field, str) and field and field not in text:
        text += f" (field: {field})"
    return text


def _redact(text: str, secret: str | None) -> str:
    if secret and len(secret) >= 4:
        return text.replace(secret, "***")
    return text


def _plain(value: Any) -> Any:
    """Dataclasses (FileSpec, JobParams) to the JSON the API takes; dicts pass through."""
    if isinstance(value, JobParams):
        return value.to_json()
    if is_dataclass(value) and not isinstance(value, type):
        out = asdict(value)
        if isinstance(value, FileSpec):
            out = {k: v for k, v in out.items() if v is not None and v != {}}
        return out
    return value


class Client:
    """Talks to one transferd node as one principal (its bearer token)."""

    def __init__(self, url: str, token: str | None, *, timeout_s: float = DEFAULT_TIMEOUT_S):
        base = url.rstrip("/")
        if base.endswith(API_PREFIX):
            base = base[: -len(API_PREFIX)]
        parts = urllib.parse.urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = base
        self._token = token
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- the API ----------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """GET /api/v1/health (no credential needed)."""
        return self._request("GET", "/health", auth=False)

    def submit(
        self,
        files: Iterable[FileSpec | Mapping[str, Any]],
        params: JobParams | Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """POST /jobs: returns ``{"job_id", "state"}`` (the same job again on a replay)."""
        body: dict[str, Any] = {"files": [_plain(f) for f in files]}
        if params is not None:
            body["params"] = _plain(params)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._request("POST", "/jobs", body=body, headers=headers)

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /jobs/{id}: the job with its totals."""
        return self._request("GET", f"/jobs/{_seg(job_id)}")

    def jobs(
        self,
        state: str | None = None,
        owner: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """GET /jobs: one page, ``{"jobs": [...], "next_cursor"}``."""
        query = {"state": state, "owner": owner, "cursor": cursor, "limit": limit}
        return self._request("GET", "/jobs", query=query)

    def iter_jobs(
        self, state: str | None = None, owner: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every job visible to this principal, page after page."""
        cursor: str | None = None
        while True:
            page = self.jobs(state=state, owner=owner, cursor=cursor)
            yield from page.get("jobs", [])
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def files(
        self,
        job_id: str,
        state: str | None = None,
        cursor: str | None = None,
        limit: int = 1000,
    ) -> dict[str, Any]:
        """GET /jobs/{id}/files: one page, ``{"files": [...], "next_cursor"}``."""
        query = {"state": state, "cursor": cursor, "limit": limit}
        return self._request("GET", f"/jobs/{_seg(job_id)}/files", query=query)

    def iter_files(self, job_id: str, state: str | None = None) -> Iterator[dict[str, Any]]:
        """Every file of a job (optionally in one state), page after page."""
        cursor: str | None = None
        while True:
            page = self.files(job_id, state=state, cursor=cursor)
            yield from page.get("files", [])
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self, job_id: str) -> dict[str, Any]:
        """DELETE /jobs/{id}: the job after cancel."""
        return self._request("DELETE", f"/jobs/{_seg(job_id)}")

    def retry(self, job_id: str) -> dict[str, Any]:
        """POST /jobs/{id}/retry: ``{"job_id", "state", "retried": n}``."""
        return self._request("POST", f"/jobs/{_seg(job_id)}/retry")

    def links(self) -> list[dict[str, Any]]:
        """GET /links: per link actives, optimizer target, queue, throughput, decisions."""
        return list(self._request("GET", "/links")["links"])

    def policy(self) -> dict[str, Any]:
        """GET /policy: the policy in force."""
        return self._request("GET", "/policy")

    def summary(self) -> dict[str, Any]:
        """GET /summary: the dashboard's overview as this principal sees it (for ``top``)."""
        return self._request("GET", "/summary")

    # -- transport --------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
    ) -> dict[str, Any]:
        url = self.url + API_PREFIX + path
        if query:
            pairs = {k: str(v) for k, v in query.items() if v is not None}
            if pairs:
                url += "?" + urllib.parse.urlencode(pairs)
        all_headers = {"Accept": "application/json", **(headers or {})}
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            all_headers["Content-Type"] = "application/json"
        if auth and self._token:
            all_headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(url, data=data, headers=all_headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as err:
            raw = err.read()
            err.close()
            problem = _problem(err.code, err.reason, raw)
            raise ClientError(err.code, problem, secret=self._token) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            why = getattr(reason, "strerror", None) or str(reason)
            detail = f"cannot reach transferd at {self.url} ({why}); is the node running?"
            raise Unreachable(
                0, {"title": "unreachable", "detail": detail}, secret=self._token
            ) from None
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            raise ClientError(
                status,
                {"title": "bad answer", "detail": f"the server at {self.url} did not answer JSON"},
                secret=self._token,
            ) from None
        if not isinstance(answer, dict):
            raise ClientError(
                status,
                {"title": "bad answer", "detail": f"{self.url} answered a non-object"},
                secret=self._token,
            )
        return answer


def _seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _problem(status: int, reason: str, raw: bytes) -> dict[str, Any]:
    """The problem document of an error answer, or one made from a non-JSON body."""
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    text = raw.decode("utf-8", "replace").strip()
    detail = f"HTTP {status} {reason}".strip()
    if text and not text.lstrip().startswith("<"):
        detail += f": {text[:MAX_ERROR_BODY_CHARS]}"
    return {"title": reason or f"HTTP {status}", "status": status, "detail": detail}
