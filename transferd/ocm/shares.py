"""Reading an incoming OCM share (pure): both datatx shapes, the spec's validation errors.

``parse_share`` turns a ``POST /ocm/shares`` body into an ``IncomingShare``
or raises ``ShareInvalid`` (400, ``validationErrors``) or ``ShareUnsupported``
(501: a share that is not a transfer, which a transfer service cannot take).

Shapes (PROTOCOLS.md §1):
- OCM 1.3 / draft-05: ``protocol.webdav{uri, sharedSecret, accessTypes:["datatx"], size?,
  requirements?}``
- OCM 1.1/1.2: ``protocol.datatx{sharedSecret, srcUri, size}``
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from transferd.ocm.discovery import split_address

__all__ = [
    "IncomingShare",
    "ShareInvalid",
    "ShareUnsupported",
    "parse_share",
    "safe_name",
    "source_url",
]

REQUIRED = ("shareWith", "name", "providerId", "owner", "sender", "shareType",
            "resourceType", "protocol")


class ShareInvalid(Exception):
    """400: fields missing or malformed; ``errors`` as [(name, message)]."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{n}: {m}" for n, m in errors))
        self.errors = errors


class ShareUnsupported(Exception):
    """501: a valid share of a kind we do not serve."""


@dataclass(frozen=True)
class IncomingShare:
    """A datatx share as received; ``secret`` never leaves this node except as a bearer."""

    share_with: str  # local user
    name: str
    provider_id: str
    owner: str
    sender: str
    sender_host: str
    resource_type: str  # file | folder
    uri: str  # absolute or relative to the sender's webdav root
    secret: str
    size: int | None
    must_exchange_token: bool
    expiration: float | None
    shape: str  # "webdav" (1.3) | "datatx" (1.1)


def safe_name(name: str) -> bool:
    """A share name usable as one path segment under the recipient's root."""
    return (
        bool(name) and len(name) <= 255 and name not in (".", "..") and "/" not in name
        and "\\" not in name and "\x00" not in name and name.isprintable()
    )


def _str(body: Mapping[str, Any], key: str, errors: list[tuple[str, str]]) -> str:
    value = body.get(key)
    if value is None or value == "":
        errors.append((key, "required"))
        return ""
    if not isinstance(value, str):
        errors.append((key, "must be a string"))
        return ""
    return value


def _size(value: Any, where: str, errors: list[tuple[str, str]]) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        errors.append((where, "must be a non-negative integer"))
        return None
    return value


def parse_share(body: Any) -> IncomingShare:
    """Validate a share body; see the module docstring for what is raised."""
    if not isinstance(body, dict):
        raise ShareInvalid([("body", "expected a JSON object")])
    errors: list[tuple[str, str]] = []
    fields = {k: _str(body, k, errors) for k in REQUIRED if k != "protocol"}
    protocol = body.get("protocol")
    if not isinstance(protocol, dict):
        errors.append(("protocol", "required (an object)"))
        protocol = {}
    sender_host = ""
    for key in ("owner", "sender"):
        if fields[key]:
            try:
                _, host = split_address(fields[key])
            except ValueError:
                errors.append((key, "expected an OCM address user@host"))
                continue
            if key == "sender":
                sender_host = host
    if fields["resourceType"] and fields["resourceType"] not in ("file", "folder"):
        errors.append(("resourceType", "expected file or folder"))
    if fields["shareType"] and fields["shareType"] not in ("user", "group", "federation"):
        errors.append(("shareType", "expected user, group or federation"))
    if fields["name"] and not safe_name(fields["name"]):
        errors.append(("name", "must be one path segment (no '/', not '.' or '..')"))
    expiration: float | None = None
    raw_exp = body.get("expiration")
    if raw_exp is not None:
        if isinstance(raw_exp, bool) or not isinstance(raw_exp, int | float):
            errors.append(("expiration", "expected unix seconds"))
        else:
            expiration = float(raw_exp)
    webdav = protocol.get("webdav")
    datatx = protocol.get("datatx")
    uri = secret = ""
    size: int | None = None
    exchange = False
    shape = ""
    if isinstance(webdav, dict) and "datatx" in (webdav.get("accessTypes") or []):
        shape = "webdav"
        uri = _str(webdav, "uri", errors)
        secret = _str(webdav, "sharedSecret", errors)
        size = _size(webdav.get("size"), "protocol.webdav.size", errors)
        exchange = "must-exchange-token" in (webdav.get("requirements") or [])
    elif isinstance(datatx, dict):
        shape = "datatx"
        uri = _str(datatx, "srcUri", errors)
        secret = _str(datatx, "sharedSecret", errors)
        size = _size(datatx.get("size"), "protocol.datatx.size", errors)
    errors = [(f"protocol.{shape}.{n}" if n in ("uri", "sharedSecret", "srcUri") else n, m)
              for n, m in errors]
    if errors:
        raise ShareInvalid(errors)
    if not shape:
        raise ShareUnsupported("only datatx (transfer) shares are served here")
    user = fields["shareWith"]
    if "@" in user:
        user = user.rpartition("@")[0]
    return IncomingShare(
        share_with=user, name=fields["name"], provider_id=fields["providerId"],
        owner=fields["owner"], sender=fields["sender"], sender_host=sender_host,
        resource_type=fields["resourceType"], uri=uri, secret=secret, size=size,
        must_exchange_token=exchange, expiration=expiration, shape=shape,
    )


def source_url(uri: str, webdav_root: str | None, sender_base: str) -> str:
    """The absolute URL to read: a relative ``uri`` resolves against the sender's webdav root."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https", "dav", "davs") and parts.netloc:
        if parts.username or parts.password:
            raise ValueError("the share URI carries credentials")
        return uri
    if parts.scheme:
        raise ValueError(f"unsupported URI scheme {parts.scheme!r}")
    root = webdav_root or f"{sender_base}/"
    return urljoin(root if root.endswith("/") else root + "/", uri.lstrip("/"))
