"""``transferd cp``: a one-shot verified copy with the streaming mover, no daemon.

    transferd cp SRC DST [--checksum ALG[:VALUE]] [--streams N] [--chunk-size SIZE]
                 [--header 'Name: value']... [--verify MODE] [--overwrite]

SRC and DST are paths or file://, http(s)://, dav(s):// URLs.  The resume
manifest is a JSON sidecar beside the destination's ``.part`` (for a WebDAV
destination, in ``$XDG_CACHE_HOME/transferd/cp/``, with its chunked or TUS upload
session), so running the same command again after an interruption (even
``kill -9``) sends only the missing chunks or bytes.  A folder source copies
every file under it, keeping relative paths, several files at a time.  Header
values are secrets: they are sent, never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from policies.chunking import ChunkPolicy
from transferd import errors
from workers.stream import checksums
from workers.stream.base import Entry, HeaderProvider, Source, SourceInfo
from workers.stream.endpoints import open_sink, open_source, scheme_of
from workers.stream.engine import VERIFY_MODES, CopyResult, copy_file, expand
from workers.stream.local import path_of, url_of
from workers.stream.manifest import SidecarManifestStore, sidecar_path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELED = 130

PARALLEL_FILES = 16

EXAMPLES = """examples:
  transferd cp /data/L123_SB000.tar /scratch/
  transferd cp https://archive.example.org/L123/SB000.tar ./SB000.tar --checksum adler32:0a1b2c3d
  transferd cp davs://dav.example.org/share/run42/ /scratch/run42/ \\
      --header 'Authorization: Bearer …'
"""

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def chunk_policy(streams: int | None, chunk_size_bytes: int | None) -> ChunkPolicy:
    """The default policy with the command line's --streams / --chunk-size applied.

    A chunk size below the default minimum lowers the minimum too, so it is honoured.
    """
    policy_args: dict[str, int] = {}
    if streams is not None:
        policy_args["max_streams"] = streams
    if chunk_size_bytes is not None:
        policy_args["chunk_size_bytes"] = chunk_size_bytes
        policy_args["min_chunk_bytes"] = min(chunk_size_bytes, ChunkPolicy.min_chunk_bytes)
    return ChunkPolicy(**policy_args)


def parse_size(text: str) -> int:
    """Bytes from "1048576", "64M", "64MiB", "1G", "512k" (binary units)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m or int(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a positive size: {text!r} (e.g. 64M, 1G)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def parse_header(text: str) -> tuple[str, str]:
    """("Name", "value") from "Name: value"; the value never appears in an error."""
    name, sep, value = text.partition(":")
    if not sep or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name.strip()):
        raise argparse.ArgumentTypeError("a header must look like 'Name: value'")
    return name.strip(), value.strip()


def _checksum_spec(text: str) -> str:
    try:
        return str(checksums.parse_spec(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="file or folder: path or URL")
    parser.add_argument("destination", metavar="DST", help="path or URL (a folder for folders)")
    parser.add_argument("--checksum", type=_checksum_spec, default=None, metavar="ALG[:VALUE]",
                        help="algorithm to verify and report (adler32, crc32c, crc32, md5, "
                             "sha256, sha1), with the expected value if known; default adler32")
    parser.add_argument("--streams", type=_positive_int, default=None, metavar="N",
                        help="parallel ranged reads per file (default 4)")
    parser.add_argument("--chunk-size", type=parse_size, default=None, metavar="SIZE",
                        help="chunk size, e.g. 16M, 64M, 1G (default 64M)")
    parser.add_argument("--header", type=parse_header, action="append", default=[],
                        metavar="'NAME: VALUE'", help="extra request header (repeatable)")
    parser.add_argument("--verify", choices=VERIFY_MODES, default="both",
                        help="compare with the requested value and/or the source's checksum")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a destination file that already exists")
    parser.add_argument("--parallel-files", type=_positive_int, default=PARALLEL_FILES,
                        metavar="N", help=f"files copied at once from a folder ({PARALLEL_FILES})")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="report reused chunks, bytes fetched and rate on stderr")


def build_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``cp`` subcommand to an argparse ``subparsers`` object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "cp",
        help="copy a file or folder once, verified and resumable, without the daemon",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _as_url(text: str) -> str:
    return text if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text) else url_of(text)


def redact_url(url: str) -> str:
    """``url`` without a password in its userinfo."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _display(url: str) -> str:
    return str(path_of(url)) if scheme_of(url) == "file" else redact_url(url)


def _join(base_url: str, relative_path: str) -> str:
    """``base_url`` (a folder) + a "/"-separated relative path, each segment quoted."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/") + "/" + "/".join(quote(s) for s in relative_path.split("/"))
    return urlunsplit(parts._replace(path=path))


@dataclass
class _Options:
    checksum: str | None
    verify: str
    overwrite: bool
    policy: ChunkPolicy
    verbose: bool
    secrets: tuple[str, ...]


class _Runner:
    """One ``cp`` invocation: expand the source, copy each file, print each result."""

    def __init__(self, opts: _Options, session: aiohttp.ClientSession | None,
                 headers: HeaderProvider, cancel: asyncio.Event) -> None:
        self.opts = opts
        self.session = session
        self.headers = headers
        self.cancel = cancel

    def say(self, text: str, *, err: bool = False) -> None:
        for secret in self.opts.secrets:
            if secret:
                text = text.replace(secret, "***")
        print(text, file=sys.stderr if err else sys.stdout, flush=True)

    async def copy_one(self, source: Source, dst_url: str,
                       info: SourceInfo | None = None) -> int:
        sink = open_sink(dst_url, self.session, self.headers, self.opts.overwrite,
                         parents_may_be_links=True)
        manifest = SidecarManifestStore(
            sidecar_path(path_of(dst_url)) if scheme_of(dst_url) == "file"
            else await asyncio.to_thread(remote_sidecar_path, dst_url)
        )
        try:
            result = await copy_file(
                source, sink, expected_checksum=self.opts.checksum, verify=self.opts.verify,
                manifest=manifest, policy=self.opts.policy, cancel=self.cancel, info=info,
            )
        except errors.Canceled:
            await sink.abort(keep_partial=True)
            self.say(f"transferd cp: canceled {_display(dst_url)}; run the same command "
                     "again to resume", err=True)
            return EXIT_CANCELED
        except errors.TransferError as exc:
            await sink.abort(keep_partial=True)
            self.say(f"transferd cp: {_display(source.url)}: {exc.reason}", err=True)
            return EXIT_FAILED
        except (aiohttp.ClientError, OSError) as exc:
            await sink.abort(keep_partial=True)
            self.say(f"transferd cp: {_display(source.url)}: {type(exc).__name__}: {exc}",
                     err=True)
            return EXIT_FAILED
        self.say(f"{result.checksum}  {_display(dst_url)}")
        if self.opts.verbose:
            self._report(result)
        return EXIT_OK

    def _report(self, r: CopyResult) -> None:
        rate_mbps = r.bytes_fetched / r.elapsed_s / 1e6 if r.elapsed_s > 0 else 0.0
        self.say(f"  {r.size} bytes, fetched {r.bytes_fetched}, reused {r.chunks_reused} "
                 f"chunk(s), {r.elapsed_s:.2f} s, {rate_mbps:.1f} MB/s", err=True)

    async def run(self, src_url: str, dst_url: str, parallel_files: int) -> int:
        source = open_source(src_url, self.session, self.headers)
        try:
            entries = await source.list()
            if entries is None:
                if dst_url.endswith("/") or await _is_local_dir(dst_url):
                    (entry,) = await expand(source)
                    dst_url = _join(dst_url, entry.relative_path)
                return await self.copy_one(source, dst_url)
            if self.opts.checksum and ":" in self.opts.checksum:
                self.say("transferd cp: --checksum with a value applies to one file, "
                         "not a folder", err=True)
                return EXIT_USAGE
            return await self._copy_folder(source, entries, dst_url, parallel_files)
        finally:
            await source.aclose()

    async def _copy_folder(self, source: Source, entries: Sequence[Entry], dst_url: str,
                           parallel_files: int) -> int:
        limit = asyncio.Semaphore(parallel_files)

        async def one(entry: Entry) -> int:
            async with limit:
                if self.cancel.is_set():
                    return EXIT_CANCELED
                child_source = self._child(source, entry)
                try:
                    return await self.copy_one(child_source, _join(dst_url, entry.relative_path),
                                               entry.info)
                finally:
                    if child_source is not source:
                        await child_source.aclose()

        codes = await asyncio.gather(*(one(e) for e in entries))
        if not entries:
            self.say(f"transferd cp: {_display(source.url)} is an empty folder", err=True)
        return max(codes, default=EXIT_OK)

    def _child(self, source: Source, entry: Entry) -> Source:
        child = getattr(source, "child", None)
        if child is not None:
            made: Source = child(entry.relative_path)
            return made
        return open_source(entry.info.url, self.session, self.headers)


def remote_sidecar_path(dst_url: str) -> Path:
    """Where ``cp`` keeps the manifest (and TUS upload URL) for a remote destination:
    ``$XDG_CACHE_HOME/transferd/cp/`` (``~/.cache`` by default), named by a hash of the
    URL so it holds no credential.  The folder is made here."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(cache) / "transferd" / "cp"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / (hashlib.sha256(dst_url.encode()).hexdigest()[:32] + ".manifest")


async def _is_local_dir(url: str) -> bool:
    return scheme_of(url) == "file" and await asyncio.to_thread(os.path.isdir, path_of(url))


def _new_session() -> aiohttp.ClientSession:
    try:
        factory = importlib.import_module("workers.stream.http").new_session
    except (ImportError, AttributeError):
        return aiohttp.ClientSession(auto_decompress=False)
    session: aiohttp.ClientSession = factory()
    return session


async def _main(args: argparse.Namespace) -> int:
    src_url, dst_url = _as_url(args.source), _as_url(args.destination)
    if args.destination.endswith("/") and not dst_url.endswith("/"):
        dst_url += "/"
    header_map: Mapping[str, str] = dict(args.header)
    opts = _Options(args.checksum, args.verify, args.overwrite,
                    chunk_policy(args.streams, args.chunk_size),
                    args.verbose, tuple(v for _, v in args.header))

    async def headers() -> Mapping[str, str]:
        return header_map

    cancel = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, cancel.set)
    remote = any(scheme_of(u) != "file" for u in (src_url, dst_url))
    session = _new_session() if remote else None
    runner = _Runner(opts, session, headers, cancel)
    try:
        return await runner.run(src_url, dst_url, args.parallel_files)
    except errors.TransferError as exc:
        runner.say(f"transferd cp: {exc.reason}", err=True)
        return EXIT_FAILED
    except (aiohttp.ClientError, OSError) as exc:
        runner.say(f"transferd cp: {type(exc).__name__}: {exc}", err=True)
        return EXIT_FAILED
    finally:
        if session is not None:
            await session.close()


def run(args: argparse.Namespace) -> int:
    """Run ``cp`` with parsed arguments; returns the exit code."""
    return asyncio.run(_main(args))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workers.stream.cp SRC DST ...`` (the same as ``transferd cp``)."""
    parser = argparse.ArgumentParser(
        prog="transferd cp", description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
