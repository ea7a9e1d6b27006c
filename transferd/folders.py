"""Folder sources of a submitted job, expanded into one file per file before anything is stored.

A file spec whose source and destination both end in ``/`` (``is_folder``)
names a folder: an http(s)/dav(s) collection listed by recursive PROPFIND, or
a file:// directory walked.  Each file found becomes one spec with its
relative path kept under the destination, its size and its declared checksum
from the listing, and the spec's tokens and metadata.  The API does this
between validation and the store's one atomic write, so a job is stored whole
or not at all, and every expanded destination goes through the tenant's root
confinement like a submitted one.

Bounded by ``FolderLimits``: one time limit for all the folders of a request
and a maximum number of files for the whole job.  Refusals are problems that
name the folder's field (``files[2].source``):

    the folder is missing, refuses the listing, is not a folder,
    is empty, or holds too many files                       → 422
    the server fails (5xx, connection refused or reset)     → 502
    the listing takes longer than the time limit            → 504

A walk of a very large local directory runs in a thread that cannot be
interrupted; past the time limit its result is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

import aiohttp

from transferd.errors import AuthError, NotFound, RetryableError, TransferError
from transferd.models import FileSpec, JobRequest
from transferd.paths import Confiner, PathNotAllowed
from transferd.problem import FieldError, Problem
from transferd.validation import MAX_FILES, check_url, is_folder, parse_checksum

__all__ = ["FolderLimits", "expand_folders"]

# the checksum a listing declares that is taken as the file's own, in order of preference
_PREFERRED = ("adler32", "crc32c", "md5", "sha256", "sha1", "crc32")


@dataclass(frozen=True)
class FolderLimits:
    """How far one submission may list: seconds for all its folders, files for the job."""

    timeout_s: float = 60.0
    max_files: int = MAX_FILES


@dataclass(frozen=True)
class _Expanded:
    where: str  # "files[i]" of the request
    relative_path: str | None  # None: the spec as submitted
    spec: FileSpec


def _refused(status: int, kind: str, field: str, message: str) -> Problem:
    return Problem(status, f"{field}: {message}", kind=kind, errors=[FieldError(field, message)])


def _checksum(asked: str | None, declared: Mapping[str, str]) -> str | None:
    """The file's checksum: the listing's value of the asked algorithm, else the asked
    algorithm alone; with none asked, the listing's preferred value (or none)."""
    if asked is not None:
        candidates: Sequence[str] = (asked,)
    else:
        candidates = [alg for alg in _PREFERRED if alg in declared]
    for alg in candidates:
        if alg in declared:
            try:
                return parse_checksum(f"{alg}:{declared[alg]}")
            except ValueError:
                continue  # a value we cannot compare: verify against nothing declared
    return asked


def _join(base: str, relative_path: str) -> str:
    return base + quote(relative_path)


async def _list(spec: FileSpec, field: str, session: aiohttp.ClientSession,
                timeout_s: float) -> list[tuple[str, FileSpec]]:
    from workers.stream.endpoints import open_source  # the mover's endpoints, loaded on use

    token = spec.source_token

    async def headers() -> Mapping[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    source = open_source(spec.source, session, headers)
    try:
        async with asyncio.timeout(timeout_s):
            entries = await source.list()
    except TimeoutError:
        raise _refused(504, "folder-timeout", field,
                       f"listing the folder took longer than {timeout_s:.0f} s") from None
    except NotFound as exc:
        raise _refused(422, "folder-not-found", field, f"no such folder: {exc.reason}") from None
    except AuthError as exc:
        raise _refused(422, "folder-refused", field,
                       f"the server refused the listing: {exc.reason}") from None
    except RetryableError as exc:
        raise _refused(502, "folder-unavailable", field,
                       f"the server could not list the folder: {exc.reason}") from None
    except TransferError as exc:
        raise _refused(422, "folder-unlistable", field,
                       f"the folder cannot be listed: {exc.reason}") from None
    finally:
        await source.aclose()
    if entries is None:
        raise _refused(422, "not-a-folder", field,
                       "not a folder (a collection PROPFIND lists, or a directory)")
    if not entries:
        raise _refused(422, "empty-folder", field, "the folder holds no files")
    out: list[tuple[str, FileSpec]] = []
    for entry in entries:
        rel = entry.relative_path
        if any(part in ("", ".", "..") for part in rel.split("/")):
            raise _refused(422, "folder-unlistable", field,
                           f"the listing names an unsafe path {rel!r}")
        source_url = _join(spec.source, rel)
        destination_url = _join(spec.destination, rel)
        for name, url in (("source", source_url), ("destination", destination_url)):
            if (why := check_url(url)) is not None:
                where = field.rpartition(".")[0] + f".{name}"
                raise _refused(422, "folder-unlistable", where, f"for {rel!r} listed: {why}")
        out.append((rel, replace(spec, source=source_url, destination=destination_url,
                                 size=entry.info.size,
                                 checksum=_checksum(spec.checksum, entry.info.checksums))))
    return out


def _confine(expanded: list[_Expanded], roots: Sequence[Path],
             sources_too: bool) -> list[FieldError]:
    """Root confinement for every file a folder gave (the folders themselves were checked);
    their file:// destinations are resolved in place, as the API does for plain files."""
    errors: list[FieldError] = []
    confine = Confiner(roots)
    for n, item in enumerate(expanded):
        if item.relative_path is None:
            continue
        checks = [("destination", item.spec.destination)]
        if sources_too:
            checks.append(("source", item.spec.source))
        for name, url in checks:
            try:
                resolved = confine.check(url)
            except PathNotAllowed as exc:
                errors.append(FieldError(f"{item.where}.{name}", f"{item.relative_path}: {exc}"))
                continue
            if name == "destination" and resolved is not None:
                expanded[n] = replace(item, spec=replace(
                    item.spec, destination=Path(resolved).as_uri()))
        if len(errors) >= 100:
            break
    return errors


async def expand_folders(
    request: JobRequest,
    session: aiohttp.ClientSession,
    *,
    roots: Sequence[Path],
    confine_sources: bool,
    limits: FolderLimits = FolderLimits(),
) -> JobRequest:
    """``request`` with each folder spec replaced by the files under it; raises Problem."""
    deadline = time.monotonic() + limits.timeout_s
    plain = sum(1 for f in request.files if not is_folder(f.source, f.destination))
    total = plain
    expanded: list[_Expanded] = []
    for i, spec in enumerate(request.files):
        where = f"files[{i}]"
        if not is_folder(spec.source, spec.destination):
            expanded.append(_Expanded(where, None, spec))
            continue
        left_s = max(0.0, deadline - time.monotonic())
        found = await _list(spec, f"{where}.source", session, left_s)
        total += len(found)
        if total > limits.max_files:
            raise _refused(422, "too-many-files", f"{where}.source",
                           f"the job would hold more than {limits.max_files} files with "
                           f"this folder's {len(found)}; submit its sub-folders as jobs")
        expanded += [_Expanded(where, rel, child) for rel, child in found]
    errors = await asyncio.to_thread(_confine, expanded, roots, confine_sources)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise Problem(400, f"{errors[0].field}: {errors[0].message}{more}",
                      kind="path-not-allowed", errors=errors)
    return replace(request, files=[item.spec for item in expanded])
