"""Open a Source or Sink for a URL by its scheme.

The HTTP/WebDAV endpoints are imported lazily so a ``file://`` copy (and
``transferd cp`` between local paths) does not pay for, or depend on, them.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

import aiohttp

from transferd import errors
from workers.stream.base import HeaderProvider, Sink, Source, no_headers
from workers.stream.local import FileSink, FileSource

SOURCE_SCHEMES = ("file", "http", "https", "dav", "davs")
SINK_SCHEMES = ("file", "http", "https", "dav", "davs")


def scheme_of(url: str) -> str:
    return urlsplit(url).scheme.lower()


def open_source(
    url: str, session: aiohttp.ClientSession | None, headers: HeaderProvider = no_headers
) -> Source:
    """A Source for ``url``; PermanentError for a scheme the mover cannot read."""
    scheme = scheme_of(url)
    if scheme == "file":
        return FileSource(url)
    if scheme in SOURCE_SCHEMES:
        cls = importlib.import_module("workers.stream.http").HttpSource
        source: Source = cls(url, _need(session, url), headers)
        return source
    raise errors.PermanentError(
        f"cannot read {scheme or 'scheme-less'} URLs (supported: {', '.join(SOURCE_SCHEMES)})"
    )


def open_sink(
    url: str,
    session: aiohttp.ClientSession | None,
    headers: HeaderProvider = no_headers,
    overwrite: bool = False,
    parents_may_be_links: bool = False,
) -> Sink:
    """A Sink for ``url``; PermanentError for a scheme the mover cannot write.

    ``parents_may_be_links`` lets a file:// sink follow symbolic links among the
    destination's parent directories (``transferd cp``); otherwise it refuses them.
    """
    scheme = scheme_of(url)
    if scheme == "file":
        return FileSink(url, overwrite=overwrite, parents_may_be_links=parents_may_be_links)
    if scheme in SINK_SCHEMES:
        cls = importlib.import_module("workers.stream.dav").DavSink
        sink: Sink = cls(url, _need(session, url), headers, overwrite)
        return sink
    raise errors.PermanentError(
        f"cannot write {scheme or 'scheme-less'} URLs (supported: {', '.join(SINK_SCHEMES)})"
    )


def _need(session: aiohttp.ClientSession | None, url: str) -> aiohttp.ClientSession:
    if session is None:
        raise ValueError(f"an aiohttp session is needed to open {scheme_of(url)}:// URLs")
    return session
