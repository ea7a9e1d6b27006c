"""How many transfers a link runs at once: an FTS-style optimizer step, as a pure function.

Every ``interval_s`` the scheduler's leader feeds each link's last window (files
that succeeded and failed, bytes moved, queue length, transfers in flight) to
:func:`step`, which returns the new target and a one-line rationale
(PROTOCOLS.md §3, after FTS3's optimizer):

1. nothing happened and nothing waits: hold;
2. success rate below ``success_threshold``: one fewer;
3. throughput fell by an order of magnitude (below EMA / ``drop_factor``): one fewer;
4. throughput holds or improves and more files wait than run: one more;
5. otherwise hold.

The target always stays within [min_active, max_active].
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer's knobs (the ``[optimizer]`` table of the policy file)."""

    enabled: bool = True
    interval_s: float = 60.0
    ema_alpha: float = 0.1
    min_active: int = 2
    start_active: int | None = None  # None: a new link starts at its max_active
    success_threshold: float = 0.97
    drop_factor: float = 10.0
    decisions_kept: int = 20


@dataclass(frozen=True)
class LinkWindow:
    """What one link did during the last interval, and where it stands now."""

    successes: int
    failures: int
    bytes_moved: int
    elapsed_s: float
    queued: int
    active: int


@dataclass(frozen=True)
class Decision:
    """The optimizer's answer: the new target, the new EMA, and why in one line."""

    target: int
    ema_bps: float
    throughput_bps: float
    success_rate: float | None
    rationale: str


def clamp(value: int, low: int, high: int) -> int:
    """``value`` within [low, high]; when low > high, high wins (a ceiling is a limit)."""
    return max(min(value, high), min(low, high))


def start_target(settings: OptimizerSettings, max_active: int) -> int:
    """The target of a link the optimizer has not seen before."""
    start = max_active if settings.start_active is None else settings.start_active
    return clamp(start, settings.min_active, max_active)


def step(
    window: LinkWindow,
    target: int,
    ema_bps: float | None,
    settings: OptimizerSettings,
    max_active: int,
) -> Decision:
    """One optimizer step for one link.

    ``ema_bps`` is the throughput EMA before this window (None: no sample yet,
    the first sample becomes the EMA).  ``max_active`` is the link's ceiling
    from the limits; ``target`` the current target.
    """
    lo, hi = settings.min_active, max_active
    current = clamp(target, lo, hi)
    throughput = window.bytes_moved / window.elapsed_s if window.elapsed_s > 0 else 0.0
    outcomes = window.successes + window.failures
    rate = window.successes / outcomes if outcomes else None
    busy = outcomes > 0 or window.active > 0 or window.bytes_moved > 0
    if not busy:
        why = "idle" if window.queued == 0 else "no outcome yet"
        return Decision(current, ema_bps or 0.0, throughput, rate, f"{why}: hold at {current}")
    if ema_bps is None:
        new_ema = throughput
    else:
        new_ema = settings.ema_alpha * throughput + (1.0 - settings.ema_alpha) * ema_bps
    def done(value: int, why: str) -> Decision:
        value = clamp(value, lo, hi)
        return Decision(value, new_ema, throughput, rate, why.format(value=value))

    if rate is not None and rate < settings.success_threshold:
        return done(
            current - 1,
            f"success rate {rate:.0%} < {settings.success_threshold:.0%}: "
            f"{current} -> {{value}}",
        )
    if ema_bps is not None and ema_bps > 0 and throughput < ema_bps / settings.drop_factor:
        return done(
            current - 1,
            f"throughput {_bps(throughput)} fell below EMA {_bps(ema_bps)} / "
            f"{settings.drop_factor:g}: {current} -> {{value}}",
        )
    improving = ema_bps is None or new_ema >= ema_bps
    if improving and window.queued > window.active:
        if current >= hi:
            return done(current, f"throughput {_bps(new_ema)} EMA holds; at max {{value}}")
        return done(
            current + 1,
            f"throughput EMA {_bps(new_ema)} holds or improves and {window.queued} queued > "
            f"{window.active} active: {current} -> {{value}}",
        )
    if not improving:
        return done(current, f"throughput EMA {_bps(new_ema)} not improving: hold at {{value}}")
    return done(
        current, f"{window.queued} queued ≤ {window.active} active: hold at {{value}}"
    )


def _bps(value: float) -> str:
    for unit, size in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B/s"
