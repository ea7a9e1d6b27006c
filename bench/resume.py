"""The resume check: kill -9 ``transferd cp`` half-way through the big file, rerun, count waste.

"Half-way" is read from /proc/<pid>/io ``wchar``: bytes the mover has written
with pwrite (socket reads bypass ``rchar``), so the kill does not depend on a
guessed duration.  Waste is what nginx sent for
the file over both attempts minus the file's size: bytes fetched twice or
received and thrown away.  Issue 3 allows one chunk per stream.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from httpd import Nginx
from measure import run_measured
from tools import Context, VerifyError, verify_transferd_big

_POLL_S = 0.005


@dataclass(frozen=True)
class ResumePlan:
    streams: int
    chunk_bytes: int
    timeout_s: float


def plan_for(size_bytes: int, timeout_s: float) -> ResumePlan:
    """16+ chunks, so half-way leaves whole chunks done (64 MiB at 4 GiB, 16 MiB at 256 MiB)."""
    chunk = 64 * 2**20
    while chunk > 4 * 2**20 and size_bytes // chunk < 16:
        chunk //= 2
    return ResumePlan(streams=4, chunk_bytes=chunk, timeout_s=timeout_s)


def _wchar(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _kill_half_way(argv: list[str], half_bytes: int, timeout_s: float) -> tuple[float, int]:
    """Run ``argv``; SIGKILL it once it has written ``half_bytes``; (seconds, exit code)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        while proc.poll() is None and time.monotonic() - start < timeout_s:
            if _wchar(proc.pid) >= half_bytes:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(_POLL_S)
        else:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        return time.monotonic() - start, proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def measure_resume(ctx: Context, server: Nginx, plan: ResumePlan) -> dict[str, Any]:
    assert ctx.transferd is not None
    argv = [
        *ctx.transferd,
        ctx.big_url,
        str(ctx.big_out),
        "--checksum",
        "adler32",
        "--streams",
        str(plan.streams),
        "--chunk-size",
        str(plan.chunk_bytes),
    ]
    size = ctx.dataset.big_bytes
    result: dict[str, Any] = {
        "argv": argv,
        "streams": plan.streams,
        "chunk_bytes": plan.chunk_bytes,
        "allowed_bytes": plan.streams * plan.chunk_bytes,
    }
    offset = server.log_offset()
    killed_at_s, code = _kill_half_way(argv, size // 2, plan.timeout_s)
    result["killed_at_s"] = killed_at_s
    if code != -signal.SIGKILL:
        result["error"] = (
            f"first attempt was not killed half-way (exit {code} after {killed_at_s:.1f} s)"
        )
        return result
    second = run_measured(argv, timeout_s=plan.timeout_s)
    result["resume_s"] = second.wall_s
    if (failure := second.failure()) is not None:
        result["error"] = f"resumed run failed: {failure}"
        return result
    try:
        verify_transferd_big(ctx, second)
    except VerifyError as e:
        result["error"] = f"resumed file wrong: {e}"
        return result
    sent = server.bytes_sent_since(offset, "/" + ctx.big_url.rsplit("/", 1)[1])
    result["nginx_sent_bytes"] = sent
    result["waste_bytes"] = max(0, sent - size)
    return result
