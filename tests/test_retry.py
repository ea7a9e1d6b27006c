"""policies.retry: backoff and the retry decision, table by table."""

from __future__ import annotations

import pytest

from policies.retry import MAX_DELAY_S, backoff_s, decide


@pytest.mark.parametrize(
    ("attempts", "base_s", "retry_after_s", "jitter", "expected_s"),
    [
        (1, 5.0, None, 0.0, 5.0),
        (2, 5.0, None, 0.0, 10.0),
        (3, 5.0, None, 0.0, 20.0),
        (0, 5.0, None, 0.0, 5.0),  # a release never counted: treated as the first
        (1, 5.0, None, 1.0, 5.5),  # +10 %
        (1, 5.0, None, -1.0, 4.5),  # -10 %
        (1, 5.0, None, 7.0, 5.5),  # jitter draws are clamped to [-1, 1]
        (20, 5.0, None, 0.0, MAX_DELAY_S),  # capped at an hour
        (5000, 5.0, None, 0.0, MAX_DELAY_S),  # no float overflow
        (20, 5.0, None, 1.0, MAX_DELAY_S * 1.1),  # jitter applies after the cap
        (1, 5.0, 60.0, 0.0, 60.0),  # Retry-After larger: it wins
        (3, 5.0, 2.0, 0.0, 20.0),  # Retry-After smaller: backoff wins
        (1, 0.0, None, 0.0, 0.0),
    ],
)
def test_backoff(
    attempts: int, base_s: float, retry_after_s: float | None, jitter: float, expected_s: float
) -> None:
    assert backoff_s(attempts, base_s, retry_after_s=retry_after_s, jitter=jitter) == (
        pytest.approx(expected_s)
    )


@pytest.mark.parametrize(
    ("retryable", "attempts", "max_retries", "retry", "delay_s"),
    [
        (True, 1, 3, True, 5.0),
        (True, 3, 3, True, 20.0),  # the third try failed, one retry left
        (True, 4, 3, False, 0.0),  # max_retries + 1 tries made
        (True, 1, 0, False, 0.0),
        (False, 1, 3, False, 0.0),
    ],
)
def test_decide(
    retryable: bool, attempts: int, max_retries: int, retry: bool, delay_s: float
) -> None:
    decision = decide(
        retryable=retryable, attempts=attempts, max_retries=max_retries, retry_delay_s=5.0
    )
    assert decision.retry == retry
    assert decision.delay_s == pytest.approx(delay_s)
    assert decision.rationale
