"""Pure parsers of what HTTP and WebDAV servers answer: digests, Retry-After, PROPFIND.

No I/O and no aiohttp here: each function takes a header value or a response
body and returns plain values.  ``workers.stream.http`` does the requests and
hands the answers to these functions; the WebDAV sink reaches them through its
``HttpClient`` (``propfind``).

Digest values are returned as lowercase hex under a normalised algorithm name
(``md5``, ``sha1``, ``sha256``, ``sha512``, ``adler32``, ``crc32c``,
``crc32``); an algorithm outside that list, or a value of the wrong length, is
left out rather than guessed at.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from transferd.errors import PermanentError

__all__ = [
    "DavProps",
    "normalize_algorithm",
    "parse_checksum_list",
    "parse_digest_header",
    "parse_multistatus",
    "parse_retry_after",
]

DAV_NS = "DAV:"
OC_NS = "http://owncloud.org/ns"

# normalised name -> digest length in bytes
_ALGORITHMS = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64,
               "adler32": 4, "crc32c": 4, "crc32": 4}
_ALIASES = {"sha": "sha1", "adler": "adler32"}


def normalize_algorithm(name: str) -> str | None:
    n = name.strip().lower().replace("-", "").replace("_", "")
    n = _ALIASES.get(n, n)
    return n if n in _ALGORITHMS else None


def _to_hex(algorithm: str, value: str) -> str | None:
    """A digest value as lowercase hex, from hex or base64 (whichever fits the length)."""
    want = _ALGORITHMS[algorithm]
    v = value.strip().strip(":")
    if len(v) == 2 * want:
        try:
            bytes.fromhex(v)
            return v.lower()
        except ValueError:
            pass
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == want else None


def parse_digest_header(value: str) -> dict[str, str]:
    """``Repr-Digest: sha-256=:b64:, md5=:b64:`` (RFC 9530) or ``Digest: MD5=b64, ADLER32=hex``
    (RFC 3230) → {normalised algorithm: hex}."""
    out: dict[str, str] = {}
    for item in value.split(","):
        name, sep, raw = item.partition("=")
        if not sep:
            continue
        algorithm = normalize_algorithm(name)
        if algorithm is None:
            continue
        hexed = _to_hex(algorithm, raw.split(";")[0])
        if hexed:
            out[algorithm] = hexed
    return out


def parse_checksum_list(value: str) -> dict[str, str]:
    """``SHA1:… MD5:… ADLER32:…`` (oc:checksums, OC-Checksum) → {algorithm: hex}."""
    out: dict[str, str] = {}
    for item in value.replace(",", " ").split():
        name, sep, raw = item.partition(":")
        algorithm = normalize_algorithm(name) if sep else None
        if algorithm is not None:
            hexed = _to_hex(algorithm, raw)
            if hexed:
                out[algorithm] = hexed
    return out


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class DavProps:
    """One ``<d:response>`` of a multistatus answer."""

    path: str  # unquoted URL path of the href
    is_collection: bool
    size: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    checksums: Mapping[str, str] = field(default_factory=dict)


def parse_multistatus(body: bytes) -> list[DavProps]:
    """The 200-status properties of each resource in a PROPFIND answer."""
    if b"<!DOCTYPE" in body[:4096].upper() or b"<!ENTITY" in body.upper():
        raise PermanentError("PROPFIND answer declares a DTD; refused")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise PermanentError(f"PROPFIND answer is not XML ({exc})") from None
    d = f"{{{DAV_NS}}}"
    out = []
    for resp in root.iter(f"{d}response"):
        href = resp.findtext(f"{d}href") or ""
        props: dict[str, ET.Element] = {}
        for propstat in resp.findall(f"{d}propstat"):
            status = propstat.findtext(f"{d}status") or "200"
            if " 200 " not in f" {status} " and not status.strip().endswith("200 OK"):
                continue
            prop = propstat.find(f"{d}prop")
            if prop is not None:
                for el in prop:
                    props[el.tag] = el
        rtype = props.get(f"{d}resourcetype")
        is_coll = rtype is not None and rtype.find(f"{d}collection") is not None
        size_el = props.get(f"{d}getcontentlength")
        size = int(size_el.text.strip()) if size_el is not None and size_el.text else None
        checksums: dict[str, str] = {}
        oc = props.get(f"{{{OC_NS}}}checksums")
        if oc is not None:
            texts = [c.text or "" for c in oc.iter(f"{{{OC_NS}}}checksum")] or [oc.text or ""]
            for text in texts:
                checksums.update(parse_checksum_list(text))
        etag_el, lm_el = props.get(f"{d}getetag"), props.get(f"{d}getlastmodified")
        out.append(DavProps(
            path=unquote(urlsplit(href.strip()).path),
            is_collection=is_coll,
            size=None if is_coll else size,
            etag=(etag_el.text or "").strip() or None if etag_el is not None else None,
            last_modified=(lm_el.text or "").strip() or None if lm_el is not None else None,
            checksums=checksums,
        ))
    return out
