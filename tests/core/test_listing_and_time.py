"""v1 list query parsing, the Link header and time parsing (pure), as tables."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from multidict import MultiDict

from shim.core import iso_from_us, match_enum, next_link, parse_list_query, parse_time_us
from shim.errors import ShimError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2014-05-25", "2014-05-25T00:00:00.000Z"),
        ("2014-05-25 10:30", "2014-05-25T10:30:00.000Z"),
        ("2014-05-25 10:30:05", "2014-05-25T10:30:05.000Z"),
        ("2014-05-25 10:30:05.123", "2014-05-25T10:30:05.123Z"),
        ("2012-10-05T20:38:11.023Z", "2012-10-05T20:38:11.023Z"),
        ("2012-10-05T20:38:11+02:00", "2012-10-05T18:38:11.000Z"),
    ],
)
def test_time_parsing(value: str, expected: str) -> None:
    us = parse_time_us(value)
    assert us is not None and iso_from_us(us) == expected


@pytest.mark.parametrize(
    ("value", "us"),
    [
        # Times whose seconds as a float times 10^6 fall just under the integer (read so, the
        # first was shown as .102).
        ("2005-07-14T04:55:44.103Z", 1_121_316_944_103_000),
        ("2004-05-23T03:46:19.218Z", 1_085_283_979_218_000),
        ("1987-05-08 19:52:05.118923", 547_501_925_118_923),
        ("2026-01-01T00:00:00.123Z", 1_767_225_600_123_000),
        ("9999-12-31T23:59:59.999Z", 253_402_300_799_999_000),
        ("0001-01-01T00:00:00.000Z", -62_135_596_800_000_000),
        ("2026-01-01T00:00:00.123+05:30", 1_767_205_800_123_000),
        ("2026-02-30T00:00:00.123Z", None),
        ("0001-01-01T00:00:00+14:00", None),  # before year 1 in UTC
    ],
)
def test_times_are_read_to_the_exact_microsecond(value: str, us: int | None) -> None:
    assert parse_time_us(value) == us
    if us is not None and value.endswith("Z") and len(value) == 24 and value >= "1000":
        assert iso_from_us(us) == value


@pytest.mark.parametrize("value", ["yesterday", "2014-13-45", ""])
def test_bad_times(value: str) -> None:
    assert parse_time_us(value) is None


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [("deliveryState", "NotDelivered", "not-delivered"), ("deliveryState", "not-delivered", "not-delivered"),
     ("direction", "Out", "out"), ("state", "RECEIVED", "received")],
)
def test_enum_matching(key: str, value: str, expected: str) -> None:
    assert match_enum(key, value) == expected


def test_list_query_and_link() -> None:
    q = parse_list_query(MultiDict({"from": "+15551230001", "fromDateTime": "2014-05-25 10:30", "size": "2",
                                    "sortOrder": "Asc", "bogus": "1"}))
    assert (q.size, q.descending, q.from_) == (2, False, "+15551230001")
    link = next_link("https://shim.example", "/v1/users/u/messages", q, 42)
    assert link.startswith("<https://shim.example/v1/users/u/messages?") and link.endswith('>; rel="next"')
    url = link[1:link.index(">")]
    assert "," not in url and ";" not in url and " " not in url
    assert "sortKeyGT=42" in url and "size=2" in url and "bogus" not in url
    assert "from=%2B15551230001" in url and unquote(url).count("2014-05-25 10:30") == 1
    assert parse_list_query(MultiDict({"size": "5000"})).size == 1000
    assert parse_list_query(MultiDict({"page": "3", "size": "10"})).offset == 30
    with pytest.raises(ShimError):
        parse_list_query(MultiDict({"size": "-1"}))
