"""Per-link state in Redis: counters, the optimizer's target and its recent decisions.

The store's scripts count, per link, in ``td:lstat:{link}`` (a hash): ``bytes``
moved (live, from heartbeats and the final report), ``ok`` and ``fail``
attempts and their summed durations ``ok_s`` / ``fail_s``.  The scheduler's
leader runs :meth:`LinkBook.optimize` every ``optimizer.interval_s``: it turns
the counters' change since the last run into a ``policies.optimizer.LinkWindow``,
takes the pure step, and stores

- ``td:opt:{link}`` hash: target, ema_bps, throughput_bps, success_rate,
  max_active, ts and the counters as of ts (so a new leader continues); workers
  add ``rtt_s``, an EMA of the quickest response per file (``record_rtt``);
- ``td:opt:{link}:log`` list: the last ``decisions_kept`` decisions as JSON
  {ts, target, previous, rationale, inputs};
- ``td:opt:links`` set: every link the optimizer has seen.

``GET /api/v1/links`` reads all of it through :meth:`LinkBook.view`.
The node also publishes the policy in force for workers here (``publish_policy``):
``td:policy`` (JSON) and ``td:fair:aging`` (read by the queue scripts).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from redis.asyncio import Redis

from policies import optimizer
from policies.policy import Policy
from transferd.states import FileState

log = logging.getLogger(__name__)

__all__ = ["LinkBook", "host_pair", "publish_policy", "record_rtt"]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _num(value: object, default: float = 0.0) -> float:
    try:
        return float(_text(value)) if value not in (None, b"", "") else default
    except ValueError:
        return default


def host_pair(link: str) -> tuple[str, str]:
    """(source host, destination host) of a link name ``"src -> dst"``."""
    src, _, dst = link.partition(" -> ")
    return src, dst


async def publish_policy(redis: Redis, policy: Policy, namespace: str = "td") -> None:
    """Make ``policy`` the one workers and queue scripts use."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(f"{namespace}:policy", json.dumps(policy.to_json()))
        pipe.set(f"{namespace}:fair:aging", policy.fairshare.priority_aging_files)
        await pipe.execute()


# EMA of the round trip in td:opt:{link} (field rtt_s); workers add samples.
_RTT_EMA = """
local old = tonumber(redis.call('HGET', KEYS[1], 'rtt_s'))
local sample = tonumber(ARGV[1])
local new = sample
if old then new = old + tonumber(ARGV[2]) * (sample - old) end
redis.call('HSET', KEYS[1], 'rtt_s', tostring(new))
return tostring(new)
"""
RTT_EMA_ALPHA = 0.3


async def record_rtt(redis: Redis, link: str, rtt_s: float, namespace: str = "td") -> None:
    """Fold one round-trip sample of ``link`` (seconds) into its EMA (read by chunk tuning)."""
    await redis.eval(_RTT_EMA, 1, f"{namespace}:opt:{link}", repr(rtt_s), repr(RTT_EMA_ALPHA))


class LinkBook:
    """Reads and writes the per-link keys; ``max_active`` maps a link to its ceiling."""

    def __init__(
        self,
        redis: Redis,
        policy: Callable[[], Policy],
        link_limit: Callable[[str], int],
        *,
        namespace: str = "td",
    ) -> None:
        self.redis = redis
        self.policy = policy
        self.link_limit = link_limit
        self.ns = namespace

    def _k(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    def max_active(self, link: str) -> int:
        return self.policy().limits.max_active(link, self.link_limit(link))

    async def known(self) -> list[str]:
        names = {_text(m) for m in await self.redis.smembers(self._k("opt", "links"))}
        names |= {_text(m) for m in await self.redis.smembers(self._k("links"))}
        return sorted(names)

    async def remember(self, links: Iterable[str]) -> None:
        links = list(links)
        if links:
            await self.redis.sadd(self._k("opt", "links"), *links)

    async def targets(self, links: Iterable[str]) -> dict[str, int]:
        """The concurrency each link may run now: the optimizer's target within the
        link's ceiling, or the ceiling itself when the optimizer is off."""
        links = list(links)
        settings = self.policy().optimizer
        if not settings.enabled or not links:
            return {link: self.max_active(link) for link in links}
        async with self.redis.pipeline(transaction=False) as pipe:
            for link in links:
                pipe.hget(self._k("opt", link), "target")
            raws = await pipe.execute()
        out: dict[str, int] = {}
        for link, raw in zip(links, raws, strict=True):
            ceiling = self.max_active(link)
            if raw is None:
                out[link] = optimizer.start_target(settings, ceiling)
            else:
                out[link] = optimizer.clamp(int(_num(raw)), settings.min_active, ceiling)
        return out

    async def optimize(self, links: Iterable[str], now: float | None = None) -> dict[str, int]:
        """One optimizer step for every link; returns the new targets."""
        now = time.time() if now is None else now
        settings = self.policy().optimizer
        targets: dict[str, int] = {}
        for link in links:
            targets[link] = await self._step(link, settings, now)
        return targets

    async def _step(self, link: str, settings: optimizer.OptimizerSettings, now: float) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._k("lstat", link))
            pipe.hgetall(self._k("opt", link))
            pipe.zcard(self._k("q", link))
            pipe.smembers(self._k("inflight", link))
            stat_raw, opt_raw, queued, members = await pipe.execute()
        stat = {_text(k): _num(v) for k, v in stat_raw.items()}
        opt = {_text(k): _text(v) for k, v in opt_raw.items()}
        active = await self._active(members)
        ceiling = self.max_active(link)
        counters = {k: stat.get(k, 0.0) for k in ("ok", "fail", "bytes")}
        if not opt:
            target = optimizer.start_target(settings, ceiling)
            await self._save(link, now, target, None, counters, ceiling, None, None)
            return target
        last_ts = _num(opt.get("ts"), now)
        window = optimizer.LinkWindow(
            successes=max(0, int(counters["ok"] - _num(opt.get("ok")))),
            failures=max(0, int(counters["fail"] - _num(opt.get("fail")))),
            bytes_moved=max(0, int(counters["bytes"] - _num(opt.get("bytes")))),
            elapsed_s=max(1e-3, now - last_ts),
            queued=int(queued),
            active=active,
        )
        previous = int(_num(opt.get("target"), optimizer.start_target(settings, ceiling)))
        ema = _num(opt["ema_bps"]) if opt.get("ema_bps") else None
        decision = optimizer.step(window, previous, ema, settings, ceiling)
        entry = {
            "ts": now, "target": decision.target, "previous": previous,
            "rationale": decision.rationale,
            "inputs": {
                "successes": window.successes, "failures": window.failures,
                "bytes_moved": window.bytes_moved, "elapsed_s": round(window.elapsed_s, 3),
                "queued": window.queued, "active": window.active,
                "throughput_bps": decision.throughput_bps, "ema_bps_before": ema,
                "max_active": ceiling,
            },
        }
        busy = window.successes or window.failures or window.active or window.bytes_moved
        # an idle window leaves no sample: the first busy one seeds the EMA
        await self._save(link, now, decision.target, decision if busy or ema else None,
                         counters, ceiling, entry if busy else None, settings.decisions_kept)
        if decision.target != previous:
            log.info("optimizer %s: %s", link, decision.rationale)
        return decision.target

    async def _active(self, members: Iterable[Any]) -> int:
        ids = [_text(m) for m in members]
        if not ids:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for fid in ids:
                pipe.hget(self._k("file", fid), "state")
            states = await pipe.execute()
        return sum(1 for s in states if s is not None and _text(s) == FileState.ACTIVE.value)

    async def _save(
        self,
        link: str,
        now: float,
        target: int,
        decision: optimizer.Decision | None,
        counters: Mapping[str, float],
        ceiling: int,
        entry: dict[str, Any] | None,
        keep: int | None,
    ) -> None:
        fields: dict[Any, Any] = {
            "target": target, "ts": repr(now), "max_active": ceiling,
            **{k: int(v) for k, v in counters.items()},
        }
        if decision is not None:
            fields["ema_bps"] = repr(decision.ema_bps)
            fields["throughput_bps"] = repr(decision.throughput_bps)
            if decision.success_rate is not None:
                fields["success_rate"] = repr(decision.success_rate)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._k("opt", link), mapping=fields)
            pipe.sadd(self._k("opt", "links"), link)
            if entry is not None and keep is not None:
                log_key = self._k("opt", link, "log")
                pipe.lpush(log_key, json.dumps(entry))
                pipe.ltrim(log_key, 0, keep - 1)
            await pipe.execute()

    async def view(self) -> list[dict[str, Any]]:
        """Every known link: actives, target, queue, throughput, success rate, decisions."""
        links = await self.known()
        targets = await self.targets(links)
        policy = self.policy()
        out: list[dict[str, Any]] = []
        for link in links:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._k("lstat", link))
                pipe.hgetall(self._k("opt", link))
                pipe.zcard(self._k("q", link))
                pipe.smembers(self._k("inflight", link))
                pipe.lrange(self._k("opt", link, "log"), 0, -1)
                stat_raw, opt_raw, queued, members, log_raw = await pipe.execute()
            stat = {_text(k): _num(v) for k, v in stat_raw.items()}
            opt = {_text(k): _text(v) for k, v in opt_raw.items()}
            ok, fail = int(stat.get("ok", 0)), int(stat.get("fail", 0))
            active = await self._active(members)
            out.append({
                "link": link,
                "active": active,
                "inflight": len(members),
                "queued": int(queued),
                "target": targets[link],
                "max_active": self.max_active(link),
                "min_active": policy.optimizer.min_active,
                "optimizer": policy.optimizer.enabled,
                "throughput_bps": _num(opt.get("ema_bps")),
                "last_throughput_bps": _num(opt.get("throughput_bps")),
                "rtt_s": _num(opt["rtt_s"]) if opt.get("rtt_s") else None,
                "success_rate": _num(opt["success_rate"]) if opt.get("success_rate") else None,
                "successes": ok,
                "failures": fail,
                "success_rate_total": ok / (ok + fail) if ok + fail else None,
                "bytes": int(stat.get("bytes", 0)),
                "mean_duration_s": stat.get("ok_s", 0.0) / ok if ok else None,
                "bandwidth_bps": policy.limits.bandwidth_bps(link),
                "decisions": [json.loads(_text(e)) for e in log_raw],
            })
        return out
