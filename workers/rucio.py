"""The Rucio backend: a file of ours is a replication rule for a DID; Rucio moves the bytes.

Source ``rucio://scope/name`` (a file or a dataset DID), destination
``rucio://<RSE expression>`` (percent-encoded where needed).  The worker
creates one rule (copies=1) with ``rucio-clients``, follows the rule and its
replica locks (progress = bytes of the DID's files whose lock is OK), and ends
the file when the rule does: OK → FINISHED (a file DID with Rucio's adler32, a
dataset with the total size); STUCK or SUSPENDED → FAILED with the rule's
``error`` as the reason (Rucio's own judge keeps repairing STUCK rules, so our
retrying would only wait on the same rule); canceled → the rule is deleted
(``_delete_rule``), which makes Rucio cancel its transfers too.

A dataset's files are listed as the ``members`` of our file record, each with
its bytes, its adler32 and its own state from its replica lock (SUBMITTED
until Rucio locks it, then ACTIVE, FINISHED or FAILED; CANCELED when we delete
the rule before it got there).

Idempotency: Rucio allows one rule per DID, account and RSE expression, so a
second delivery (or a submission whose answer was lost) finds the existing
rule (``DuplicateRule`` → ``list_did_rules``) and follows it.

rucio-clients is synchronous (``requests``): every call, including the
iteration of the generators its list methods return, runs in a thread.  It is
used without a rucio.cfg; its token cache goes to ``TRANSFERD_RUCIO_TOKEN_DIR``
instead of the per-user default, so two servers never share a token file.

Settings (environment of the worker process):

    TRANSFERD_RUCIO_HOST        the Rucio server URL
    TRANSFERD_RUCIO_AUTH_HOST   the auth server URL (default: the server)
    TRANSFERD_RUCIO_ACCOUNT     the account rules are created for
    TRANSFERD_RUCIO_USERNAME / TRANSFERD_RUCIO_PASSWORD   userpass credentials
    TRANSFERD_RUCIO_TOKEN_DIR   where the client caches its token (default: a temp dir)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from transferd.errors import (
    AuthError,
    Canceled,
    NotFound,
    PermanentError,
    RetryableError,
    TransferError,
)
from workers.backend import Copied, FileRun
from workers.runtime import WorkerRuntime

__all__ = [
    "RucioSettings",
    "lock_progress",
    "make_client",
    "member_states",
    "move_rucio_file",
    "parse_did",
    "parse_rse_expression",
    "rule_outcome",
]

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0
FAILED_RULE_STATES = ("STUCK", "SUSPENDED")


@dataclass(frozen=True)
class RucioSettings:
    """How to reach the Rucio server, from the environment."""

    host: str
    auth_host: str
    account: str
    username: str
    password: str
    token_dir: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RucioSettings:
        env = os.environ if env is None else env
        host = env.get("TRANSFERD_RUCIO_HOST", "").rstrip("/")
        if not host.startswith(("http://", "https://")):
            raise PermanentError("TRANSFERD_RUCIO_HOST is not set to an http(s) URL on this worker")
        missing = [k for k in ("ACCOUNT", "USERNAME", "PASSWORD")
                   if not env.get(f"TRANSFERD_RUCIO_{k}")]
        if missing:
            names = ", ".join(f"TRANSFERD_RUCIO_{k}" for k in missing)
            raise PermanentError(f"{names} not set on this worker")
        return cls(
            host=host,
            auth_host=env.get("TRANSFERD_RUCIO_AUTH_HOST", host).rstrip("/"),
            account=env["TRANSFERD_RUCIO_ACCOUNT"],
            username=env["TRANSFERD_RUCIO_USERNAME"],
            password=env["TRANSFERD_RUCIO_PASSWORD"],
            token_dir=env.get("TRANSFERD_RUCIO_TOKEN_DIR")
            or tempfile.mkdtemp(prefix="transferd-rucio-"),
        )


def make_client(settings: RucioSettings) -> Any:
    """A rucio-clients ``Client`` for ``settings`` (blocking: it authenticates at once)."""
    from rucio.client import Client

    class _Client(Client):  # type: ignore[misc]
        def _get_auth_tokens(self) -> tuple[str, str, str, str]:
            # Without a rucio.cfg the client caches tokens per OS user, shared by every
            # server and process; keep ours in the directory the settings name.
            token = os.path.join(settings.token_dir, f"auth_token_for_account_{self.account}")
            expiry = os.path.join(settings.token_dir, f"auth_token_exp_for_account_{self.account}")
            return token, expiry, token, settings.token_dir

    return _Client(
        rucio_host=settings.host, auth_host=settings.auth_host, account=settings.account,
        auth_type="userpass",
        creds={"username": settings.username, "password": settings.password},
    )


def parse_did(url: str) -> tuple[str, str]:
    """``rucio://scope/name`` → (scope, name); PermanentError when it is not one."""
    if not url.startswith("rucio://"):
        raise PermanentError(f"expected a rucio://scope/name source, got {url!r}")
    scope, _, name = unquote(url[len("rucio://") :]).partition("/")
    if not scope or not name:
        raise PermanentError(f"expected rucio://scope/name, got {url!r}")
    return scope, name


def parse_rse_expression(url: str) -> str:
    """``rucio://<RSE expression>`` → the expression."""
    if not url.startswith("rucio://"):
        raise PermanentError(f"expected a rucio://<RSE expression> destination, got {url!r}")
    expression = unquote(url[len("rucio://") :]).strip("/")
    if not expression:
        raise PermanentError("the destination names no RSE expression")
    return expression


# -- pure translations ---------------------------------------------------------------------


def _state(value: Any) -> str:
    """A Rucio state as the REST API writes it ("OK"), whatever the client handed us."""
    return str(value or "").rsplit(".", 1)[-1].upper()


def lock_progress(locks: Iterable[Mapping[str, Any]], sizes: Mapping[tuple[str, str], int]
                  ) -> tuple[int, dict[str, int]]:
    """(bytes of the files whose lock is OK, number of locks per state)."""
    done = 0
    counts: dict[str, int] = {}
    for lock in locks:
        state = _state(lock.get("state"))
        counts[state] = counts.get(state, 0) + 1
        if state == "OK":
            done += sizes.get((str(lock.get("scope")), str(lock.get("name"))), 0)
    return done, counts


# a replica lock's state → the state of that member file of ours
_MEMBER_STATES = {"OK": "FINISHED", "REPLICATING": "ACTIVE", "STUCK": "FAILED"}


def member_states(files: Iterable[Mapping[str, Any]], locks: Iterable[Mapping[str, Any]]
                  ) -> list[dict[str, Any]]:
    """Each file of a dataset with its own state, from the rule's replica locks:
    SUBMITTED until Rucio has a lock for it, then ACTIVE, FINISHED or FAILED."""
    by_did = {(str(lock.get("scope")), str(lock.get("name"))): _state(lock.get("state"))
              for lock in locks}
    members = []
    for f in files:
        did = (str(f["scope"]), str(f["name"]))
        lock = by_did.get(did)
        members.append({
            "did": f"{did[0]}:{did[1]}",
            "bytes": int(f.get("bytes") or 0),
            "state": "SUBMITTED" if lock is None else _MEMBER_STATES.get(lock, "ACTIVE"),
            "lock": lock,
            "checksum": _adler32(f),
        })
    return members


def rule_outcome(rule: Mapping[str, Any]) -> TransferError | None:
    """The error a finished-badly rule ends our file with, or None while it may still end OK."""
    state = _state(rule.get("state"))
    if state not in FAILED_RULE_STATES:
        return None
    reason = str(rule.get("error") or "").strip() or "Rucio gave no reason"
    err = PermanentError(
        f"Rucio rule {rule.get('id')} {state} ({rule.get('locks_stuck_cnt', 0)} stuck, "
        f"{rule.get('locks_ok_cnt', 0)} OK, {rule.get('locks_replicating_cnt', 0)} replicating "
        f"locks): {reason}"[:500]
    )
    err.error_class = "stuck"
    return err


_ERRORS: dict[str, type[TransferError]] = {
    "DataIdentifierNotFound": NotFound,
    "RSEExpressionNotFound": NotFound,
    "RuleNotFound": NotFound,
    "InvalidRSEExpression": PermanentError,
    "InsufficientAccountLimit": PermanentError,
    "InsufficientTargetRSEs": PermanentError,
    "InvalidObject": PermanentError,
    "UnsupportedOperation": PermanentError,
    "CannotAuthenticate": AuthError,
    "AccessDenied": AuthError,
}


def _error(exc: Exception, what: str) -> TransferError:
    name = type(exc).__name__
    cls = _ERRORS.get(name, RetryableError)
    return cls(f"Rucio {what}: {name}: {exc}"[:500])


# -- the client ----------------------------------------------------------------------------

# Only RetryableError: an auth or a "no such rule" answer is final at once.
_read_retry = retry(
    retry=retry_if_exception_type(RetryableError),
    wait=wait_exponential_jitter(multiplier=0.5, max=4.0),
    stop=stop_after_attempt(4),
    reraise=True,
)


class RucioLink:
    """One worker process's rucio-clients ``Client`` (synchronous: called in threads)."""

    def __init__(self, settings: RucioSettings) -> None:
        self.settings = settings
        self.client: Any = None

    async def open(self) -> None:
        try:
            self.client = await asyncio.to_thread(make_client, self.settings)
        except Exception as exc:
            raise _error(exc, "connecting") from None

    @_read_retry
    async def read(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``call`` for a read that changes nothing (a rule, its locks): a transient
        failure (server restarting, connection reset) is tried again a few times,
        with backoff, before it fails the attempt."""
        return await self.call(what, method, *args, **kwargs)

    async def call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.method(*args)``; an iterator answer is read to a list in the thread too."""

        def run() -> Any:
            answer = getattr(self.client, method)(*args, **kwargs)
            if hasattr(answer, "__next__"):
                return list(answer)
            return answer

        try:
            return await asyncio.to_thread(run)
        except Exception as exc:
            raise _error(exc, what) from exc


async def link_for(rt: WorkerRuntime) -> RucioLink:
    """The worker process's rucio-clients ``Client``, opened (authenticated) on first use."""

    async def open_link() -> RucioLink:
        link = RucioLink(RucioSettings.from_env())
        await link.open()
        return link

    return await rt.shared("rucio", open_link)


# -- the mover -----------------------------------------------------------------------------


async def _rule_for(link: RucioLink, scope: str, name: str, expression: str, run: FileRun
                    ) -> str:
    """Create the rule, or find the one an earlier delivery created."""
    try:
        ids = await link.call(
            "adding a rule", "add_replication_rule",
            dids=[{"scope": scope, "name": name}], copies=1, rse_expression=expression,
            priority=run.params.priority if run.params else 3,
            comment=f"transferd {run.record.file_id}", asynchronous=False,
        )
        return str(ids[0])
    except RetryableError as exc:
        if type(exc.__cause__).__name__ != "DuplicateRule":
            raise
    rules = await link.call("listing rules", "list_did_rules", scope, name)
    for rule in rules:
        if rule.get("rse_expression") == expression and rule.get(
            "account"
        ) == link.settings.account:
            log.info("%s: adopting Rucio rule %s", run.record.file_id, rule["id"])
            return str(rule["id"])
    raise RetryableError(f"Rucio says a rule for {scope}:{name} exists but none is listed")


async def move_rucio_file(rt: WorkerRuntime, run: FileRun) -> Copied:
    """Replicate a DID to an RSE expression with a rule and follow it to its end."""
    scope, name = parse_did(run.record.source)
    expression = parse_rse_expression(run.record.destination)
    link = await link_for(rt)
    files = await link.call("listing the DID's files", "list_files", scope, name)
    sizes = {(str(f["scope"]), str(f["name"])): int(f.get("bytes") or 0) for f in files}
    total = sum(sizes.values())
    rule_id = await _rule_for(link, scope, name, expression, run)
    log.info("%s: following Rucio rule %s for %s:%s (%d files, %d bytes)",
             run.record.file_id, rule_id, scope, name, len(sizes), total)
    seen: dict[str, int] = {}
    dataset = _is_dataset(files, scope, name)
    shown: list[dict[str, Any]] | None = None
    while True:
        rule = await link.read("reading the rule", "get_replication_rule", rule_id)
        locks = await link.read("listing locks", "list_replica_locks", rule_id)
        done, counts = lock_progress(locks, sizes)
        run.report(done)
        if dataset and (members := member_states(files, locks)) != shown:
            assert rt.store is not None
            await rt.store.set_members(run.record.file_id, members)
            shown = members
        if counts != seen:
            log.info("%s: rule %s %s, locks %s", run.record.file_id, rule_id,
                     _state(rule.get("state")), counts)
            seen = counts
        if _state(rule.get("state")) == "OK":
            run.report(total)
            return Copied(_checksum(files, scope, name), total)
        # a stuck rule's other files may still be copying: end once they have settled,
        # so the record tells what landed
        if (err := rule_outcome(rule)) is not None and not counts.get("REPLICATING"):
            raise err
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.cancel.wait(), POLL_INTERVAL_S)
        if run.cancel.is_set():
            if not run.releasing:
                await _delete_rule(link, rule_id, run)
                if shown is not None:
                    assert rt.store is not None
                    await rt.store.set_members(run.record.file_id, [
                        m | {"state": "CANCELED"} if m["state"] != "FINISHED" else m
                        for m in shown
                    ])
            raise Canceled("canceled" if not run.releasing else "worker shutting down")


async def _delete_rule(link: RucioLink, rule_id: str, run: FileRun) -> None:
    """Delete the rule: Rucio's judge-cleaner removes it and cancels its transfers.

    Deleting through the API is soft (the rule expires within the hour); an account
    allowed to update rules (root or admin, in the generic policy) also gives it
    lifetime 0, so it goes on the judge-cleaner's next round.
    """
    try:
        await link.call("deleting the rule", "delete_replication_rule", rule_id,
                        purge_replicas=False)
    except TransferError as exc:
        log.warning("%s: could not delete Rucio rule %s: %s", run.record.file_id, rule_id, exc)
        return
    try:
        await link.call("expiring the rule", "update_replication_rule", rule_id,
                        {"lifetime": 0})
    except TransferError as exc:
        log.info("%s: Rucio rule %s deleted; it expires within the hour (%s)",
                 run.record.file_id, rule_id, exc)
        return
    log.info("%s: canceled; Rucio rule %s expired for deletion now", run.record.file_id, rule_id)


def _is_dataset(files: list[dict[str, Any]], scope: str, name: str) -> bool:
    return not (len(files) == 1 and (files[0].get("scope"), files[0].get("name")) == (scope, name))


def _adler32(f: Mapping[str, Any]) -> str | None:
    """A file DID's adler32 as Rucio records it, in our spelling."""
    adler = f.get("adler32")
    return f"adler32:{str(adler).lower().rjust(8, '0')}" if adler else None


def _checksum(files: list[dict[str, Any]], scope: str, name: str) -> str | None:
    """A file DID's adler32 (a dataset has none of its own: see its members)."""
    return None if _is_dataset(files, scope, name) else _adler32(files[0])
