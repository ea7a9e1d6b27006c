"""RFC 9457 problem details: the one shape every API error takes.

``Problem`` is an aiohttp HTTP exception, so a handler, a middleware or the
authenticator can ``raise`` it and the client receives
``application/problem+json`` with ``type``, ``title``, ``status``, ``detail``,
``field`` (the first offending field, when there is one) and ``errors``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web

__all__ = ["PROBLEM_CONTENT_TYPE", "FieldError", "Problem", "problem_body"]

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://transferd.dev/problems/"


@dataclass(frozen=True)
class FieldError:
    """One thing wrong with one field, named as a JSON path (``files[3].destination``)."""

    field: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


def problem_body(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    kind: str | None = None,
    errors: Sequence[FieldError] = (),
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + kind if kind else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "errors": [e.to_json() for e in errors],
    }
    if errors:
        body["field"] = errors[0].field
    return body


class Problem(web.HTTPError):
    """An API error; raise it from anywhere below a handler."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        kind: str | None = None,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status_code = status
        self.body_json = problem_body(status, detail, title=title, kind=kind, errors=errors)
        super().__init__(
            text=json.dumps(self.body_json),
            content_type=PROBLEM_CONTENT_TYPE,
            headers=dict(headers or {}),
        )
        self.detail = detail
        self.errors = list(errors)

    def __str__(self) -> str:
        return f"{self.status_code} {self.detail}"
