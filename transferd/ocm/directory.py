"""The trusted directory: which providers may share with us.

Two document formats are read (``parse_directory``, pure):

- the CS3 ProviderInfo list used by Reva meshes
  ``[{name, full_name, domain, services: [{host, endpoint: {type: {name: "OCM"}, path}}]}]``
- the OCM Directory Service document ``{federation, servers: [{url, displayName}]}``,
  also when wrapped as a JWS (compact serialisation; the payload is read,
  the signature is not checked here).

A provider is named by ``host[:port]``.  The file is re-read whenever its
modification time changes (a stat per lookup); a URL is fetched every
``directory_refresh_s``.  A directory that fails to load keeps the last good
list; none loaded means nobody is trusted (never "everybody").
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

__all__ = ["TrustedProviders", "parse_directory"]

log = logging.getLogger(__name__)
MAX_DIRECTORY_BYTES = 8 << 20


def _netloc(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    if "://" not in value:
        value = "https://" + value
    netloc = urlsplit(value).netloc.lower()
    return netloc or None


def _jws_payload(text: str) -> Any:
    parts = text.strip().split(".")
    if len(parts) != 3:
        raise ValueError("not JSON and not a compact JWS")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    return json.loads(base64.urlsafe_b64decode(payload))


def parse_directory(raw: bytes | str) -> set[str]:
    """The ``host[:port]`` names listed in a directory document of either format."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        doc: Any = json.loads(text)
    except ValueError:
        doc = _jws_payload(text)
    found: set[str] = set()
    if isinstance(doc, dict) and isinstance(doc.get("servers"), list):
        for server in doc["servers"]:
            url = server.get("url") if isinstance(server, dict) else None
            if isinstance(url, str) and (host := _netloc(url)) is not None:
                found.add(host)
        return found
    if isinstance(doc, list):
        for provider in doc:
            if not isinstance(provider, dict):
                continue
            hosts: list[str] = []
            for service in provider.get("services") or []:
                if not isinstance(service, dict):
                    continue
                kind = ((service.get("endpoint") or {}).get("type") or {}).get("name")
                if str(kind).upper() == "OCM" and isinstance(service.get("host"), str):
                    hosts.append(service["host"])
            if not hosts and isinstance(provider.get("domain"), str):
                hosts.append(provider["domain"])
            found.update(h for h in (_netloc(x) for x in hosts) if h)
        return found
    raise ValueError("neither a ProviderInfo list nor a {federation, servers} document")


class TrustedProviders:
    """The current set of trusted providers, kept fresh from a file and/or a URL."""

    def __init__(
        self,
        *,
        static: Iterable[str] = (),
        file: Path | None = None,
        url: str | None = None,
        refresh_s: float = 300.0,
    ) -> None:
        self.static = {h.lower() for h in static}
        self.file = file
        self.url = url
        self.refresh_s = refresh_s
        self._from_file: set[str] = set()
        self._from_url: set[str] = set()
        self._file_mtime: float | None = None

    def _reload_file(self) -> None:
        if self.file is None:
            return
        try:
            mtime = self.file.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._file_mtime:
            return
        try:
            self._from_file = parse_directory(self.file.read_bytes())
            self._file_mtime = mtime
            log.info("trusted directory %s: %d providers", self.file, len(self._from_file))
        except (OSError, ValueError) as exc:
            log.warning("trusted directory %s not loaded: %s", self.file, exc)

    def is_trusted(self, host: str) -> bool:
        self._reload_file()
        host = host.lower()
        return host in self.static or host in self._from_file or host in self._from_url

    def hosts(self) -> set[str]:
        self._reload_file()
        return self.static | self._from_file | self._from_url

    async def refresh_url(self, session: aiohttp.ClientSession) -> None:
        if self.url is None:
            return
        try:
            async with session.get(self.url, timeout=aiohttp.ClientTimeout(total=30)) as resp:
                if resp.status != 200:
                    raise ValueError(f"answered {resp.status}")
                raw = await resp.content.read(MAX_DIRECTORY_BYTES)
            self._from_url = parse_directory(raw)
            log.info("trusted directory %s: %d providers", self.url, len(self._from_url))
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            log.warning("trusted directory %s not refreshed: %s", self.url, exc)

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Refresh the URL directory forever (cancel to stop)."""
        while True:
            await self.refresh_url(session)
            with contextlib.suppress(TimeoutError):
                await asyncio.sleep(self.refresh_s)
