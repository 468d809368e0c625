"""The callback retry policy, as a pure function of (schedule, attempt, Retry-After, rng)."""

from __future__ import annotations

from collections.abc import Callable
from email.utils import parsedate_to_datetime

# A receiver may ask for a pause, but not for one longer than a day.
MAX_RETRY_AFTER_S = 24 * 3600
# Each wait is the schedule's value ±20%, so receivers that failed together don't retry together.
JITTER = 0.2


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not "²": isdigit() alone takes it, float() does not
        return float(value)
    try:
        dt = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if dt.tzinfo is None:
        return None
    return max(0.0, dt.timestamp() - now_s)


def next_delay(
    schedule: list[float], attempts_done: int, retry_after_s: float | None, rng: Callable[[], float]
) -> float | None:
    """Seconds until the next attempt after ``attempts_done`` failed ones, or None when the
    schedule is exhausted (dead letter). ``rng`` draws uniformly from [0, 1)."""
    if attempts_done < 1 or attempts_done > len(schedule):
        return None
    base = schedule[attempts_done - 1]
    delay = base * (1 - JITTER + 2 * JITTER * rng())
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
    return delay
