"""Which backend moves a file, and which link (source host → destination host) it loads.

Pure functions over URLs: the API calls ``route`` when a job is submitted and the
scheduler limits concurrency per ``link_of``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

BACKENDS = frozenset({"stream", "rclone", "fts", "rucio"})
STREAM_SCHEMES = frozenset({"http", "https", "dav", "davs", "file"})
AUTO = "auto"


# scheme, then the authority after "//" (a job may hold 100,000 URLs: keep this cheap)
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(?://([^/?#]*))?")


def _split(url: str) -> tuple[str, str]:
    """(scheme, host) of a URL, both lowercased; "" where absent (as urllib.parse does)."""
    match = _URL.match(url)
    if match is None:
        return "", ""
    authority = (match.group(2) or "").rpartition("@")[2]
    if authority.startswith("["):
        host = authority[1 : authority.find("]")] if "]" in authority else authority[1:]
    else:
        host = authority.partition(":")[0]
    return match.group(1).lower(), host.lower()


def _scheme(url: str) -> str:
    return _split(url)[0]


@dataclass(frozen=True)
class RouteRule:
    """A policy rule: every condition given must match (either side's scheme or host)."""

    backend: str
    schemes: frozenset[str] = frozenset()  # empty: any
    hosts: tuple[str, ...] = ()  # shell patterns (fnmatch), lowercase; empty: any
    min_size_bytes: int | None = None
    max_size_bytes: int | None = None

    def matches(self, source: str, destination: str, size: int | None) -> bool:
        (s_scheme, s_host), (d_scheme, d_host) = _split(source), _split(destination)
        if self.schemes and not {s_scheme, d_scheme} & self.schemes:
            return False
        if self.hosts and not any(
            fnmatch.fnmatchcase(h, pattern) for h in (s_host, d_host) for pattern in self.hosts
        ):
            return False
        if self.min_size_bytes is not None and (size is None or size < self.min_size_bytes):
            return False
        return not (
            self.max_size_bytes is not None and (size is None or size > self.max_size_bytes)
        )


def route(
    source: str,
    destination: str,
    backend_param: str | None = None,
    *,
    size: int | None = None,
    rules: Sequence[RouteRule] = (),
) -> str:
    """The backend for one copy: an explicit choice wins, then the first matching
    policy rule, else the URL schemes decide.

    ``rucio://`` on either side → rucio; ``rclone://`` → rclone; both sides
    http(s)/dav(s)/file → stream.  Anything else is a ValueError naming the URLs,
    because guessing a backend would fail later and less clearly.
    """
    if backend_param and backend_param != AUTO:
        if backend_param not in BACKENDS:
            raise ValueError(
                f"unknown backend {backend_param!r}; expected one of {sorted(BACKENDS)} or 'auto'"
            )
        return backend_param
    for rule in rules:
        if rule.matches(source, destination, size):
            return rule.backend
    schemes = {_scheme(source), _scheme(destination)}
    if "rucio" in schemes:
        return "rucio"
    if "rclone" in schemes:
        return "rclone"
    if schemes <= STREAM_SCHEMES:
        return "stream"
    raise ValueError(
        f"no backend handles {source!r} -> {destination!r}; name one explicitly"
    )


def host_of(url: str) -> str:
    """The host a URL loads: ``local`` for file://, else the lowercased host name."""
    scheme, host = _split(url)
    if scheme == "file":
        return "local"
    return host or scheme or "unknown"


def link_of(source: str, destination: str) -> str:
    """The link a copy runs on, ``"srchost -> dsthost"``; the unit the scheduler limits."""
    return f"{host_of(source)} -> {host_of(destination)}"
