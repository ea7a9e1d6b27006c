"""Open and create paths without following a symbolic link anywhere along them.

``open_directory`` walks from ``/`` one directory fd at a time, each component
opened at its parent's fd with ``O_DIRECTORY | O_NOFOLLOW``, and with
``create`` makes a missing component with ``mkdir`` at that fd (which never
follows a link in its last component either).  ``open_file_at`` then opens a
name relative to such an fd with ``O_NOFOLLOW``.  A caller that opens, renames
and removes names only relative to the fd it got this way never writes through
a link, even one planted after the path was checked: a link met on the way is
``LinkInPath`` naming it, never followed.

Hard links are not symbolic links and are not seen here; a caller that must
not write another name's file checks ``st_nlink`` itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_mod
from pathlib import Path

__all__ = ["DIR_FLAGS", "LinkInPath", "open_directory", "open_file_at"]


class LinkInPath(Exception):
    """A component of the destination path is a symbolic link; ``args[0]`` is its path."""


# A directory is opened without following a link in its last component (each
# earlier one was opened the same way).
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _is_link_at(dir_fd: int, name: str) -> bool:
    try:
        return stat_mod.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except FileNotFoundError:
        return False


def _open_dir_at(dir_fd: int, name: str, shown: Path) -> int:
    """The fd of directory ``name`` in ``dir_fd``; ``LinkInPath(shown)`` when it is a link."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        # O_DIRECTORY|O_NOFOLLOW on a link fails with ENOTDIR (or ELOOP): tell the
        # two cases apart, since only one of them is a file in the way.
        if exc.errno in (errno.ENOTDIR, errno.ELOOP) and _is_link_at(dir_fd, name):
            raise LinkInPath(shown) from None
        raise


def open_directory(directory: Path, *, create: bool) -> int:
    """An fd of ``directory`` reached from ``/`` without following any symbolic link.

    With ``create``, missing components are made one at a time at their
    parent's fd (``mkdir`` never follows a link in its last component either).
    """
    fd = os.open("/", DIR_FLAGS)
    try:
        walked = Path("/")
        for name in Path(os.path.abspath(directory)).parts[1:]:
            walked = walked / name
            try:
                child = _open_dir_at(fd, name, walked)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # a concurrent copy made it
                    os.mkdir(name, 0o777, dir_fd=fd)
                child = _open_dir_at(fd, name, walked)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file_at(dir_fd: int, name: str, flags: int, shown: Path) -> int:
    """``os.open`` of ``name`` in ``dir_fd`` that refuses a link with ``LinkInPath(shown)``."""
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LinkInPath(shown) from None
        raise
