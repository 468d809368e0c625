"""The retry policy as a table: (schedule, attempts done, Retry-After, rng draw) → delay."""

from __future__ import annotations

import pytest

from shim.core import MAX_RETRY_AFTER_S, next_delay, parse_retry_after

SCHEDULE = [10.0, 100.0, 1000.0]


@pytest.mark.parametrize(
    ("attempts", "retry_after", "draw", "expected"),
    [
        (1, None, 0.5, 10.0),  # the middle of the jitter band is the schedule's value
        (1, None, 0.0, 8.0),  # -20%
        (1, None, 0.999999, 11.999998),  # just under +20%
        (2, None, 0.5, 100.0),
        (3, None, 0.25, 900.0),
        (4, None, 0.5, None),  # schedule exhausted: dead letter
        (0, None, 0.5, None),  # nothing failed yet: no retry to schedule
        (1, 300.0, 0.5, 300.0),  # Retry-After longer than the schedule wins
        (2, 30.0, 0.5, 100.0),  # ...but never shortens it
        (1, 10 * 86_400.0, 0.5, float(MAX_RETRY_AFTER_S)),  # capped at a day
        (4, 300.0, 0.5, None),  # Retry-After does not revive an exhausted schedule
    ],
)
def test_next_delay(attempts: int, retry_after: float | None, draw: float, expected: float | None) -> None:
    got = next_delay(SCHEDULE, attempts, retry_after, lambda: draw)
    assert got == pytest.approx(expected) if expected is not None else got is None


NOW = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Wed, 21 Oct 2015 07:30:00 GMT", 120.0),
        ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),  # in the past: now
        ("soon", None),
        ("", None),
        (None, None),
        ("-5", None),
        ("\u00b2", None),  # "²": a digit to str.isdigit(), not to float()
        ("Wed, 21 Oct 2015 07:28:00", None),  # no zone: not an HTTP date
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, NOW) == expected
