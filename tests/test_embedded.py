"""The embedded redis-server: private unix socket, append-only file, survives crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from transferd.embedded import EmbeddedRedis, EmbeddedRedisError, redis_url_for_state_dir


def wait_gone(pid: int, bound_s: float = 10.0) -> bool:
    """Poll until process ``pid`` has exited (or is a zombie); False after ``bound_s``."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.01)
    return False


def test_starts_on_a_private_socket_and_stops(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with EmbeddedRedis(state) as store:
        assert store.url == f"unix://{state / 'redis.sock'}"
        assert store.url == redis_url_for_state_dir(state)
        client = redis.Redis.from_url(store.url)
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.config_get("port")["port"] == "0"  # no TCP listener at all
        assert client.config_get("appendonly")["appendonly"] == "yes"
        client.close()
        pid = store.pid
        assert pid is not None
    assert wait_gone(pid)
    assert not (state / "redis.sock").exists()


def test_data_survives_kill_9_of_redis_via_the_append_only_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = EmbeddedRedis(state).start()
    client = redis.Redis.from_url(store.url)
    client.hset("td:job:j1", mapping={"state": "ACTIVE", "files_total": "3"})
    for i in range(1000):
        client.set(f"k{i}", i)
    client.close()
    pid = store.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid)
    store.stop()  # the server is gone already; stop must cope

    with EmbeddedRedis(state) as again:
        assert again.pid != pid
        client = redis.Redis.from_url(again.url)
        assert client.hgetall("td:job:j1") == {b"state": b"ACTIVE", b"files_total": b"3"}
        assert client.get("k999") == b"999"
        client.close()


def test_second_user_of_a_live_state_dir_joins_instead_of_starting_another(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    with EmbeddedRedis(state) as owner:
        with EmbeddedRedis(state) as guest:
            assert guest.pid == owner.pid
            assert not guest.owned
            redis.Redis.from_url(guest.url).set("from-guest", 1)
        # The guest leaving does not stop the owner's server.
        client = redis.Redis.from_url(owner.url)
        assert client.get("from-guest") == b"1"
        client.close()


def test_an_orphaned_server_is_adopted_and_stopped(tmp_path: Path) -> None:
    """A node killed with -9 leaves its redis-server running; the next start reuses it."""
    state = tmp_path / "state"
    # A real process owns the server and then dies without stopping it.
    code = (
        "import os, sys\n"
        "from transferd.embedded import EmbeddedRedis\n"
        f"s = EmbeddedRedis({str(state)!r}).start()\n"
        "print(s.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert owner.stdout is not None
    orphan_pid = int(owner.stdout.readline())
    client = redis.Redis.from_url(redis_url_for_state_dir(state))
    client.set("before", "crash")
    owner.kill()
    owner.wait()
    assert client.ping()  # the child outlived its parent

    with EmbeddedRedis(state) as store:
        assert store.owned
        assert store.pid == orphan_pid
        assert client.get("before") == b"crash"
    client.close()
    assert wait_gone(orphan_pid)


def test_a_missing_redis_server_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedRedisError, match="not installed"):
        EmbeddedRedis(tmp_path, redis_server="no-such-redis-server-binary").start()


def test_a_state_dir_too_long_for_a_socket_is_a_clear_error(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    with pytest.raises(EmbeddedRedisError, match="too long"):
        EmbeddedRedis(deep).start()


async def test_async_context_manager(tmp_path: Path) -> None:
    import redis.asyncio

    async with EmbeddedRedis(tmp_path / "state") as store:
        client = redis.asyncio.Redis.from_url(store.url)
        await client.set("a", "b")
        assert await client.get("a") == b"b"
        await client.aclose()
