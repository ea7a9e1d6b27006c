"""The scheduler: one leader per deployment decides what moves next.

Every ``transferd serve`` runs one; a Redis lease (``td:leader``, renewed every
second, ``LEADER_LEASE_MS`` long) makes exactly one of them the leader, and a
survivor takes over within seconds of the leader's death.  The leader promotes
retries whose ``not_before`` has passed, reaps expired leases, expires jobs past
their deadline, runs the per-link optimizer every ``optimizer.interval_s``
(``transferd.links``), and per link dispatches files up to the optimizer's
target — and within the per-host limits of the source and destination hosts —
as dramatiq messages on ``transfer.<backend>``.  Which files go is fair share
(``policies.fairshare.pick`` over the link's tenant/activity flows).  It wakes
on every file event (XREAD on the event stream), so a freed slot is refilled
at once.  The policy is read afresh every round, so a SIGHUP reload applies
without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis.asyncio
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from policies import fairshare
from policies.policy import Policy
from transferd.links import LinkBook, host_pair
from transferd.store import JobStore
from workers.broker import transfer_message

log = logging.getLogger(__name__)

LEADER_KEY = "td:leader"
LEADER_LEASE_MS = 5000
RENEW_INTERVAL_S = 1.0
REAP_INTERVAL_S = 2.0
IDLE_WAKE_MS = 500

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RESIGN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Scheduler:
    """Leader election plus the dispatch loop."""

    def __init__(
        self,
        store: JobStore,
        redis_client: redis.asyncio.Redis,
        broker: RedisBroker,
        *,
        link_limit: Callable[[str], int],
        policy: Callable[[], Policy] | None = None,
    ) -> None:
        self.store = store
        self.redis = redis_client
        self.broker = broker
        self.link_limit = link_limit
        default = Policy()
        self.policy = policy or (lambda: default)
        self.book = LinkBook(redis_client, self.policy, link_limit, namespace=store.ns)
        self._passes: dict[str, dict[str, float]] = {}  # link -> fair-share passes
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.is_leader = False
        self._renew = redis_client.register_script(_RENEW)
        self._resign = redis_client.register_script(_RESIGN)
        self._stop = asyncio.Event()
        self._last_event_id = "$"

    async def _hold_leadership(self) -> bool:
        if self.is_leader:
            self.is_leader = bool(
                await self._renew(keys=[LEADER_KEY], args=[self.node_id, LEADER_LEASE_MS])
            )
            if not self.is_leader:
                log.warning("scheduler %s lost leadership", self.node_id)
        else:
            got = await self.redis.set(LEADER_KEY, self.node_id, nx=True, px=LEADER_LEASE_MS)
            if got:
                self.is_leader = True
                self._last_event_id = "$"
                log.info("scheduler %s is the leader", self.node_id)
        return self.is_leader

    async def run(self) -> None:
        """Run until :meth:`stop`; survives Redis errors by retrying."""
        last_renew = last_reap = last_optimize = 0.0
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now - last_renew >= RENEW_INTERVAL_S or not self.is_leader:
                    await self._hold_leadership()
                    last_renew = now
                if not self.is_leader:
                    await self._sleep(RENEW_INTERVAL_S)
                    continue
                if now - last_reap >= REAP_INTERVAL_S:
                    wall = time.time()
                    reaped = await self.store.reap(wall)
                    if reaped:
                        log.info("reaped %d expired leases", len(reaped))
                    await self.store.expire_due(wall)
                    last_reap = now
                settings = self.policy().optimizer
                if settings.enabled and now - last_optimize >= settings.interval_s:
                    await self.book.optimize(await self.book.known())
                    last_optimize = now
                await self.dispatch_once()
                await self._wait_for_events()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler iteration failed; retrying")
                await self._sleep(1.0)

    async def dispatch_once(self) -> int:
        """One round: promote due retries, then fill every link up to its target,
        within the host limits, in fair-share order."""
        now = time.time()
        await self.store.promote_delayed(now)
        queued_links = await self.store.links()
        if not queued_links:
            return 0
        await self.book.remember(queued_links)
        known = await self.book.known()
        targets = await self.book.targets(queued_links)
        async with self.redis.pipeline(transaction=False) as pipe:
            for link in known:
                pipe.scard(f"{self.store.ns}:inflight:{link}")
            counts = await pipe.execute()
        inflight = {link: int(n) for link, n in zip(known, counts, strict=True)}
        by_source: dict[str, int] = {}
        by_dest: dict[str, int] = {}
        for link, n in inflight.items():
            src, dst = host_pair(link)
            by_source[src] = by_source.get(src, 0) + n
            by_dest[dst] = by_dest.get(dst, 0) + n
        policy = self.policy()
        messages = []
        for link in queued_links:
            src, dst = host_pair(link)
            room = targets[link] - inflight.get(link, 0)
            src_cap = policy.limits.host_limit(src, "source")
            dst_cap = policy.limits.host_limit(dst, "destination")
            if src_cap is not None:
                room = min(room, src_cap - by_source.get(src, 0))
            if dst_cap is not None:
                room = min(room, dst_cap - by_dest.get(dst, 0))
            if room <= 0:
                continue
            # the store fills a link up to a total in flight: hand it the total the host
            # caps allow, not the link's target, or the link-queue-only path overshoots
            limit = inflight.get(link, 0) + room
            sent = await self._fill(link, room, limit, now, policy)
            by_source[src] = by_source.get(src, 0) + len(sent)
            by_dest[dst] = by_dest.get(dst, 0) + len(sent)
            messages += [transfer_message(backend, file_id) for file_id, backend in sent]
        if messages:
            await asyncio.to_thread(self._enqueue, messages)
        return len(messages)

    async def _fill(
        self, link: str, room: int, limit: int, now: float, policy: Policy
    ) -> list[tuple[str, str]]:
        """Dispatch up to ``room`` files of ``link``; ``limit`` is the in-flight total
        the store may fill the link to."""
        flows = await self.store.flow_queues(link)
        if not flows:
            # files queued before flows existed sit only in the link queue
            return await self.store.dispatch(link, limit, now)
        picks = fairshare.pick(flows, room, self._passes.get(link, {}), policy.fairshare)
        self._passes[link] = picks.passes
        sent = await self.store.dispatch_fair(link, limit, now, picks.flows)
        return [(file_id, backend) for file_id, backend, _flow in sent]

    def _enqueue(self, messages: list[Message[None]]) -> None:
        for message in messages:
            self.broker.enqueue(message)

    async def _wait_for_events(self) -> None:
        """Block until a file event (a slot may have freed) or a short idle timeout."""
        answer: Any = await self.redis.xread(
            {"td:events": self._last_event_id}, count=1000, block=IDLE_WAKE_MS
        )
        for _stream, entries in answer or []:
            if entries:
                last_id = entries[-1][0]
                self._last_event_id = last_id.decode() if isinstance(last_id, bytes) else last_id

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def stop(self) -> None:
        self._stop.set()
        if self.is_leader:
            with contextlib.suppress(Exception):
                await self._resign(keys=[LEADER_KEY], args=[self.node_id])
            self.is_leader = False
