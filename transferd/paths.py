"""Keep file:// URLs inside the directories a tenant was given.

A request names local paths as ``file:///abs/path`` (or ``file://localhost/abs/path``).
Such a path is accepted only when it lies inside one of the tenant's roots
after every symlink along it is resolved, so neither ``..`` nor a symlink
planted inside a root can lead a copy out of it.  URLs of other schemes are
not local paths and pass unchanged.

The check runs at submission; a symlink created afterwards is the mover's to
refuse (it opens the destination without following links).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote

__all__ = ["Confiner", "PathNotAllowed", "confine_destination", "file_url_path", "is_file_url"]


class PathNotAllowed(ValueError):
    """A file:// URL names a path outside the allowed roots, or is malformed; says why."""


def file_url_path(url: str) -> str:
    """The absolute, percent-decoded local path of a file:// URL; refuses anything ambiguous."""
    if not is_file_url(url):
        raise PathNotAllowed("not a file:// URL")
    rest = url[5:]
    if not rest.startswith("//"):
        raise PathNotAllowed("a file:// URL must hold an absolute path (file:///path)")
    if "?" in rest or "#" in rest:
        raise PathNotAllowed("a file:// URL must not carry '?' or '#'; percent-encode them")
    host, slash, encoded = rest[2:].partition("/")
    if host.lower() not in ("", "localhost"):
        raise PathNotAllowed("a file:// URL must name this machine (file:///path)")
    if not slash:
        raise PathNotAllowed("a file:// URL must hold an absolute path (file:///path)")
    try:
        path = "/" + unquote(encoded, errors="strict") if "%" in encoded else "/" + encoded
    except UnicodeDecodeError:
        raise PathNotAllowed("the path is not valid UTF-8 once percent-decoded") from None
    if "\x00" in path:
        raise PathNotAllowed("the path contains a NUL byte")
    if ".." in path.split("/"):
        raise PathNotAllowed("the path must not contain '..'")
    return path


def is_file_url(url: str) -> bool:
    return url[:5].lower() == "file:"


class Confiner:
    """Checks many file:// URLs against one set of roots, resolving each directory once.

    Build one per request (it caches what the file system looked like then).
    """

    def __init__(self, roots: Sequence[Path]) -> None:
        self._roots = [os.path.realpath(root).rstrip("/") + "/" for root in roots]
        self._dirs: dict[str, tuple[str, bool]] = {}  # dir → (its real path, exists)

    def _resolve(self, path: str) -> str:
        parent, name = os.path.split(path.rstrip("/") or "/")
        if name in ("", "."):
            return os.path.realpath(path)
        cached = self._dirs.get(parent)
        if cached is None:
            real_parent = os.path.realpath(parent)
            cached = self._dirs[parent] = (real_parent, os.path.isdir(real_parent))
        real_parent, parent_exists = cached
        joined = os.path.join(real_parent, name)
        if parent_exists and os.path.islink(joined):
            return os.path.realpath(joined)
        return joined

    def check(self, url: str) -> str | None:
        """As ``confine_destination``, returning the resolved path as a string."""
        if not is_file_url(url):
            return None
        path = file_url_path(url)
        if not self._roots:
            raise PathNotAllowed("no local directories are allowed for this tenant")
        # realpath resolves every existing component (dangling links included) and keeps
        # the missing tail literally, which is exactly "the longest existing prefix".
        resolved = self._resolve(path)
        for root in self._roots:
            if resolved.startswith(root) or resolved + "/" == root:
                return resolved
        raise PathNotAllowed("the path is outside the directories allowed for this tenant")


def confine_destination(url: str, roots: Sequence[Path]) -> Path | None:
    """The resolved local path of a file:// ``url`` inside one of ``roots``, or None.

    None means ``url`` is not a file:// URL, so there is nothing local to confine.
    Raises ``PathNotAllowed`` when the path is malformed, contains ``..``, or
    resolves (through symlinks of its longest existing prefix) outside every root.
    Touches the file system: call it off the event loop, and use one ``Confiner``
    for a batch.
    """
    resolved = Confiner(roots).check(url)
    return None if resolved is None else Path(resolved)
