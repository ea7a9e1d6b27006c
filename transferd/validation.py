"""Checking a submitted job body, field by field, before anything is stored.

``parse_job_request`` is pure (apart from reading the clock it is given): it
turns decoded JSON into a ``JobRequest`` or raises ``Invalid`` listing every
offending field by its JSON path (``files[3].destination``), so one answer
tells the caller all that is wrong.  Confinement of file:// paths to the
tenant's roots touches the file system and lives in ``transferd.paths``;
expanding folder sources (``is_folder``) needs the network and lives in
``transferd.folders``.  Endpoint tokens are checked here but never echoed in
a message.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from transferd.models import FileSpec, JobParams, JobRequest
from transferd.paths import PathNotAllowed, file_url_path
from transferd.problem import FieldError

__all__ = [
    "BACKENDS",
    "CHECKSUM_HEX_CHARS",
    "FOLDER_SCHEMES",
    "MAX_FILES",
    "MAX_METADATA_BYTES",
    "MAX_TOKEN_CHARS",
    "SCHEMES",
    "TOKEN_SCHEMES",
    "VERIFY_MODES",
    "Invalid",
    "check_url",
    "decode_json",
    "is_folder",
    "parse_checksum",
    "parse_deadline",
    "parse_job_request",
    "token_problem",
]

SCHEMES = frozenset({"file", "http", "https", "dav", "davs", "rclone", "rucio"})
HOST_SCHEMES = frozenset({"http", "https", "dav", "davs"})
BACKENDS = ("auto", "stream", "rclone", "fts", "rucio")
VERIFY_MODES = ("both", "source", "target", "none")
CHECKSUM_HEX_CHARS = {
    "adler32": 8, "crc32c": 8, "crc32": 8, "md5": 32, "sha1": 40, "sha256": 64,
}
MAX_FILES = 100_000
MAX_URL_CHARS = 8192
MAX_METADATA_BYTES = 4096
MAX_ACTIVITY_CHARS = 200
MAX_ERRORS = 100  # a body with 100,000 bad files gets the first hundred complaints
MAX_TOKEN_CHARS = 16384  # a large JWT with many scopes fits
# endpoints the stream mover sends a bearer token to; folders it can list
TOKEN_SCHEMES = frozenset({"http", "https", "dav", "davs"})
FOLDER_SCHEMES = frozenset({"file", "http", "https", "dav", "davs"})
TOKEN_BACKENDS = ("auto", "stream", "rclone", "fts")

_HEX = re.compile(r"^[0-9a-f]+$")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")
_HOST_PORT = re.compile(
    r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]+)(?::(?P<port>[0-9]{1,5}))?$"
)
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_CONTROL_ONLY = re.compile(r"[\x00-\x1f\x7f]")
_JOB_KEYS = ("files", "params")
_TOKEN = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: safe in an Authorization header
_FILE_KEYS = (
    "source", "destination", "size", "checksum", "metadata", "source_token", "destination_token",
)
_PARAM_KEYS = tuple(JobParams.__dataclass_fields__)


class Invalid(Exception):
    """The request is malformed; ``errors`` names each offending field."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = errors


class _Errors:
    def __init__(self) -> None:
        self.items: list[FieldError] = []

    def add(self, field: str, message: str) -> None:
        if len(self.items) < MAX_ERRORS:
            self.items.append(FieldError(field, message))

    @property
    def full(self) -> bool:
        return len(self.items) >= MAX_ERRORS


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean", int: "an integer", float: "a number", str: "a string",
        list: "an array", dict: "an object",
    }.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_url(value: Any) -> str | None:
    """Why ``value`` is not an acceptable source/destination URL, or None when it is."""
    if not isinstance(value, str):
        return f"expected a URL string, got {_kind(value)}"
    if not value:
        return "must not be empty"
    if len(value) > MAX_URL_CHARS:
        return f"longer than {MAX_URL_CHARS} characters"
    if _CONTROL.search(value):
        return "contains spaces or control characters; percent-encode them"
    scheme, colon, rest = value.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in SCHEMES:
        shown = scheme + ":" if colon and _SCHEME.match(scheme) else "(none)"
        return f"unsupported scheme {shown}; use one of " + ", ".join(sorted(SCHEMES))
    if not rest.startswith("//"):
        return f"expected {scheme}://..."
    if scheme == "file":
        try:
            file_url_path(value)
        except PathNotAllowed as exc:
            return str(exc)
        return None
    authority = re.split(r"[/?#]", rest[2:], maxsplit=1)[0]
    if "@" in authority:
        return "credentials must not be embedded in the URL"
    if scheme in HOST_SCHEMES:
        match = _HOST_PORT.match(authority)
        if match is None:
            return "a host is required" if not authority else "the host or port is malformed"
        if match.group("port") and not 0 < int(match.group("port")) <= 65535:
            return "the port is out of range"
    elif len(rest) <= 2:
        return f"nothing after {scheme}://"
    return None


def is_folder(source: str, destination: str) -> bool:
    """Whether a file spec names a folder to expand: both URLs end in "/" and the
    source is one the stream mover lists (PROPFIND, or a directory walk)."""
    scheme = source.partition(":")[0].lower()
    return source.endswith("/") and destination.endswith("/") and scheme in FOLDER_SCHEMES


def _scheme_of(url: Any) -> str:
    return url.partition(":")[0].lower() if isinstance(url, str) else ""


def token_problem(value: Any, url: Any, side: str) -> str | None:
    """Why ``value`` cannot be the bearer token of the ``side`` ("source" or
    "destination") ``url``, or None; the sentence never repeats the value."""
    if not isinstance(value, str):
        return f"expected a string, got {_kind(value)}"
    if not 0 < len(value) <= MAX_TOKEN_CHARS:
        return f"expected 1..{MAX_TOKEN_CHARS} characters"
    if not _TOKEN.match(value):
        return "only visible ASCII characters (no spaces) may appear in a token"
    if _scheme_of(url) not in TOKEN_SCHEMES:
        return f"a bearer token is sent only to http(s):// and dav(s):// {side}s"
    return None


def _token(item: dict[str, Any], side: str, where: str, backend: str,
           errors: _Errors) -> str | None:
    """The ``{side}_token`` of a file, checked; the message never repeats the value."""
    key = f"{side}_token"
    value = item.get(key)
    if value is None:
        return None
    field = f"{where}.{key}"
    if (why := token_problem(value, item.get(side), side)) is not None:
        errors.add(field, why)
    elif backend not in TOKEN_BACKENDS:
        errors.add(field, f"the {backend} backend sends no endpoint tokens "
                          "(stream, rclone and fts do)")
    else:
        return str(value)
    return None


def parse_checksum(value: Any) -> str:
    """``"alg"`` or ``"alg:hex"`` normalised to lower case; raises ValueError saying why."""
    if not isinstance(value, str):
        raise ValueError(f'expected "alg" or "alg:hex", got {_kind(value)}')
    alg, sep, hexval = value.strip().lower().partition(":")
    if alg not in CHECKSUM_HEX_CHARS:
        raise ValueError(
            f"unknown algorithm {alg!r}; use one of {', '.join(CHECKSUM_HEX_CHARS)}"
        )
    if not sep:
        return alg
    want = CHECKSUM_HEX_CHARS[alg]
    if len(hexval) != want or not _HEX.match(hexval):
        raise ValueError(f"{alg} value must be {want} hex digits")
    return f"{alg}:{hexval}"


def parse_deadline(value: Any, now: float) -> str:
    """An RFC 3339 time with a UTC offset, later than ``now``; raises ValueError saying why."""
    if not isinstance(value, str):
        raise ValueError(f"expected an RFC 3339 time, got {_kind(value)}")
    if len(value) > 64 or "T" not in value.upper():
        raise ValueError("expected an RFC 3339 time such as 2030-01-31T12:00:00Z")
    try:
        when = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("expected an RFC 3339 time such as 2030-01-31T12:00:00Z") from None
    if when.tzinfo is None:
        raise ValueError("needs a UTC offset (Z or +hh:mm)")
    if when.timestamp() <= now:
        raise ValueError("is in the past")
    return value.upper()


def _metadata(value: Any, field: str, errors: _Errors) -> dict[str, Any]:
    if not isinstance(value, dict):
        errors.add(field, f"expected an object, got {_kind(value)}")
        return {}
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        errors.add(field, f"{size} bytes serialized; at most {MAX_METADATA_BYTES}")
    return value


def _unknown(obj: dict[str, Any], allowed: tuple[str, ...], prefix: str, errors: _Errors) -> None:
    for key in obj:
        if key not in allowed:
            errors.add(f"{prefix}{key}", "unknown field")


def _files(value: Any, backend: str, errors: _Errors) -> Iterator[FileSpec]:
    for i, item in enumerate(value):
        if errors.full:
            return
        where = f"files[{i}]"
        if not isinstance(item, dict):
            errors.add(where, f"expected an object, got {_kind(item)}")
            continue
        _unknown(item, _FILE_KEYS, where + ".", errors)
        for key in ("source", "destination"):
            if key not in item:
                errors.add(f"{where}.{key}", "required")
            elif (why := check_url(item[key])) is not None:
                errors.add(f"{where}.{key}", why)
        size = item.get("size")
        if size is not None and (not _is_int(size) or size < 0):
            errors.add(f"{where}.size", "expected an integer ≥ 0 (bytes)")
        checksum = item.get("checksum")
        if checksum is not None:
            try:
                checksum = parse_checksum(checksum)
            except ValueError as exc:
                errors.add(f"{where}.checksum", str(exc))
        metadata = _metadata(item.get("metadata", {}), f"{where}.metadata", errors)
        source_token = _token(item, "source", where, backend, errors)
        destination_token = _token(item, "destination", where, backend, errors)
        if errors.items:
            continue
        source, destination = item["source"], item["destination"]
        if is_folder(source, destination):
            # each file's size and value come from the listing
            if size is not None:
                errors.add(f"{where}.size", "not for a folder source (ending in /)")
            if checksum is not None and ":" in checksum:
                errors.add(f"{where}.checksum",
                           'a folder source takes an algorithm only, e.g. "adler32"')
        elif source.endswith("/") and _scheme_of(source) in FOLDER_SCHEMES:
            errors.add(f"{where}.destination",
                       "a folder source (ending in /) needs a destination ending in /")
        if not errors.items:
            yield FileSpec(
                source=source, destination=destination, size=size, checksum=checksum,
                metadata=metadata, source_token=source_token,
                destination_token=destination_token,
            )


def _params(value: Any, now: float, errors: _Errors) -> JobParams:
    if not isinstance(value, dict):
        errors.add("params", f"expected an object, got {_kind(value)}")
        return JobParams()
    _unknown(value, _PARAM_KEYS, "params.", errors)
    out: dict[str, Any] = {}

    def choice(key: str, allowed: tuple[str, ...]) -> None:
        if key in value:
            if value[key] in allowed:
                out[key] = value[key]
            else:
                errors.add(f"params.{key}", f"expected one of {', '.join(allowed)}")

    def integer(key: str, lo: int, hi: int) -> None:
        if key in value:
            v = value[key]
            if _is_int(v) and lo <= v <= hi:
                out[key] = v
            else:
                errors.add(f"params.{key}", f"expected an integer in {lo}..{hi}")

    choice("backend", BACKENDS)
    choice("verify_checksum", VERIFY_MODES)
    if "overwrite" in value:
        if isinstance(value["overwrite"], bool):
            out["overwrite"] = value["overwrite"]
        else:
            errors.add("params.overwrite", "expected true or false")
    integer("priority", 1, 5)
    integer("max_retries", 0, 100)
    if "retry_delay_s" in value:
        v = value["retry_delay_s"]
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0:
            out["retry_delay_s"] = float(v)
        else:
            errors.add("params.retry_delay_s", "expected a number of seconds ≥ 0")
    if value.get("deadline") is not None:
        try:
            out["deadline"] = parse_deadline(value["deadline"], now)
        except ValueError as exc:
            errors.add("params.deadline", str(exc))
    if "activity" in value:
        v = value["activity"]
        if isinstance(v, str) and 0 < len(v) <= MAX_ACTIVITY_CHARS and not _CONTROL_ONLY.search(v):
            out["activity"] = v
        else:
            errors.add("params.activity", f"expected a name of 1..{MAX_ACTIVITY_CHARS} characters")
    if "metadata" in value:
        out["metadata"] = _metadata(value["metadata"], "params.metadata", errors)
    return JobParams(**out)


def parse_job_request(body: Any, *, now: float) -> JobRequest:
    """The job a decoded POST /jobs body asks for; raises ``Invalid`` naming every bad field."""
    errors = _Errors()
    if not isinstance(body, dict):
        raise Invalid([FieldError("body", f"expected a JSON object, got {_kind(body)}")])
    _unknown(body, _JOB_KEYS, "", errors)
    params = _params(body.get("params", {}), now, errors)
    files: list[FileSpec] = []
    raw_files = body.get("files")
    if raw_files is None:
        errors.add("files", "required")
    elif not isinstance(raw_files, list):
        errors.add("files", f"expected an array, got {_kind(raw_files)}")
    elif not 1 <= len(raw_files) <= MAX_FILES:
        errors.add("files", f"expected 1..{MAX_FILES} files, got {len(raw_files)}")
    else:
        files = list(_files(raw_files, params.backend, errors))
    if errors.items:
        raise Invalid(errors.items)
    return JobRequest(files=files, params=params)


def decode_json(raw: bytes) -> Any:
    """JSON from a request body; NaN/Infinity and bad UTF-8 are refused (ValueError)."""

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    return json.loads(raw.decode("utf-8"), parse_constant=no_constants)
