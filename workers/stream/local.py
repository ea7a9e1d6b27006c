"""file:// endpoints: a ranged-read source and a ``.part``-then-rename sink.

Blocking calls (read, pwrite, fsync, fallocate) run in worker threads so the
event loop keeps serving the other chunks, the heartbeat and cancellation.
The sink never lets a partial or unverified file appear at the final name: it
writes ``<name>.part`` and ``os.replace``s it only on ``commit()``, which the
engine calls after the checksum matched.

Nor does the sink follow a symbolic link anywhere along the destination path:
it walks from ``/`` one directory fd at a time (``O_NOFOLLOW``, see
``workers.stream.nofollow``), creates missing parents at those fds, and opens,
renames and removes names only relative to the parent's fd.  The file:// check
at submission (``transferd.paths``) cannot see a link planted inside an allowed
root later; such a link makes the write fail with a ``PermanentError`` instead
of leading it outside the root.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import os
import stat as stat_mod
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from transferd import errors
from workers.stream.base import Entry, SourceInfo
from workers.stream.manifest import sidecar_path
from workers.stream.nofollow import DIR_FLAGS, LinkInPath, open_directory, open_file_at

READ_PIECE_BYTES = 4 * 1024 * 1024
# pwritev gathers pieces up to this size into one system call per thread hop.
WRITE_BATCH_BYTES = 2 * 1024 * 1024
_IOV_MAX = 1024
# Files smaller than this are not preallocated: they are written in one or two
# system calls, so a full disk shows up at once anyway, and fallocate is one
# more metadata update per file for nothing.
PREALLOCATE_MIN_BYTES = 8 * 1024 * 1024
# Written ranges are handed to the kernel's write-back at once
# (posix_fadvise DONTNEED starts it and drops the pages once clean), so the
# fsync before the rename finds little left to write and a big file does not
# leave gigabytes of dirty page cache behind.
FADVISE_MIN_BYTES = 1024 * 1024

# Called with each batch of pieces in the write thread, before it is written.
BatchHook = Callable[[list[bytes]], None]

# Blocking file-system calls (open, pwrite, fdatasync, rename, fsync of a
# directory) spend their time waiting on the disk, not on a CPU: they get
# their own pool, large enough that many files committing at once do not queue
# behind each other (asyncio's default pool has only cpu_count + 4 threads,
# shared with the hashing).
IO_THREADS = 64
_io_pool: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _io_pool
    if _io_pool is None:
        _io_pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="transferd-io")
    return _io_pool


async def in_io_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in the blocking-I/O pool."""
    return await asyncio.get_running_loop().run_in_executor(_pool(), fn, *args)


def path_of(url: str) -> Path:
    """The local path of a file:// URL (``file:///a/b`` or ``file://localhost/a/b``)."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise errors.PermanentError(f"not a file:// URL: {url}")
    if parts.netloc not in ("", "localhost"):
        raise errors.PermanentError(f"file:// URL names a remote host {parts.netloc!r}: {url}")
    return Path(unquote(parts.path))


def url_of(path: str | os.PathLike[str]) -> str:
    """The file:// URL of a local path."""
    return "file://" + quote(os.path.abspath(path))


def _os_error(exc: OSError, what: str) -> errors.TransferError:
    """Translate an OSError into the transfer error tree with one clear sentence."""
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return errors.DiskFull(f"no space left to {what}: {exc.strerror}")
    if exc.errno == errno.ENOENT:
        return errors.NotFound(f"cannot {what}: no such file or directory")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return errors.PermanentError(f"cannot {what}: {exc.strerror}")
    if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG):
        return errors.PermanentError(f"cannot {what}: {exc.strerror}")
    return errors.RetryableError(f"cannot {what}: {exc.strerror or exc}")


def _info(url: str, st: os.stat_result) -> SourceInfo:
    # The inode and nanosecond mtime change when a file is replaced or rewritten,
    # which is what the resume validator must notice.
    return SourceInfo(
        url=url,
        size=st.st_size,
        etag=f"{st.st_ino:x}-{st.st_mtime_ns:x}",
        last_modified=formatdate(st.st_mtime, usegmt=True),
        accepts_ranges=True,
    )


class FileSource:
    """Reads a local file in large pieces; lists a local folder recursively."""

    rtt_s: float | None = None  # no network in between

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = path_of(url)

    async def stat(self) -> SourceInfo:
        try:
            st = await asyncio.to_thread(os.stat, self.path)
        except OSError as exc:
            raise _os_error(exc, f"read {self.path}") from exc
        return _info(self.url, st)

    async def read(self, info: SourceInfo, offset: int, length: int | None) -> AsyncIterator[bytes]:
        try:
            fd = await in_io_thread(os.open, self.path, os.O_RDONLY)
        except OSError as exc:
            raise _os_error(exc, f"read {self.path}") from exc
        try:
            st = os.fstat(fd)
            if _info(self.url, st).validator != info.validator:
                raise errors.SourceChanged(f"{self.path} changed since it was examined")
            remaining = length
            pos = offset
            while remaining is None or remaining > 0:
                want = READ_PIECE_BYTES if remaining is None else min(READ_PIECE_BYTES, remaining)
                try:
                    piece = await in_io_thread(os.pread, fd, want, pos)
                except OSError as exc:
                    raise _os_error(exc, f"read {self.path}") from exc
                if not piece:
                    if remaining is not None:
                        raise errors.SourceChanged(
                            f"{self.path} ended early at byte {pos} (was it truncated?)"
                        )
                    return
                pos += len(piece)
                if remaining is not None:
                    remaining -= len(piece)
                yield piece
        finally:
            os.close(fd)

    async def list(self) -> list[Entry] | None:
        return await asyncio.to_thread(self._walk)

    def _walk(self) -> builtins.list[Entry] | None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise _os_error(exc, f"read {self.path}") from exc
        if not stat_mod.S_ISDIR(st.st_mode):
            return None
        entries: builtins.list[Entry] = []
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(dirpath) / name
                try:
                    fst = os.stat(full)
                except OSError:
                    continue  # vanished while walking; it is not ours to copy
                if not stat_mod.S_ISREG(fst.st_mode):
                    continue
                rel = full.relative_to(self.path).as_posix()
                entries.append(Entry(rel, _info(url_of(full), fst)))
        return entries

    async def aclose(self) -> None:
        return None


class _DestinationExists(Exception):
    pass


class FileSink:
    """Writes ``<name>.part`` at chunk offsets and renames it into place on commit."""

    random_access = True
    # write_chunk/write_stream take ``before_write`` (see the engine).
    hashes_while_writing = True

    def __init__(self, url: str, *, overwrite: bool = False,
                 parents_may_be_links: bool = False) -> None:
        self.url = url
        # ``transferd cp`` writes where its user points, links and all; the daemon's
        # destinations were resolved inside the tenant's roots at submission, so a
        # link along them now was planted since and is refused.
        self.parents_may_be_links = parents_may_be_links
        self.path = path_of(url)
        self.part_path = self.path.with_name(self.path.name + ".part")
        self.overwrite = overwrite
        # True once prepare() kept an earlier attempt's .part (see base.Sink).
        self.resumed = False
        self._fd: int | None = None
        # The parent directory, opened without following links in prepare(): the
        # rename and the clean-up use it, so a link planted meanwhile is never followed.
        self._dir_fd: int | None = None
        self._size: int | None = None
        # Thread calls using the fd; abort() waits for them so that closing the
        # fd can never redirect a late pwrite into whatever file reuses its number.
        self._ops: set[asyncio.Future[None]] = set()

    async def exists(self) -> bool:
        return bool(await in_io_thread(self.path.exists))

    async def prepare(self, size: int | None, resume_key: str | None) -> None:
        try:
            self._fd, self.resumed = await in_io_thread(self._open, size, resume_key)
        except _DestinationExists:
            raise errors.PermanentError(f"destination exists: {self.path}") from None
        except LinkInPath as exc:
            raise self._link_refused(exc) from None
        except OSError as exc:
            raise _os_error(exc, f"write {self.part_path}") from exc
        self._size = size

    def _link_refused(self, exc: LinkInPath) -> errors.PermanentError:
        return errors.PermanentError(
            f"refusing to write {self.path}: {exc.args[0]} is a symbolic link, and the "
            "destination is never written through one"
        )

    def _open(self, size: int | None, resume_key: str | None) -> tuple[int, bool]:
        # One thread hop: the parents, the existence check and the open.
        if self.parents_may_be_links:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            dir_fd = os.open(self.path.parent, DIR_FLAGS & ~os.O_NOFOLLOW)
        else:
            dir_fd = open_directory(self.path.parent, create=True)
        try:
            fd, keep = self._open_part(dir_fd, resume_key)
        except BaseException:
            os.close(dir_fd)
            raise
        if self._dir_fd is not None:
            os.close(self._dir_fd)
        self._dir_fd = dir_fd
        try:
            if size is not None:
                if keep and os.fstat(fd).st_size > size:
                    os.ftruncate(fd, size)
                if size >= PREALLOCATE_MIN_BYTES:
                    self._preallocate(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return fd, keep

    def _check_final_name(self, dir_fd: int) -> bool:
        """Whether the final name exists; ``LinkInPath`` when it is a link."""
        try:
            st = os.lstat(self.path.name, dir_fd=dir_fd)
        except FileNotFoundError:
            return False
        if stat_mod.S_ISLNK(st.st_mode):
            # Even with overwrite: the caller meant the file, not the link to it.
            raise LinkInPath(self.path)
        return True

    def _open_part(self, dir_fd: int, resume_key: str | None) -> tuple[int, bool]:
        """The ``.part``'s fd in ``dir_fd``, and whether it is an earlier attempt's."""
        if self._check_final_name(dir_fd) and not self.overwrite:
            raise _DestinationExists
        name = self.part_path.name
        try:
            old = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            old = None
        if old is not None and stat_mod.S_ISLNK(old.st_mode):
            raise LinkInPath(self.part_path)
        if resume_key is not None and old is not None and stat_mod.S_ISREG(old.st_mode):
            # An earlier attempt's .part is kept for the engine to resume from,
            # unless it is (now) a hard link: writing it would change another name's file.
            fd = -1
            with contextlib.suppress(FileNotFoundError):
                fd = open_file_at(dir_fd, name, os.O_RDWR, self.part_path)
            if fd >= 0:
                st = os.fstat(fd)
                if stat_mod.S_ISREG(st.st_mode) and st.st_nlink == 1:
                    return fd, True
                os.close(fd)
        if old is not None:
            # Removing the name leaves whatever else it names (a hard link's
            # other names, a device) untouched; O_EXCL then makes a new file.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
        return open_file_at(dir_fd, name, flags, self.part_path), False

    @staticmethod
    def _preallocate(fd: int, size: int) -> None:
        """Reserve the space now so a full disk fails at the start, not at 90 %."""
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise
            # EOPNOTSUPP/EINVAL: the file system cannot preallocate; a sparse file will do.
            os.ftruncate(fd, size)

    def _require_fd(self) -> int:
        if self._fd is None:
            raise RuntimeError("FileSink used before prepare()")
        return self._fd

    async def write_chunk(self, index: int, offset: int, data: AsyncIterator[bytes], *,
                          before_write: BatchHook | None = None) -> None:
        """Write one chunk at ``offset``; ``before_write(batch)`` (e.g. the
        engine's hashers) runs in the same thread call as each batch's pwritev."""
        # No fdatasync per chunk: on ext4 it makes later writes into the
        # preallocated extents several times slower.  A chunk a crash lost is
        # caught on resume instead, where the engine re-checks each reused
        # chunk's crc32c against the .part before trusting it.
        await self._write_from(offset, data, before_write)

    async def write_stream(self, data: AsyncIterator[bytes], *,
                           before_write: BatchHook | None = None) -> None:
        await self._write_from(0, data, before_write)

    async def _write_from(self, offset: int, data: AsyncIterator[bytes],
                          before_write: BatchHook | None = None) -> None:
        fd = self._require_fd()
        batch: list[bytes] = []
        batch_bytes = 0
        pos = offset
        # Big files hand each written range to write-back at once (see
        # FADVISE_MIN_BYTES); small ones are fdatasync'ed a moment later anyway.
        advise = self._size is None or self._size >= PREALLOCATE_MIN_BYTES
        last = (offset, 0)
        async for piece in data:
            if not piece:
                continue
            batch.append(piece)
            batch_bytes += len(piece)
            if batch_bytes >= WRITE_BATCH_BYTES or len(batch) >= _IOV_MAX:
                await self._pwritev(fd, batch, pos, last if advise else None, before_write)
                last = (pos, batch_bytes)
                pos += batch_bytes
                batch, batch_bytes = [], 0
        if batch:
            await self._pwritev(fd, batch, pos, last if advise else None, before_write)

    async def _pwritev(self, fd: int, batch: list[bytes], offset: int,
                       previous: tuple[int, int] | None,
                       before_write: BatchHook | None = None) -> None:
        try:
            await self._in_thread(_pwritev_all, fd, batch, offset, previous, before_write)
        except OSError as exc:
            raise _os_error(exc, f"write {self.part_path}") from exc

    async def _in_thread(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` in a thread; a cancelled caller stops waiting, abort() still waits."""
        fut = asyncio.ensure_future(in_io_thread(fn, *args))
        self._ops.add(fut)
        fut.add_done_callback(self._ops.discard)
        await asyncio.shield(fut)

    async def read_back(self) -> AsyncIterator[bytes]:
        fd = self._require_fd()
        pos = 0
        while True:
            try:
                piece = await in_io_thread(os.pread, fd, READ_PIECE_BYTES, pos)
            except OSError as exc:
                raise _os_error(exc, f"read back {self.part_path}") from exc
            if not piece:
                return
            pos += len(piece)
            yield piece

    async def commit(self) -> None:
        fd = self._require_fd()
        try:
            await in_io_thread(self._commit, fd)
        except LinkInPath as exc:
            raise self._link_refused(exc) from None
        except OSError as exc:
            raise _os_error(exc, f"rename {self.part_path} to {self.path.name}") from exc
        # The rename is durable once its directory is: concurrent commits into
        # one directory share a directory fsync, each waiting for one that
        # started after its own rename.
        await sync_directory(self.path.parent)

    def _commit(self, fd: int) -> None:
        dir_fd = self._dir_fd
        if dir_fd is None:
            raise RuntimeError("FileSink committed before prepare()")
        st = os.fstat(fd)
        if self._size is not None and st.st_size != self._size:
            raise OSError(errno.EIO, f"partial file has {st.st_size} bytes")
        # The data (and the size) must be on disk before the name points at it.
        os.fdatasync(fd)
        # Forgotten at once: abort() after a failure below must not close the
        # number again, which another thread's open may have reused by then.
        self._fd = None
        os.close(fd)
        if self._check_final_name(dir_fd) and not self.overwrite:
            raise FileExistsError(errno.EEXIST, "destination appeared during the copy")
        # rename() follows no link at either name, and both are taken in the
        # directory opened in prepare(): a link planted after the check above
        # is replaced itself, nothing outside is written.
        os.replace(self.part_path.name, self.path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sidecar_path(self.path).name, dir_fd=dir_fd)
        self._dir_fd = None
        os.close(dir_fd)

    async def abort(self, *, keep_partial: bool) -> None:
        fd, self._fd = self._fd, None
        if self._ops:
            await asyncio.gather(*self._ops, return_exceptions=True)
        await in_io_thread(self._abort, fd, keep_partial)

    def _abort(self, fd: int | None, keep_partial: bool) -> None:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        dir_fd, self._dir_fd = self._dir_fd, None
        try:
            if keep_partial:
                return
            if dir_fd is None:  # never prepared: an earlier attempt's partial may be there
                try:
                    dir_fd = (os.open(self.path.parent, DIR_FLAGS & ~os.O_NOFOLLOW)
                              if self.parents_may_be_links
                              else open_directory(self.path.parent, create=False))
                except (OSError, LinkInPath):
                    return  # no directory reachable without a link holds a partial of ours
            side = sidecar_path(self.path).name
            for name in (self.part_path.name, side, side + ".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)
        finally:
            if dir_fd is not None:
                os.close(dir_fd)


class _DirSync:
    """Group commit of one directory's fsync: waiters join the next round."""

    def __init__(self) -> None:
        self.next: asyncio.Future[None] | None = None
        self.running = False
        self.task: asyncio.Task[None] | None = None


_dir_syncs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _DirSync]] = (
    weakref.WeakKeyDictionary()
)


async def sync_directory(directory: Path) -> None:
    """Return once an fsync of ``directory`` that started after this call has finished.

    Many files renamed into one directory at about the same time share one
    fsync instead of paying one each; none returns before its rename is durable.
    """
    loop = asyncio.get_running_loop()
    syncs = _dir_syncs.setdefault(loop, {})
    key = str(directory)
    state = syncs.setdefault(key, _DirSync())
    if state.next is None:
        state.next = loop.create_future()
    fut = state.next
    if not state.running:
        state.running = True
        state.task = loop.create_task(_run_dir_syncs(key, state, syncs))
    await asyncio.shield(fut)


async def _run_dir_syncs(key: str, state: _DirSync, syncs: dict[str, _DirSync]) -> None:
    try:
        while state.next is not None:
            fut, state.next = state.next, None
            try:
                await in_io_thread(_fsync_dir, Path(key))
            except BaseException as exc:
                # Cancelled (the loop is closing): nobody may wait forever.
                for waiting in (fut, state.next):
                    if waiting is not None and not waiting.done():
                        waiting.set_exception(
                            errors.RetryableError(f"fsync of {key} did not finish ({exc!r})")
                        )
                state.next = None
                raise
            if not fut.done():
                fut.set_result(None)
    finally:
        state.running = False
        if syncs.get(key) is state:
            del syncs[key]


def _pwritev_all(fd: int, batch: list[bytes], offset: int,
                 previous: tuple[int, int] | None = None,
                 before_write: BatchHook | None = None) -> None:
    """pwritev every byte of ``batch`` at ``offset`` (short writes are retried).

    With ``previous`` (the range the last call wrote), start write-back of this
    range and let the kernel drop the previous one's pages once they are clean:
    the fsync before the rename then finds little left to do, and a big file
    does not fill the page cache with gigabytes of dirty pages.
    """
    if before_write is not None:
        before_write(batch)
    start, total = offset, sum(len(b) for b in batch)
    _pwritev(fd, batch, offset)
    if previous is not None and total >= FADVISE_MIN_BYTES:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, start, total, os.POSIX_FADV_DONTNEED)
            if previous[1]:
                os.posix_fadvise(fd, previous[0], previous[1], os.POSIX_FADV_DONTNEED)


def _pwritev(fd: int, batch: list[bytes], offset: int) -> None:
    views = [memoryview(b) for b in batch]
    while views:
        written = os.pwritev(fd, views, offset)
        if written <= 0:
            raise OSError(errno.EIO, "pwritev wrote nothing")
        offset += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written and views:
            views[0] = views[0][written:]


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
