"""A private redis-server for a single-machine node: the embedded default.

``transferd serve`` without ``--redis-url`` keeps its whole store in a
``redis-server`` child bound to a unix socket in the state directory (no TCP
port, so nothing else on the machine can reach it), with an append-only file
so jobs survive a crash of the daemon or of Redis itself.

Ownership: the process that starts the child holds an exclusive ``flock`` on
``state_dir/redis.lock`` for as long as it runs.  A later start on the same
state directory that finds the socket answering either

- adopts it, when it can take the lock (the previous owner died and left an
  orphaned redis-server behind): it stops that server on exit, or
- uses it as a guest, when the lock is held (another live process owns it,
  e.g. ``transferd token create --state-dir`` while the node runs): it never
  stops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "redis_url_for_state_dir",
    "socket_path_for_state_dir",
]

SOCKET_NAME = "redis.sock"
PIDFILE_NAME = "redis.pid"
LOCK_NAME = "redis.lock"
LOGFILE_NAME = "redis.log"
# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107
POLL_INTERVAL_S = 0.02


class EmbeddedRedisError(RuntimeError):
    """The private redis-server could not be started or reached."""


def socket_path_for_state_dir(state_dir: str | os.PathLike[str]) -> Path:
    """The unix socket the node of ``state_dir`` serves its store on."""
    return Path(state_dir).absolute() / SOCKET_NAME


def redis_url_for_state_dir(state_dir: str | os.PathLike[str]) -> str:
    """The Redis URL of the embedded store of the node using ``state_dir``.

    Used by ``transferd token create --state-dir DIR`` to write into a running
    node's store without going through its HTTP API.
    """
    return f"unix://{socket_path_for_state_dir(state_dir)}"


def _direct_client(socket_path: Path, timeout_s: float) -> redis.Redis:
    """A client that reports a dead socket at once: redis-py would otherwise retry with
    backoff, which turns every probe of a stopped server into seconds of waiting."""
    return redis.Redis(
        unix_socket_path=str(socket_path),
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


def _answers(socket_path: Path, timeout_s: float = 1.0) -> bool:
    """Whether a redis-server answers PING on ``socket_path``."""
    if not socket_path.exists():
        return False
    client = _direct_client(socket_path, timeout_s)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


class EmbeddedRedis:
    """A redis-server child on ``state_dir/redis.sock`` with an append-only file.

    Use as a context manager, sync or async::

        with EmbeddedRedis(state_dir) as store:
            client = redis.Redis.from_url(store.url)

        async with EmbeddedRedis(state_dir) as store:
            ...
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        redis_server: str = "redis-server",
        start_timeout_s: float = 20.0,
        stop_timeout_s: float = 15.0,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.socket_path = self.state_dir / SOCKET_NAME
        self.pidfile = self.state_dir / PIDFILE_NAME
        self.logfile = self.state_dir / LOGFILE_NAME
        self._lockfile = self.state_dir / LOCK_NAME
        self._redis_server = redis_server
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock: IO[bytes] | None = None
        self._adopted_pid: int | None = None
        self._running = False

    @property
    def url(self) -> str:
        """``unix:///…/redis.sock``: what ``redis.Redis.from_url`` takes."""
        return f"unix://{self.socket_path}"

    @property
    def owned(self) -> bool:
        """True when this object stops the server on exit (it started or adopted it)."""
        return self._lock is not None

    @property
    def pid(self) -> int | None:
        """The redis-server's process id, when known."""
        if self._proc is not None:
            return self._proc.pid
        if self._adopted_pid is not None:
            return self._adopted_pid
        return self._read_pidfile()

    # -- lifecycle --------------------------------------------------------

    def start(self) -> EmbeddedRedis:
        """Start the child, adopt an orphan, or join a live owner's server; return self."""
        if self._running:
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH_BYTES:
            raise EmbeddedRedisError(
                f"state directory path is too long for a unix socket "
                f"({len(os.fsencode(self.socket_path))} > {MAX_SOCKET_PATH_BYTES} bytes): "
                f"{self.socket_path}; choose a shorter --state-dir"
            )
        deadline = time.monotonic() + self._start_timeout_s
        while True:
            if self._try_lock():
                try:
                    if _answers(self.socket_path):
                        self._adopted_pid = self._read_pidfile()
                    else:
                        self._spawn(deadline)
                except BaseException:
                    self._unlock()
                    raise
                break
            # Another live process owns this state dir: use its server once it answers.
            if _answers(self.socket_path):
                break
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(
                    f"another process holds {self._lockfile} but no redis-server answers "
                    f"on {self.socket_path}"
                )
            time.sleep(POLL_INTERVAL_S)
        self._running = True
        return self

    def stop(self) -> None:
        """Stop the server if this object owns it: SHUTDOWN, wait, then kill after a bound."""
        if not self._running:
            return
        self._running = False
        try:
            if self.owned:
                self._shutdown()
        finally:
            self._unlock()

    # -- context managers -------------------------------------------------

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedRedis:
        import asyncio

        # Starting polls a socket for up to a few seconds: keep the event loop free.
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import asyncio

        await asyncio.to_thread(self.stop)

    # -- internals --------------------------------------------------------

    def _try_lock(self) -> bool:
        handle = open(self._lockfile, "ab")  # noqa: SIM115 - held open while we own the server
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._lock = handle
        return True

    def _unlock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _read_pidfile(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def _spawn(self, deadline: float) -> None:
        exe = shutil.which(self._redis_server)
        if exe is None:
            raise EmbeddedRedisError(
                f"{self._redis_server} is not installed (run scripts/setup, or give --redis-url)"
            )
        # A socket file left by a killed server would make bind() fail.
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        argv = [
            exe,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.state_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--pidfile", str(self.pidfile),
            "--logfile", str(self.logfile),
            "--daemonize", "no",
        ]
        # A session of its own: Ctrl-C on the terminal reaches the daemon, which then
        # stops Redis after its own shutdown, instead of Redis dying under it.
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        while not _answers(self.socket_path, timeout_s=0.5):
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise EmbeddedRedisError(
                    f"redis-server exited with status {code} at start-up; "
                    f"last log lines:\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                self._kill_child()
                raise EmbeddedRedisError(
                    f"redis-server did not answer on {self.socket_path} within "
                    f"{self._start_timeout_s:g} s; last log lines:\n{self._log_tail()}"
                )
            time.sleep(POLL_INTERVAL_S)

    def _shutdown(self) -> None:
        pid = self.pid
        client = _direct_client(self.socket_path, self._stop_timeout_s)
        try:
            # SHUTDOWN fsyncs the append-only file, then closes the connection under us.
            client.shutdown()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            pass
        except redis.ResponseError:
            # Refused (e.g. fsync failed): fall through to the signal path below.
            pass
        finally:
            client.close()
        if self._proc is not None:
            try:
                self._proc.wait(self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                self._kill_child()
            self._proc = None
        elif pid is not None:
            self._wait_foreign_pid(pid)
        self._adopted_pid = None

    def _kill_child(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def _wait_foreign_pid(self, pid: int) -> None:
        """Wait for an adopted (not our child) redis-server to go, killing it after a bound."""
        deadline = time.monotonic() + self._stop_timeout_s
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
                return
            time.sleep(POLL_INTERVAL_S)

    def _log_tail(self, lines: int = 10) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is gone for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
