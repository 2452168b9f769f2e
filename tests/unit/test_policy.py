"""Pure decisions: backoff, retry or dead, tick outcome, sleep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aol import policy
from aol.model import AttemptResult, TickOutcome

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_backoff_doubles_per_attempt_up_to_the_cap() -> None:
    delays = [policy.backoff_delay(n, base=5, cap=60) for n in range(1, 7)]
    assert delays == [5, 10, 20, 40, 60, 60]


def test_backoff_survives_huge_attempt_numbers() -> None:
    assert policy.backoff_delay(10_000, base=5, cap=600) == 600


def test_backoff_refuses_attempt_zero() -> None:
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        policy.backoff_delay(0, base=5, cap=60)


def test_next_run_at_adds_the_delay_to_the_given_clock() -> None:
    assert policy.next_run_at(NOW, 2, base=5, cap=60) == NOW + timedelta(seconds=10)


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "permanent", "expected"),
    [
        (1, 3, False, AttemptResult.RETRY),
        (2, 3, False, AttemptResult.RETRY),
        (3, 3, False, AttemptResult.DEAD),
        (5, 3, False, AttemptResult.DEAD),
        (1, 3, True, AttemptResult.DEAD),
        (1, 1, False, AttemptResult.DEAD),
    ],
)
def test_a_failure_retries_until_the_last_attempt_unless_permanent(
    attempt: int, max_attempts: int, permanent: bool, expected: AttemptResult
) -> None:
    assert (
        policy.after_failure(attempt=attempt, max_attempts=max_attempts, permanent=permanent)
        is expected
    )


def test_tick_outcome() -> None:
    assert policy.tick_outcome(claimed=0, timed_out=False, failed=False) is TickOutcome.IDLE
    assert policy.tick_outcome(claimed=2, timed_out=False, failed=False) is TickOutcome.OK
    assert policy.tick_outcome(claimed=2, timed_out=True, failed=False) is TickOutcome.TIMEOUT
    assert policy.tick_outcome(claimed=0, timed_out=False, failed=True) is TickOutcome.ERROR


def test_sleep_is_bounded_by_the_scan_and_the_next_due_action() -> None:
    assert policy.sleep_seconds(now=NOW, next_due=None, scan_interval=30) == 30
    soon = NOW + timedelta(seconds=2.5)
    assert policy.sleep_seconds(now=NOW, next_due=soon, scan_interval=30) == 2.5
    late = NOW + timedelta(hours=1)
    assert policy.sleep_seconds(now=NOW, next_due=late, scan_interval=30) == 30
    past = NOW - timedelta(seconds=1)
    assert policy.sleep_seconds(now=NOW, next_due=past, scan_interval=30) == 0


@pytest.mark.parametrize(
    ("attempt", "own", "cap", "expected"),
    [
        (2, 5, 2, AttemptResult.DEAD),  # the worker's cap is lower: it wins
        (1, 5, 2, AttemptResult.RETRY),
        (3, 3, 10, AttemptResult.DEAD),  # the action's own limit is lower: it wins
        (2, 3, None, AttemptResult.RETRY),  # no cap
    ],
)
def test_a_workers_cap_lowers_an_actions_own_max_attempts(
    attempt: int, own: int, cap: int | None, expected: AttemptResult
) -> None:
    got = policy.after_failure(attempt=attempt, max_attempts=own, permanent=False, cap=cap)
    assert got is expected
