"""When a failed file is tried again: exponential backoff with jitter, as a pure function."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MAX_DELAY_S = 3600.0
JITTER_FRACTION = 0.1  # the delay varies by up to ±10 % so retries of one burst spread out
_MAX_EXPONENT = 64  # 2**64 × any sane base is far above the cap; avoids float overflow


def backoff_s(
    attempts: int,
    retry_delay_s: float,
    *,
    retry_after_s: float | None = None,
    jitter: float = 0.0,
) -> float:
    """Seconds to wait after the ``attempts``-th failed try.

    ``retry_delay_s * 2**(attempts-1)``, capped at one hour, scaled by
    ``1 + JITTER_FRACTION * jitter`` (``jitter`` in [-1, 1], the caller's random
    draw, so this stays deterministic); a peer's ``Retry-After`` wins when larger.
    """
    exponent = min(max(attempts, 1) - 1, _MAX_EXPONENT)
    delay = min(retry_delay_s * 2.0**exponent, MAX_DELAY_S)
    delay *= 1.0 + JITTER_FRACTION * max(-1.0, min(1.0, jitter))
    if retry_after_s is not None and retry_after_s > delay:
        delay = retry_after_s
    return max(0.0, delay)


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_s: float
    rationale: str


def decide(
    *,
    retryable: bool,
    attempts: int,
    max_retries: int,
    retry_delay_s: float,
    retry_after_s: float | None = None,
    jitter: float = 0.0,
) -> RetryDecision:
    """Whether a failed file goes back to the queue, after how long, and why in one line.

    ``attempts`` counts the tries made so far, this one included, so a file gets
    ``max_retries + 1`` tries in all.
    """
    if not retryable:
        return RetryDecision(False, 0.0, "permanent error: not retried")
    if attempts > max_retries:
        return RetryDecision(
            False, 0.0, f"attempt {attempts} failed and max_retries={max_retries} is spent"
        )
    delay = backoff_s(attempts, retry_delay_s, retry_after_s=retry_after_s, jitter=jitter)
    return RetryDecision(True, delay, f"attempt {attempts} failed: retry in {delay:.1f} s")


def retryable(error_class: str, default: bool, classes: Mapping[str, bool]) -> bool:
    """Whether a failure of ``error_class`` may be retried: the policy's
    ``[retry.classes]`` entry when it names the class, else the error's own ``default``."""
    return classes.get(error_class, default)
