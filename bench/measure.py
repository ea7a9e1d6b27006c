"""Running one contender: wall time, peak RSS of its process tree, and the page cache.

Wall time is ``time.monotonic()`` around the process.  Peak RSS is GNU time's
``%M``: ``wait4``'s ru_maxrss, the larger of the child's own high-water mark and
that of every descendant it reaped.  We cannot read ``wait4`` ourselves: Linux
carries the forking process's high-water mark across exec, so every child of
this (large) Python would report at least our own peak.  ``/usr/bin/time`` is a
2 MB parent whose floor is negligible.  Without it (``apt-get install time``)
the figure is an upper bound and says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DROP_CACHES = Path("/proc/sys/vm/drop_caches")
GNU_TIME = Path("/usr/bin/time")


@dataclass(frozen=True)
class Completed:
    argv: list[str]
    returncode: int
    wall_s: float
    peak_rss_bytes: int
    stdout: str
    stderr: str
    timed_out: bool

    def failure(self) -> str | None:
        """A sentence saying why this run does not count, or None."""
        if self.timed_out:
            return f"timed out after {self.wall_s:.0f} s"
        if self.returncode != 0:
            tail = (self.stderr.strip() or self.stdout.strip())[-600:]
            return f"exit {self.returncode}: {tail}"
        return None


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def run_measured(argv: Sequence[str], *, timeout_s: float, cwd: Path | None = None) -> Completed:
    """Run ``argv`` to completion, or SIGKILL its whole process group after ``timeout_s``."""
    timed_out = threading.Event()

    def expire(pid: int) -> None:
        timed_out.set()
        _kill_group(pid)

    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as rss_kib,
    ):
        wrapper = [str(GNU_TIME), "-f", "%M", "-o", rss_kib.name] if rss_exact() else []
        start = time.monotonic()
        # Own session, so a timeout kills helpers (aria2c, rclone) with their parent.
        proc = subprocess.Popen(
            [*wrapper, *argv], stdout=out, stderr=err, cwd=cwd, start_new_session=True
        )
        timer = threading.Timer(timeout_s, expire, (proc.pid,))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            # Ctrl-C reaches only us (the child has its own session): take it down too.
            _kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            timer.cancel()
        wall_s = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        peak_kib = usage.ru_maxrss  # Linux reports KiB
        if wrapper:
            lines = rss_kib.read().strip().splitlines()
            # Killed by a signal, GNU time writes a "Command terminated" line first.
            peak_kib = int(lines[-1]) if lines and lines[-1].isdigit() else 0
        out.seek(0)
        err.seek(0)
        return Completed(
            argv=list(argv),
            returncode=proc.returncode,
            wall_s=wall_s,
            peak_rss_bytes=peak_kib * 1024,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            timed_out=timed_out.is_set(),
        )


def rss_exact() -> bool:
    """True when peak RSS is the tool's own; False when it is bounded below by ours."""
    return GNU_TIME.exists()


def sync_s() -> float:
    """Flush dirty pages; returns how long the write-back of the last run took."""
    start = time.monotonic()
    os.sync()
    return time.monotonic() - start


def drop_page_cache() -> bool:
    """Sync and drop clean pages, so each run reads its source from disk.

    False when not permitted (containers usually forbid it).
    """
    os.sync()
    try:
        DROP_CACHES.write_text("1\n")
    except OSError:
        return False
    return True
