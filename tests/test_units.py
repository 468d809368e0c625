"""Small pure pieces: list query parsing, delivery helpers, URL policy, sandbox helpers."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import unquote

import pytest
from multidict import MultiDict

from shim.basic_auth import basic_credentials, basic_header, check_pair
from shim.core import iso_from_us, match_enum, next_link, parse_list_query, parse_time_us
from shim.errors import ShimError
from shim.ops import scrub
from shim.outbox import AddressPolicy, RefusedAddress, SafeResolver, UnsafeUrl, query_params, signature
from shim.sandbox import message_id, segment_count, status_events


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


def test_query_params_and_signature() -> None:
    assert query_params({"a": "x", "media": ["u1", "u2"], "n": 1, "b": True, "z": None}) == [
        ("a", "x"), ("media", "u1"), ("media", "u2"), ("n", "1"), ("b", "true")]
    key = base64.b64encode(b"raw-key-of-sixteen-bytes").decode()
    mac = hmac.new(b"raw-key-of-sixteen-bytes", b"evt_1.1700000000.{}", hashlib.sha256).digest()
    assert signature("whsec_" + key, "evt_1", 1700000000, "{}") == "v1," + base64.b64encode(mac).decode()
    other = "whsec_" + base64.b64encode(b"another-key-16-bytes").decode()
    both = signature(["whsec_" + key, other], "evt_1", 1700000000, "{}")
    assert both.split(" ")[0] == "v1," + base64.b64encode(mac).decode() and len(both.split(" ")) == 2


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "169.254.1.1", "169.254.169.254", "0.0.0.0",
     "0.1.2.3", "192.0.2.1", "198.51.100.1", "203.0.113.1", "198.18.0.1", "224.0.0.1", "239.255.255.250",
     "240.0.0.1", "255.255.255.255", "100.100.100.200", "::1", "::", "fe80::1", "fc00::1", "fd12::1",
     "fd00:ec2::254", "ff02::1", "2001:db8::1",
     "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::127.0.0.1", "::10.0.0.1",
     "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b:1::a00:1", "2002:7f00:1::", "2002:a00:1::1",
     "2001:0:4136:e378:8000:63bf:80ff:fffe"],  # Teredo, client 127.0.0.1
)
def test_refused_by_default(address: str) -> None:
    assert not AddressPolicy([], []).permits(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:93.184.216.34",
                                     "64:ff9b::5db8:d822", "2002:5db8:d822::1"])
def test_public_addresses_allowed(address: str) -> None:
    assert AddressPolicy([], []).permits(address)


def test_allow_and_deny_lists() -> None:
    policy = AddressPolicy(["127.0.0.0/8", "10.0.0.0/8", "169.254.0.0/16"], ["10.9.0.0/16", "8.8.8.0/24"])
    assert policy.permits("127.0.0.5") and policy.permits("::ffff:127.0.0.5") and policy.permits("64:ff9b::a01:203")
    assert policy.permits("93.184.216.34") and not policy.permits("8.8.8.8")  # allow opens, it does not restrict
    assert not policy.permits("10.9.1.1") and not policy.permits("::ffff:10.9.1.1")  # deny wins
    assert policy.permits("169.254.1.1") and not policy.permits("169.254.169.254")  # metadata always refused
    assert not policy.permits("::1") and not policy.permits("192.168.0.1")
    with pytest.raises(UnsafeUrl):
        policy.check_url("ftp://example.com/x")
    with pytest.raises(UnsafeUrl):
        policy.check_url("http://169.254.169.254/latest")
    assert policy.check_url("https://example.com/x").host == "example.com"


def test_own_listeners_never_reachable() -> None:
    policy = AddressPolicy(["127.0.0.0/8", "::1/128"], [], self_ports=[8080, 8081], self_hosts=["10.0.0.5"])
    assert policy.permits("127.0.0.1", 9000) and not policy.permits("127.0.0.1", 8080)
    assert not policy.permits("::1", 8081) and not policy.permits("10.0.0.5", 8080)
    for url in ("http://127.0.0.1:8080/admin/dead-letters/replay", "http://localhost:8081/x", "http://[::1]:8080/",
                "http://[::ffff:127.0.0.1]:8080/callbacks/v2"):
        assert policy.refuses_literal(url), url
    assert not policy.refuses_literal("http://127.0.0.1:9000/cb") and not policy.refuses_literal("https://example.com/")


async def test_resolver_refuses_names_of_refused_addresses() -> None:
    resolver = SafeResolver(AddressPolicy([], []))
    try:
        with pytest.raises(RefusedAddress):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()
    resolver = SafeResolver(AddressPolicy(["127.0.0.0/8", "::1/128"], [], self_ports=[8080]))
    try:
        assert await resolver.resolve("localhost", 9000)
        with pytest.raises(RefusedAddress):
            await resolver.resolve("localhost", 8080)
    finally:
        await resolver.close()


def test_empty_passwords_never_match() -> None:
    assert check_pair(("tok", "pw"), "tok", "pw")
    assert not check_pair(("tok", ""), "tok", "") and not check_pair(("", ""), "", "")
    assert not check_pair(basic_credentials(basic_header("tok", "")), "tok", "")


def test_scrub_userinfo() -> None:
    assert scrub("posting to https://user:pa55@host/x failed") == "posting to https://***@host/x failed"


def test_sandbox_helpers() -> None:
    assert len(message_id()) == 29
    assert segment_count("a" * 160, []) == 1 and segment_count("a" * 161, []) == 2
    assert segment_count("é" * 70, []) == 1 and segment_count("ش" * 71, []) == 2
    assert segment_count("x" * 1000, ["https://m"]) == 1
    msg = {"id": "m", "to": ["+15551230001", "+15550004432"], "media": ["https://m/a.png"], "from": "+1",
           "applicationId": "a", "text": "t", "priority": "default"}
    types = [(e["type"], e["to"]) for e in status_events(msg)]
    assert types == [("message-sending", "+15551230001"), ("message-delivered", "+15551230001"),
                     ("message-sending", "+15550004432"), ("message-failed", "+15550004432")]
    assert status_events(msg)[3]["errorCode"] == 4432
