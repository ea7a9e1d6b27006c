"""A command run on a pseudo-terminal, as a person runs it, keeping everything it draws.

``transferd top`` and ``transferd watch`` redraw in place only on a terminal (into a
pipe they write plain frames), so their tests read what they draw from a pty.
"""

from __future__ import annotations

import os
import pty
import subprocess
import termios
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["PtyCommand"]


class PtyCommand:
    """``args`` on a ``rows``×``cols`` pseudo-terminal (stdout, and stdin/stderr unless
    ``popen_args`` says otherwise); a thread keeps every byte it writes in ``raw``."""

    def __init__(self, args: list[str], env: Mapping[str, str], *, rows: int = 50,
                 cols: int = 140, **popen_args: Any) -> None:
        master, slave = pty.openpty()
        termios.tcsetwinsize(slave, (rows, cols))
        self._master = master
        self._out = bytearray()
        self._lock = threading.Lock()
        streams = {"stdin": slave, "stderr": slave} | popen_args
        try:
            self.proc = subprocess.Popen(
                args, env={**env, "TERM": "xterm-256color", "COLUMNS": str(cols),
                           "LINES": str(rows)}, stdout=slave, **streams)
        finally:
            os.close(slave)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: the command exited and closed its side
                data = b""
            if not data:
                os.close(self._master)
                return
            with self._lock:
                self._out += data

    @property
    def raw(self) -> str:
        with self._lock:
            return self._out.decode("utf-8", "replace")

    def drained(self, timeout_s: float = 10) -> str:
        """Everything the command wrote, once it has exited and its side is closed."""
        self._reader.join(timeout_s)
        return self.raw

    def close(self) -> None:
        """Kill the command if it still runs; wait for it and for the reader."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)
        self._reader.join(10)
