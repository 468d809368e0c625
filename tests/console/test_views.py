"""The console's pure helpers, as tables."""

from __future__ import annotations

from datetime import date

import pytest

from shim.console._views import ago, days_back, read_query, read_time, share, usage_chart
from shim.core import parse_time_us


@pytest.mark.parametrize(("text", "expected"), [
    ("+15551230001", ("number", "+15551230001")),
    (" +1 (555) 123-0001 ", ("number", "+15551230001")),
    ("15551230001", ("number", "+15551230001")),
    ("5551230", ("id", "5551230")),  # too short for a bare number: an id
    ("m-abc123", ("id", "m-abc123")),
    ("pending-AbCdEf0123456789", ("id", "pending-AbCdEf0123456789")),
    ("+1555abc", ("id", "+1555abc")),
])
def test_read_query(text: str, expected: tuple[str, str]) -> None:
    assert read_query(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("", None),
    ("  ", None),
    ("2026-11-23T15:04", "2026-11-23T15:04:00Z"),  # datetime-local: UTC
    ("2026-11-23T15:04:05", "2026-11-23T15:04:05Z"),
    ("2026-11-23", "2026-11-23T00:00:00Z"),
    ("2026-11-23T15:04:05+01:00", "2026-11-23T14:04:05Z"),
])
def test_read_time(text: str, expected: str | None) -> None:
    assert read_time(text) == (parse_time_us(expected) if expected else None)


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "15:04", "2026-11-23T25:00"])
def test_read_time_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a time"):
        read_time(text)


@pytest.mark.parametrize(("us", "expected"), [
    (-5, "0 ms"), (250_000, "250 ms"), (5_000_000, "5 s"), (119_000_000, "119 s"), (600_000_000, "10 min"),
    (3 * 3600 * 1_000_000, "3.0 h"), (3 * 86400 * 1_000_000, "3.0 d"),
])
def test_ago(us: int, expected: str) -> None:
    assert ago(us) == expected


def test_share() -> None:
    assert (share(1, 2), share(0, 0), share(3, 0)) == ("33.3%", "—", "100.0%")


def test_days_back_ends_today() -> None:
    assert days_back(date(2026, 3, 2), 3) == ["2026-02-28", "2026-03-01", "2026-03-02"]


def test_usage_chart_stacks_v1_under_native_scaled_to_the_peak() -> None:
    days = ["2026-11-21", "2026-11-22", "2026-11-23"]
    rows = [("2026-11-21", "v1:message", 10), ("2026-11-23", "v1:message", 5), ("2026-11-23", "native:message", 15),
            ("2026-11-23", "endpoint:POST /v1/users/{userId}/messages", 99), ("2026-10-01", "v1:message", 7)]
    c = usage_chart(days, rows, width=300, height=100)
    assert (c.peak, c.first_day, c.last_day, len(c.bars)) == (20, "2026-11-21", "2026-11-23", 3)
    b21, b22, b23 = c.bars
    assert (b21.v1, b21.native, b21.v1_h, b21.v1_y, b21.native_h) == (10, 0, 50.0, 50.0, 0.0)
    assert (b22.v1, b22.native, b22.v1_h) == (0, 0, 0.0)
    assert (b23.v1_h, b23.v1_y, b23.native_h, b23.native_y) == (25.0, 75.0, 75.0, 0.0)
    assert (b21.x, b21.width, b22.x) == (10.0, 80.0, 110.0)


def test_usage_chart_of_nothing_is_flat() -> None:
    c = usage_chart(["2026-11-23"], [])
    assert c.peak == 0 and c.bars[0].v1_h == 0 and c.bars[0].native_h == 0


def test_links_to_a_message_are_encoded_and_native_rows_point_at_their_message() -> None:
    from shim.console.web_console import _href, _order_link

    assert _href("a/b?c#d%") == "/admin/ui/messages/a%2Fb%3Fc%23d%25"
    # a native v2 message's outbox key
    assert _order_link("native_m-1") == {"message_id": "m-1", "href": "/admin/ui/messages/m-1"}
    assert _order_link("m-2") == {"message_id": "m-2", "href": "/admin/ui/messages/m-2"}
