"""``iso_from_us`` (``isoformat`` from year 1000 on) gives the text the ``strftime`` format gave."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from shim.core import _time, iso_from_us


def strftime_iso(us: int) -> str:
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)  # exact, as a float is not
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def test_iso_from_us_is_the_strftime_text() -> None:
    lo = int(datetime(1, 1, 1, tzinfo=UTC).timestamp() * 1e6)
    hi = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp() * 1e6)
    y1000 = int(datetime(1000, 1, 1, tzinfo=UTC).timestamp() * 1e6)
    rng = random.Random(7)
    cases = [0, -1, 999, 1000, 1_767_225_600_123_456, 1_700_000_000_999_999, lo, hi, y1000, y1000 - 1]
    cases += [rng.randint(lo, hi) for _ in range(20_000)] + [rng.randint(-(10**15), 4 * 10**15) for _ in range(5_000)]
    for us in cases:
        assert iso_from_us(us) == strftime_iso(us), us
    # Its memo of formatted seconds stays bounded however many seconds it has seen.
    assert 0 < len(_time._SECONDS) <= _time._SECONDS_KEPT
