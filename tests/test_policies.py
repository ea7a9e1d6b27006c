"""policies: the optimizer step, fair share, chunk tuning, routing rules, retry classes,
the policy file, and the token bucket's arithmetic — table by table."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from policies.chunking import ChunkSettings, LinkStats, tune
from policies.fairshare import FairShareSettings, flow_score, pick
from policies.optimizer import LinkWindow, OptimizerSettings, clamp, start_target, step
from policies.policy import PolicyError, load_policy, parse_policy, policy_from_json
from policies.retry import retryable
from policies.routing import RouteRule, route
from workers.stream.limiter import TokenBucket

MiB = 1024 * 1024
S = OptimizerSettings(min_active=2)


def w(ok: int = 0, fail: int = 0, bytes_: int = 0, queued: int = 0, active: int = 0,
      elapsed_s: float = 1.0) -> LinkWindow:
    return LinkWindow(ok, fail, bytes_, elapsed_s, queued, active)


@pytest.mark.parametrize(
    ("window", "target", "ema", "max_active", "expected", "why"),
    [
        (w(), 5, 100.0, 10, 5, "idle: hold"),
        (w(queued=3), 5, None, 10, 5, "no outcome yet"),
        (w(ok=90, fail=10, bytes_=1000, queued=50, active=5), 5, 1000.0, 10, 4, "success rate 90%"),
        (w(ok=0, fail=3, queued=50, active=5), 2, 1000.0, 10, 2, "success rate 0%"),  # floor
        (w(ok=97, fail=3, bytes_=1000, queued=50, active=5), 5, 1000.0, 10, 6, "improves"),
        (w(ok=10, bytes_=50, queued=50, active=5), 5, 1000.0, 10, 4, "fell below EMA"),
        (w(ok=10, bytes_=500, queued=50, active=5), 5, 1000.0, 10, 5, "not improving"),
        (w(ok=10, bytes_=2000, queued=3, active=5), 5, 1000.0, 10, 5, "queued ≤"),
        (w(ok=10, bytes_=2000, queued=50, active=10), 10, 1000.0, 10, 10, "at max"),
        (w(ok=10, bytes_=2000, queued=50, active=5), 5, None, 10, 6, "improves"),  # first sample
        (w(ok=10, bytes_=2000, queued=50, active=5), 15, 1000.0, 10, 10, "at max"),  # ceiling fell
        (w(ok=10, bytes_=2000, queued=50, active=1), 1, 1000.0, 10, 3, "improves"),  # below min
    ],
)
def test_optimizer_step(window: LinkWindow, target: int, ema: float | None, max_active: int,
                        expected: int, why: str) -> None:
    decision = step(window, target, ema, S, max_active)
    assert decision.target == expected
    assert why in decision.rationale
    assert "\n" not in decision.rationale


@pytest.mark.parametrize(
    ("ema", "sample", "alpha", "expected"),
    [(None, 500.0, 0.1, 500.0), (1000.0, 2000.0, 0.1, 1100.0), (1000.0, 0.0, 0.5, 500.0)],
)
def test_optimizer_ema(ema: float | None, sample: float, alpha: float, expected: float) -> None:
    settings = OptimizerSettings(ema_alpha=alpha, drop_factor=1e6)
    decision = step(w(ok=1, bytes_=int(sample), active=1), 4, ema, settings, 10)
    assert decision.ema_bps == pytest.approx(expected)
    assert decision.throughput_bps == pytest.approx(sample)


@pytest.mark.parametrize(
    ("value", "low", "high", "expected"),
    [(5, 2, 10, 5), (1, 2, 10, 2), (11, 2, 10, 10), (5, 4, 3, 3)],
)
def test_clamp(value: int, low: int, high: int, expected: int) -> None:
    assert clamp(value, low, high) == expected


@pytest.mark.parametrize(
    ("start", "min_active", "max_active", "expected"),
    [(None, 2, 8, 8), (3, 2, 8, 3), (1, 2, 8, 2), (20, 2, 8, 8)],
)
def test_start_target(start: int | None, min_active: int, max_active: int, expected: int) -> None:
    settings = OptimizerSettings(min_active=min_active, start_active=start)
    assert start_target(settings, max_active) == expected


@pytest.mark.parametrize(
    ("queued", "room", "settings", "expected"),
    [
        ({"a|x": 10, "b|x": 10}, 4, FairShareSettings(), {"a|x": 2, "b|x": 2}),
        ({"a|x": 10, "b|x": 1}, 4, FairShareSettings(), {"a|x": 3, "b|x": 1}),  # b runs dry
        ({"a|x": 100, "b|x": 100}, 30, FairShareSettings(tenants={"a": 2.0}),
         {"a|x": 20, "b|x": 10}),
        ({"a|x": 100, "a|y": 100, "b|x": 100}, 40, FairShareSettings(),
         {"a|x": 10, "a|y": 10, "b|x": 20}),  # tenants first, then activities
        ({"a|x": 100, "a|y": 100}, 40, FairShareSettings(activities={"y": 3.0}),
         {"a|x": 10, "a|y": 30}),
        ({"a|x": 5}, 0, FairShareSettings(), {}),
        ({}, 5, FairShareSettings(), {}),
    ],
)
def test_fair_share_pick(queued: dict[str, int], room: int, settings: FairShareSettings,
                         expected: dict[str, int]) -> None:
    assert Counter(pick(queued, room, {}, settings).flows) == Counter(expected)


def test_fair_share_is_fair_one_pick_at_a_time_and_a_newcomer_gets_no_credit() -> None:
    passes: dict[str, float] = {}
    counts: Counter[str] = Counter()
    for _ in range(100):  # one slot frees at a time, as when files finish one by one
        picks = pick({"a|x": 1000, "b|x": 1000}, 1, passes, FairShareSettings())
        passes = picks.passes
        counts.update(picks.flows)
    assert counts == {"a|x": 50, "b|x": 50}
    # c arrives late: it shares from now on, it does not catch up on the past
    later = pick({"a|x": 1000, "b|x": 1000, "c|x": 1000}, 30, passes, FairShareSettings())
    assert Counter(later.flows) == {"a|x": 10, "b|x": 10, "c|x": 10}


@pytest.mark.parametrize(
    ("priority", "seq", "aging", "expected"),
    [(3, 100, 10, 70), (5, 100, 10, 50), (1, 100, 10, 90), (9, 0, 1, -9)],
)
def test_flow_score(priority: int, seq: int, aging: int, expected: int) -> None:
    assert flow_score(priority, seq, aging) == expected


def test_priority_ages_so_a_low_priority_file_is_not_starved() -> None:
    low = flow_score(1, 0, 100)  # queued first
    assert flow_score(5, 399, 100) < low  # newer high-priority files go first...
    assert flow_score(5, 401, 100) > low  # ...until the low one has waited 400 arrivals


@pytest.mark.parametrize(
    ("size", "link", "expected_chunk", "expected_streams"),
    [
        (10 * 1024 * MiB, LinkStats(), 64 * MiB, 4),  # unknown link: the base
        (10 * 1024 * MiB, LinkStats(throughput_bps=80 * MiB, active=4), 80 * MiB, 4),
        (10 * 1024 * MiB, LinkStats(throughput_bps=1 * MiB, active=4), 8 * MiB, 4),  # min
        (10 * 1024 * MiB, LinkStats(throughput_bps=10_000 * MiB, active=1), 512 * MiB, 4),  # max
        (10 * 1024 * MiB, LinkStats(throughput_bps=80 * MiB, rtt_s=0.001, active=4), 80 * MiB, 1),
        (10 * 1024 * MiB, LinkStats(throughput_bps=80 * MiB, rtt_s=0.2, active=4), 80 * MiB, 4),
        (100 * MiB, LinkStats(throughput_bps=80 * MiB, active=4), 80 * MiB, 2),  # 2 chunks
    ],
)
def test_chunk_tuning(size: int, link: LinkStats, expected_chunk: int,
                      expected_streams: int) -> None:
    policy, why = tune(size, link, ChunkSettings())
    assert (policy.chunk_size_bytes, policy.max_streams) == (expected_chunk, expected_streams)
    assert why


FTS_RULE = RouteRule("fts", hosts=("*.cern.ch",))
BIG_RCLONE = RouteRule("rclone", schemes=frozenset({"https"}), min_size_bytes=1000)


@pytest.mark.parametrize(
    ("source", "backend_param", "size", "expected"),
    [
        ("https://eos.cern.ch/a", None, None, "fts"),
        ("https://eos.cern.ch/a", "stream", None, "stream"),  # explicit wins
        ("https://x.org/a", None, 5000, "rclone"),
        ("https://x.org/a", None, 10, "stream"),
        ("https://x.org/a", None, None, "stream"),  # unknown size: a size rule does not match
        ("http://x.org/a", None, 5000, "stream"),
        ("rucio://scope/name", None, None, "rucio"),
    ],
)
def test_routing_rules(source: str, backend_param: str | None, size: int | None,
                       expected: str) -> None:
    assert route(source, "file:///d/a", backend_param, size=size,
                 rules=(FTS_RULE, BIG_RCLONE)) == expected


@pytest.mark.parametrize(
    ("error_class", "default", "classes", "expected"),
    [("transient", True, {}, True), ("not_found", False, {"not_found": True}, True),
     ("transient", True, {"transient": False}, False), ("auth", False, {"x": True}, False)],
)
def test_retry_classes(error_class: str, default: bool, classes: dict[str, bool],
                       expected: bool) -> None:
    assert retryable(error_class, default, classes) is expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[optimizer]\nmin_active = 0", "policy: optimizer.min_active: 0 is outside 1..10000"),
        ("[optimizer]\ninterval = 5", "policy: optimizer.interval: unknown setting"),
        ("[optimizer]\nenabled = 1", "policy: optimizer.enabled: expected true or false"),
        ("[limits.links.nolink]\nmax_active = 3", "policy: limits.links.nolink: a link is"),
        ('[limits.links."a -> b"]\nbandwidth_bps = "fast"',
         "policy: limits.links.a -> b.bandwidth_bps: expected an integer"),
        ("[fairshare.tenants]\nalice = -1", "policy: fairshare.tenants.alice: -1 is outside"),
        ("[retry.classes]\ntransient = 3", "policy: retry.classes.transient: expected true"),
        ('[[routing.rules]]\nbackend = "ftp"', "policy: routing.rules[0].backend: expected one"),
        ("[chunking]\nmin_chunk_bytes = 9\nmax_chunk_bytes = 8",
         "policy: chunking.min_chunk_bytes: larger than max_chunk_bytes"),
        ("[bogus]", "policy: bogus: unknown setting"),
        ("[optimizer", "not valid TOML"),
    ],
)
def test_policy_file_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert message in str(err.value)


def test_policy_file_overlays_the_defaults_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        '[optimizer]\ninterval_s = 0.5\n[limits.links."a -> b"]\nbandwidth_bps = 50000000\n'
        '[fairshare.tenants]\nlofar = 3\n'
        '[[routing.rules]]\nbackend = "fts"\nhosts = ["*.cern.ch"]\n'
    )
    policy = load_policy(path)
    assert policy.optimizer.interval_s == 0.5
    assert policy.optimizer.ema_alpha == 0.1  # from default.toml
    assert policy.limits.bandwidth_bps("a -> b") == 50_000_000
    assert policy.limits.bandwidth_bps("a -> c") is None
    assert policy.fairshare.tenant_weight("lofar") == 3.0
    assert policy.routing == (RouteRule("fts", hosts=("*.cern.ch",)),)
    again = policy_from_json(policy.to_json())
    assert again.to_json() == policy.to_json()
    assert parse_policy({}).to_json()["optimizer"] == load_policy().to_json()["optimizer"]


@pytest.mark.parametrize(
    ("rate_bps", "takes", "expected_wait_s"),
    [(1000.0, [100_000], 100.0 - 65.536), (1e6, [10_000], 0.0), (1e6, [65_536, 1_000_000], 1.0)],
)
def test_token_bucket_debt(rate_bps: float, takes: list[int], expected_wait_s: float) -> None:
    bucket = TokenBucket(rate_bps)
    bucket._tokens = bucket.burst_bytes  # a full bucket
    waits = [bucket.delay_s(n) for n in takes]
    assert waits[-1] == pytest.approx(expected_wait_s, abs=0.01)
