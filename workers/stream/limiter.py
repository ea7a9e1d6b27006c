"""A token bucket that caps the bytes per second of every file sharing it.

One bucket per link per worker process: every stream of every file on that
link takes tokens for the bytes it has read before it reads more, so the
link's total rate converges to ``rate_bps`` however many files and streams
run.  A cluster-wide cap is split by the worker runtime, which gives each
live worker process ``cap / live workers`` (``workers/runtime.py``).

Single event loop only (the worker runtime's): no locks, callers just sleep
off their own debt.  Debt accumulates, so concurrent callers queue behind
each other and the aggregate rate stays at ``rate_bps``.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["TokenBucket"]


class TokenBucket:
    """``acquire(n)`` returns once ``n`` more bytes fit under ``rate_bps``."""

    def __init__(self, rate_bps: float, *, burst_s: float = 0.05) -> None:
        if rate_bps <= 0:
            raise ValueError(f"rate_bps must be > 0, got {rate_bps}")
        self.rate_bps = float(rate_bps)
        self.burst_s = burst_s
        self._tokens = 0.0
        self._last = time.monotonic()

    @property
    def burst_bytes(self) -> float:
        return max(64 * 1024.0, self.rate_bps * self.burst_s)

    def set_rate(self, rate_bps: float) -> None:
        if rate_bps > 0 and rate_bps != self.rate_bps:
            self._refill()
            self.rate_bps = float(rate_bps)

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst_bytes, self._tokens + (now - self._last) * self.rate_bps)
        self._last = now

    def delay_s(self, nbytes: int) -> float:
        """Take ``nbytes`` now; the seconds the caller must wait to stay under the rate."""
        self._refill()
        self._tokens -= nbytes
        return -self._tokens / self.rate_bps if self._tokens < 0 else 0.0

    async def acquire(self, nbytes: int) -> None:
        wait_s = self.delay_s(nbytes)
        if wait_s > 0:
            await asyncio.sleep(wait_s)
