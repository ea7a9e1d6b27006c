"""How every async part of transferd opens its Redis client.

redis-py 8 gives a client a 5 s socket timeout and retries a command that meets it.
For the store that is wrong twice over: a 100,000-file submission's EXEC or a busy
server's reply can take longer than 5 s without anything being amiss, and a retried
Lua transition or WATCHed transaction may already have committed.  A dead server
still shows at once (its socket closes); the timeout is only for a silent network.
"""

from __future__ import annotations

from redis.asyncio import Redis

SOCKET_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10.0

__all__ = ["CONNECT_TIMEOUT_S", "SOCKET_TIMEOUT_S", "connect"]


def connect(url: str) -> Redis:
    """An asyncio client for ``url`` (redis://, rediss:// or unix://)."""
    return Redis.from_url(
        url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S
    )
