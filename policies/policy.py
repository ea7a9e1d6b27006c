"""The policy in force: ``policies/default.toml`` overlaid with a deployment's file.

``load_policy(path)`` reads the shipped defaults, overlays ``path`` (a table
merges key by key; any other value replaces), and validates the result into a
:class:`Policy`.  A bad value raises :class:`PolicyError` whose message names
the key, e.g. ``policy: optimizer.min_active: 0 is outside 1..10000``.
``Policy.to_json()`` is what ``GET /api/v1/policy`` answers and what the node
publishes in Redis for its workers.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from policies.chunking import ChunkSettings
from policies.fairshare import FairShareSettings
from policies.optimizer import OptimizerSettings
from policies.routing import BACKENDS, RouteRule

__all__ = [
    "HostLimits",
    "LimitSettings",
    "LinkLimits",
    "Policy",
    "PolicyError",
    "default_data",
    "load_policy",
    "parse_policy",
    "policy_from_json",
]


class PolicyError(ValueError):
    """A policy key is unknown, mistyped or out of range; the message names it."""


@dataclass(frozen=True)
class LinkLimits:
    max_active: int | None = None
    bandwidth_bps: int | None = None


@dataclass(frozen=True)
class HostLimits:
    max_active_source: int | None = None
    max_active_destination: int | None = None


@dataclass(frozen=True)
class LimitSettings:
    """The ``[limits]`` table; None means "no limit here" (or "the node config's", for
    ``link_max_active``)."""

    link_max_active: int | None = None
    link_bandwidth_bps: int | None = None
    host_max_active_source: int | None = None
    host_max_active_destination: int | None = None
    links: Mapping[str, LinkLimits] = field(default_factory=dict)
    hosts: Mapping[str, HostLimits] = field(default_factory=dict)

    def max_active(self, link: str, fallback: int) -> int:
        own = self.links.get(link)
        if own is not None and own.max_active is not None:
            return own.max_active
        return self.link_max_active if self.link_max_active is not None else fallback

    def bandwidth_bps(self, link: str) -> int | None:
        own = self.links.get(link)
        if own is not None and own.bandwidth_bps is not None:
            return own.bandwidth_bps
        return self.link_bandwidth_bps

    def host_limit(self, host: str, side: str) -> int | None:
        """``side`` "source" or "destination": how many transfers may load ``host`` that way."""
        own = self.hosts.get(host)
        value = getattr(own, f"max_active_{side}") if own is not None else None
        return value if value is not None else getattr(self, f"host_max_active_{side}")  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Policy:
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    fairshare: FairShareSettings = field(default_factory=FairShareSettings)
    retry_classes: Mapping[str, bool] = field(default_factory=dict)
    chunking: ChunkSettings = field(default_factory=ChunkSettings)
    routing: tuple[RouteRule, ...] = ()
    source: str = "default"  # where it came from: "default" or the file's path

    def to_json(self) -> dict[str, Any]:
        o, lim, fs, ch = self.optimizer, self.limits, self.fairshare, self.chunking
        return {
            "source": self.source,
            "optimizer": {
                "enabled": o.enabled, "interval_s": o.interval_s, "ema_alpha": o.ema_alpha,
                "min_active": o.min_active, "start_active": o.start_active,
                "success_threshold": o.success_threshold, "drop_factor": o.drop_factor,
                "decisions_kept": o.decisions_kept,
            },
            "limits": {
                "link_max_active": lim.link_max_active,
                "link_bandwidth_bps": lim.link_bandwidth_bps,
                "host_max_active_source": lim.host_max_active_source,
                "host_max_active_destination": lim.host_max_active_destination,
                "links": {k: {"max_active": v.max_active, "bandwidth_bps": v.bandwidth_bps}
                          for k, v in lim.links.items()},
                "hosts": {k: {"max_active_source": v.max_active_source,
                              "max_active_destination": v.max_active_destination}
                          for k, v in lim.hosts.items()},
            },
            "fairshare": {
                "default_weight": fs.default_weight, "tenants": dict(fs.tenants),
                "activities": dict(fs.activities),
                "priority_aging_files": fs.priority_aging_files,
            },
            "retry": {"classes": dict(self.retry_classes)},
            "chunking": {
                "chunk_size_bytes": ch.chunk_size_bytes, "min_chunk_bytes": ch.min_chunk_bytes,
                "max_chunk_bytes": ch.max_chunk_bytes, "max_streams": ch.max_streams,
                "max_chunks": ch.max_chunks, "target_chunk_s": ch.target_chunk_s,
                "chunk_tries": ch.chunk_tries,
            },
            "routing": {"rules": [
                {"backend": r.backend, "schemes": sorted(r.schemes), "hosts": list(r.hosts),
                 "min_size_bytes": r.min_size_bytes, "max_size_bytes": r.max_size_bytes}
                for r in self.routing
            ]},
        }


def policy_from_json(doc: Mapping[str, Any]) -> Policy:
    """The inverse of ``Policy.to_json`` (what workers read from Redis)."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    data = strip(dict(doc))
    source = str(data.pop("source", "redis"))
    for rule in data.get("routing", {}).get("rules", []):
        for key in ("schemes", "hosts"):
            if not rule.get(key):
                rule.pop(key, None)
    return parse_policy(data, source=source)


def default_data() -> dict[str, Any]:
    """The shipped ``policies/default.toml`` as a mapping."""
    text = resources.files("policies").joinpath("default.toml").read_text("utf-8")
    return tomllib.loads(text)


def load_policy(path: Path | str | None = None) -> Policy:
    """The defaults overlaid with ``path`` (if given), validated."""
    data = default_data()
    if path is not None:
        try:
            with open(path, "rb") as fh:
                override = tomllib.load(fh)
        except OSError as exc:
            raise PolicyError(f"policy: cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"policy: {path}: not valid TOML: {exc}") from None
        data = _merge(data, override)
    return parse_policy(data, source=str(path) if path is not None else "default")


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


_SECTIONS = {"optimizer", "limits", "fairshare", "retry", "chunking", "routing"}
_BIG = 10**15


def parse_policy(data: Mapping[str, Any], *, source: str = "default") -> Policy:
    """Validate a mapping shaped like the policy file."""
    _no_unknown(data, _SECTIONS, "")
    opt = _table(data.get("optimizer", {}), "optimizer")
    _no_unknown(opt, set(OptimizerSettings.__dataclass_fields__), "optimizer.")
    start = opt.get("start_active")
    optimizer = OptimizerSettings(
        enabled=_bool(opt, "enabled", "optimizer.enabled", True),
        interval_s=_num(opt, "interval_s", "optimizer.interval_s", 60.0, 0.05, 86_400.0),
        ema_alpha=_num(opt, "ema_alpha", "optimizer.ema_alpha", 0.1, 0.001, 1.0),
        min_active=_int(opt, "min_active", "optimizer.min_active", 2, 1, 10_000),
        start_active=None if start is None else _int(
            opt, "start_active", "optimizer.start_active", 8, 1, 100_000),
        success_threshold=_num(
            opt, "success_threshold", "optimizer.success_threshold", 0.97, 0.0, 1.0),
        drop_factor=_num(opt, "drop_factor", "optimizer.drop_factor", 10.0, 1.0, 1e6),
        decisions_kept=_int(opt, "decisions_kept", "optimizer.decisions_kept", 20, 1, 1000),
    )

    lim = _table(data.get("limits", {}), "limits")
    _no_unknown(lim, {"link_max_active", "link_bandwidth_bps", "host_max_active_source",
                      "host_max_active_destination", "links", "hosts"}, "limits.")
    links: dict[str, LinkLimits] = {}
    for link, raw in _table(lim.get("links", {}), "limits.links").items():
        where = f"limits.links.{link}"
        if "->" not in link:
            raise PolicyError(f'policy: {where}: a link is written "source-host -> dest-host"')
        t = _table(raw, where)
        _no_unknown(t, {"max_active", "bandwidth_bps"}, where + ".")
        links[link] = LinkLimits(
            _opt_int(t, "max_active", where + ".max_active", 1, 100_000),
            _opt_int(t, "bandwidth_bps", where + ".bandwidth_bps", 1, _BIG),
        )
    hosts: dict[str, HostLimits] = {}
    for host, raw in _table(lim.get("hosts", {}), "limits.hosts").items():
        where = f"limits.hosts.{host}"
        t = _table(raw, where)
        _no_unknown(t, {"max_active_source", "max_active_destination"}, where + ".")
        hosts[host.lower()] = HostLimits(
            _opt_int(t, "max_active_source", where + ".max_active_source", 1, 100_000),
            _opt_int(t, "max_active_destination", where + ".max_active_destination", 1, 100_000),
        )
    limits = LimitSettings(
        link_max_active=_opt_int(lim, "link_max_active", "limits.link_max_active", 1, 100_000),
        link_bandwidth_bps=_opt_int(
            lim, "link_bandwidth_bps", "limits.link_bandwidth_bps", 1, _BIG),
        host_max_active_source=_opt_int(
            lim, "host_max_active_source", "limits.host_max_active_source", 1, 100_000),
        host_max_active_destination=_opt_int(
            lim, "host_max_active_destination", "limits.host_max_active_destination", 1, 100_000),
        links=links, hosts=hosts,
    )
    if limits.link_max_active is not None and limits.link_max_active < optimizer.min_active:
        raise PolicyError("policy: limits.link_max_active: below optimizer.min_active")

    fs = _table(data.get("fairshare", {}), "fairshare")
    _no_unknown(fs, {"default_weight", "tenants", "activities", "priority_aging_files"},
                "fairshare.")
    fairshare = FairShareSettings(
        default_weight=_num(fs, "default_weight", "fairshare.default_weight", 1.0, 0.001, 1e6),
        tenants=_weights(fs, "tenants"),
        activities=_weights(fs, "activities"),
        priority_aging_files=_int(
            fs, "priority_aging_files", "fairshare.priority_aging_files", 10_000, 1, 10**9),
    )

    rt = _table(data.get("retry", {}), "retry")
    _no_unknown(rt, {"classes"}, "retry.")
    classes = {k: _bool({k: v}, k, f"retry.classes.{k}", False)
               for k, v in _table(rt.get("classes", {}), "retry.classes").items()}

    ch = _table(data.get("chunking", {}), "chunking")
    _no_unknown(ch, set(ChunkSettings.__dataclass_fields__), "chunking.")
    chunking = ChunkSettings(
        chunk_size_bytes=_int(ch, "chunk_size_bytes", "chunking.chunk_size_bytes",
                              64 << 20, 1, _BIG),
        min_chunk_bytes=_int(ch, "min_chunk_bytes", "chunking.min_chunk_bytes", 8 << 20, 1, _BIG),
        max_chunk_bytes=_int(ch, "max_chunk_bytes", "chunking.max_chunk_bytes",
                             512 << 20, 1, _BIG),
        max_streams=_int(ch, "max_streams", "chunking.max_streams", 4, 1, 64),
        max_chunks=_int(ch, "max_chunks", "chunking.max_chunks", 10_000, 1, 10**7),
        target_chunk_s=_num(ch, "target_chunk_s", "chunking.target_chunk_s", 4.0, 0.01, 3600.0),
        chunk_tries=_int(ch, "chunk_tries", "chunking.chunk_tries", 4, 1, 100),
    )
    if chunking.min_chunk_bytes > chunking.max_chunk_bytes:
        raise PolicyError("policy: chunking.min_chunk_bytes: larger than max_chunk_bytes")

    ro = _table(data.get("routing", {}), "routing")
    _no_unknown(ro, {"rules"}, "routing.")
    raw_rules = ro.get("rules", [])
    if not isinstance(raw_rules, list):
        raise PolicyError("policy: routing.rules: expected a list of tables ([[routing.rules]])")
    rules = tuple(_rule(r, f"routing.rules[{i}]") for i, r in enumerate(raw_rules))
    return Policy(optimizer, limits, fairshare, classes, chunking, rules, source)


def _rule(raw: Any, where: str) -> RouteRule:
    t = _table(raw, where)
    _no_unknown(t, {"backend", "schemes", "hosts", "min_size_bytes", "max_size_bytes"},
                where + ".")
    backend = t.get("backend")
    if backend not in BACKENDS:
        raise PolicyError(f"policy: {where}.backend: expected one of {', '.join(sorted(BACKENDS))}")
    return RouteRule(
        backend=backend,
        schemes=frozenset(s.lower() for s in _strs(t, "schemes", where + ".schemes")),
        hosts=tuple(h.lower() for h in _strs(t, "hosts", where + ".hosts")),
        min_size_bytes=_opt_int(t, "min_size_bytes", where + ".min_size_bytes", 0, 2**62),
        max_size_bytes=_opt_int(t, "max_size_bytes", where + ".max_size_bytes", 0, 2**62),
    )


def _weights(table: Mapping[str, Any], key: str) -> dict[str, float]:
    where = f"fairshare.{key}"
    return {name: _num({name: v}, name, f"{where}.{name}", 1.0, 0.001, 1e6)
            for name, v in _table(table.get(key, {}), where).items()}


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _no_unknown(table: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    for key in table:
        if key not in allowed:
            raise PolicyError(f"policy: {prefix}{key}: unknown setting")


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PolicyError(f"policy: {where}: expected a table, got {_kind(value)}")
    return value


def _bool(table: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise PolicyError(f"policy: {where}: expected true or false, got {_kind(value)}")
    return value


def _int(table: Mapping[str, Any], key: str, where: str, default: int, lo: int, hi: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"policy: {where}: expected an integer, got {_kind(value)}")
    if not lo <= value <= hi:
        raise PolicyError(f"policy: {where}: {value} is outside {lo}..{hi}")
    return value


def _opt_int(table: Mapping[str, Any], key: str, where: str, lo: int, hi: int) -> int | None:
    return None if table.get(key) is None else _int(table, key, where, 0, lo, hi)


def _num(
    table: Mapping[str, Any], key: str, where: str, default: float, lo: float, hi: float
) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"policy: {where}: expected a number, got {_kind(value)}")
    if not lo <= value <= hi:
        raise PolicyError(f"policy: {where}: {value} is outside {lo}..{hi}")
    return float(value)


def _strs(table: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"policy: {where}: expected a list of strings")
    return list(value)
