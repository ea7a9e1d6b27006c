"""A Rucio server and its conveyor in one process, for the tests: run by the Rucio venv's python.

    RUCIO_CONFIG=/tmp/x/rucio.cfg  ~/.cache/transferd-test/rucio-venv/bin/python rucio_launcher.py

gunicorn (one gthread worker, 4 threads) serves ``rucio.web.rest.flaskapi.v1.main``;
the worker process also creates the sqlite schema and runs the conveyor
(submitter → poller → finisher, each ``once=True``) and the judge-cleaner
(which deletes expired rules, so a rule given lifetime 0 goes at once) every
``TRANSFERD_TEST_CONVEYOR_INTERVAL_S`` seconds.  sqlite takes writes from one
process at a time, and Rucio's REST handlers stream answers out of open
queries, so every request (until its body is sent) and every conveyor step
holds the same lock.  The gunicorn master never opens the database.
Prints ``rucio listening on http://127.0.0.1:PORT`` once the schema exists and
the worker serves.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from gunicorn.app.base import BaseApplication

DB_LOCK = threading.Lock()
INTERVAL_S = float(os.environ.get("TRANSFERD_TEST_CONVEYOR_INTERVAL_S", "0.5"))
log = logging.getLogger("rucio-launcher")


class _Body:
    """A response body that gives the lock back once the server has sent (and closed) it."""

    def __init__(self, body: Iterable[bytes]) -> None:
        self.body = body

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            DB_LOCK.release()


class Locked:
    """WSGI middleware: one request at a time touches the database."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> _Body:
        DB_LOCK.acquire()
        try:
            return _Body(self.app(environ, start_response))
        except BaseException:
            DB_LOCK.release()
            raise


def bootstrap() -> None:
    """The schema, the base VO and the root account (userpass from [bootstrap]), once."""
    from rucio.db.sqla.models import register_models
    from rucio.db.sqla.session import get_engine
    from rucio.db.sqla.util import create_base_vo, create_root_account
    from sqlalchemy.exc import IntegrityError

    register_models(get_engine())
    try:
        create_base_vo()
        create_root_account()
    except IntegrityError:
        log.info("the database was bootstrapped before (a restarted worker)")


def conveyor_forever() -> None:
    import functools

    from rucio.daemons.common import run_daemon
    from rucio.daemons.conveyor import finisher, poller, submitter
    from rucio.daemons.judge import cleaner

    def judge_cleaner() -> None:
        # cleaner.rule_cleaner() waits a fixed second for partitioning on every call
        run_daemon(once=True, graceful_stop=cleaner.graceful_stop,
                   executable=cleaner.DAEMON_NAME, partition_wait_time=0, sleep_time=60,
                   run_once_fnc=functools.partial(cleaner.run_once, paused_rules={}))

    steps: list[tuple[str, Callable[[], None]]] = [
        ("submitter", lambda: submitter.submitter(once=True, partition_wait_time=0,
                                                  transfertools=["fts3"])),
        ("poller", lambda: poller.poller(once=True, older_than=0, partition_wait_time=0)),
        ("finisher", lambda: finisher.finisher(once=True, partition_wait_time=0)),
        ("judge-cleaner", judge_cleaner),  # deletes expired rules and cancels their transfers
    ]
    while True:
        started = time.monotonic()
        for name, step in steps:
            with DB_LOCK:
                try:
                    step()
                except Exception:
                    log.exception("conveyor %s failed", name)
        time.sleep(max(0.0, INTERVAL_S - (time.monotonic() - started)))


def post_worker_init(worker: Any) -> None:
    with DB_LOCK:
        bootstrap()
    threading.Thread(target=conveyor_forever, name="conveyor", daemon=True).start()
    port = worker.sockets[0].getsockname()[1]
    print(f"rucio listening on http://127.0.0.1:{port}", flush=True)


class Server(BaseApplication):  # type: ignore[misc]
    def load_config(self) -> None:
        settings = {
            "bind": "127.0.0.1:0",
            "workers": 1,
            "threads": 4,
            "worker_class": "gthread",
            "timeout": 300,
            "graceful_timeout": 5,
            "post_worker_init": post_worker_init,
            "control_socket_disable": True,  # else one socket in $HOME for every instance
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Locked:
        from rucio.web.rest.flaskapi.v1.main import application

        return Locked(application)


def main() -> None:
    if not os.environ.get("RUCIO_CONFIG"):
        sys.exit("rucio_launcher: set RUCIO_CONFIG to the rucio.cfg to serve")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    Server().run()


if __name__ == "__main__":
    main()
