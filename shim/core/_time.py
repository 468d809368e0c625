"""Timestamps: v1 shows ISO-8601 UTC; the store sorts by integer microseconds. Pure: the current time
is always an argument (``shim.clock`` reads the real one)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_V1_QUERY = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?)?$"
)


# Whole seconds already formatted (``2012-11-14T16:13:06``): the events of one burst of sends
# share their seconds, and a date format costs ~2.5 µs against ~0.3 for the lookup. A memo of a
# pure function (same text for the same second), emptied when it grows past ``_SECONDS_KEPT``.
_SECONDS: dict[int, str] = {}
_SECONDS_KEPT = 4096


def _iso_second(second: int) -> str:
    dt = _EPOCH + timedelta(seconds=second)
    if dt.year >= 1000:  # ``isoformat`` is the cheaper format; the same text from year 1000 on
        return dt.isoformat()[:-6]
    return dt.strftime("%Y-%m-%dT%H:%M:%S")


def iso_from_us(us: int) -> str:
    """With milliseconds, as v1's callback examples show (``2012-11-14T16:13:06.076Z``)."""
    second, rest = divmod(us, 1_000_000)  # exact integers (a float's seconds drift)
    text = _SECONDS.get(second)
    if text is None:
        if len(_SECONDS) >= _SECONDS_KEPT:
            _SECONDS.clear()
        text = _SECONDS[second] = _iso_second(second)
    return f"{text}.{rest // 1000:03d}Z"


def iso_seconds_from_us(us: int) -> str:
    """Without fractional seconds, as v1's ``GET /messages`` served it (``2015-09-14T21:32:25Z``):
    the Java SDK parses ``time`` with ``yyyy-MM-dd'T'HH:mm:ssZ`` and rejects milliseconds."""
    return (_EPOCH + timedelta(seconds=us // 1_000_000)).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time_us(value: str) -> int | None:
    """Parse v1 query dates (``yyyy-MM-dd[ HH:mm[:ss[.SSS]]]``, zero-filled, UTC) and ISO-8601."""
    if len(value) == 24 and value[10] == "T" and value[19] == "." and value[23] == "Z":
        # v2's own shape (``2021-07-21T21:00:45.179Z``, every answer and event): read directly.
        try:
            return (datetime.fromisoformat(value) - _EPOCH) // _ONE_US
        except ValueError:
            pass  # the general rules below decide (and word) what this is
    value = value.strip()
    m = _V1_QUERY.match(value)
    if m:
        y, mo, d, h, mi, s, frac = m.groups()
        try:
            dt = datetime(
                int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0),
                int((frac or "0").ljust(6, "0")), tzinfo=UTC,
            )
        except ValueError:
            return None
        return _us(dt)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return _us(dt)


def _us(dt: datetime) -> int | None:
    """Microseconds since the epoch, or None when the instant falls outside years 1..9999 in UTC
    (``0001-01-01T00:00:00+14:00``): such a time cannot be stored or shown."""
    try:
        return (dt.astimezone(UTC) - _EPOCH) // _ONE_US  # exact: seconds as a float × 10^6 fell 1 µs short
    except (OverflowError, ValueError):
        return None
