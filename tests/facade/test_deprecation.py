"""Deprecation signals (SPEC §8): per user, ``Deprecation`` (RFC 9745), ``Sunset`` (RFC 8594) and
``Link: <url>; rel="deprecation"`` on every v1 response once the user is authenticated; none by
default. A list's ``Link: <…>; rel="next"`` stays the first ``Link`` header (Bandwidth.Net
``LazyEnumerable.cs`` reads only the first one; java-bandwidth ``RestResponse.parseLinkHeader``
reads every one and ignores other relations)."""

from __future__ import annotations

import io
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from shim.config import ConfigError, DeprecationConfig, parse_config

from ..conftest import OTHER_USER, USER, Harness, HarnessFactory, auth
from .test_sdk_csharp import CSharpSdk, message_data
from .test_sdk_java import parse_link_header

compat = pytest.mark.compat
DEPRECATION = {"date": "2027-03-01T00:00:00Z", "sunset": "2027-06-01T00:00:00Z", "link": "https://wiki.example.com/v2"}
SIGNALS = ("Deprecation", "Sunset")


async def deprecated_harness(make_harness: HarnessFactory, **block: Any) -> Harness:
    user = dict(USER) | {"deprecation": block or DEPRECATION}
    return await make_harness(users=[user, OTHER_USER])


def assert_signals(headers: Any) -> None:
    assert headers.getall("Deprecation") == ["@1803859200"]  # 2027-03-01T00:00:00Z
    (sunset,) = headers.getall("Sunset")
    assert sunset == "Tue, 01 Jun 2027 00:00:00 GMT" and parsedate_to_datetime(sunset).timestamp() == 1811808000
    assert '<https://wiki.example.com/v2>; rel="deprecation"' in headers.getall("Link")


@compat("all v1 endpoints", "Deprecation, Sunset, Link rel=\"deprecation\"", "supported",
        note="shim extension (SPEC §8): per user (users[].deprecation), on every response once authenticated, "
             "none by default; the list's rel=\"next\" Link stays first")
async def test_configured_user_gets_the_signals_everywhere(make_harness: HarnessFactory) -> None:
    h = await deprecated_harness(make_harness)
    resp = await h.post({"from": "+15551230001", "to": "+15551230002", "text": "x"})
    assert resp.status == 201
    assert_signals(resp.headers)
    mid = resp.headers["Location"].rsplit("/", 1)[1]
    for url in (f"{h.messages_url}/{mid}", f"{h.messages_url}/nope", f"{h.url}/v1/users/u-test/account",
                f"{h.url}/v1/users/u-test/media"):
        resp = await h.session.get(url, headers=h.auth)
        assert resp.status in (200, 404)
        assert_signals(resp.headers)
    # A streamed media download too.
    media = f"{h.url}/v1/users/u-test/media/a.txt"
    assert (await h.session.put(media, data=io.BytesIO(b"abc"), headers=h.auth)).status == 200
    resp = await h.session.get(media, headers=h.auth)
    assert await resp.read() == b"abc"
    assert_signals(resp.headers)
    # Not before authentication, not for another user.
    resp = await h.session.get(f"{h.messages_url}/{mid}", headers=auth("t-test-token", "wrong"))
    assert resp.status == 401 and not any(k in resp.headers for k in SIGNALS)
    resp = await h.session.get(f"{h.url}/v1/users/u-other/messages",
                               headers=auth(OTHER_USER["api_token"], OTHER_USER["api_secret"]))
    assert resp.status == 200 and not any(k in resp.headers for k in SIGNALS) and "Link" not in resp.headers


async def test_the_next_link_stays_first_for_csharp_and_java(make_harness: HarnessFactory) -> None:
    h = await deprecated_harness(make_harness)
    sdk = CSharpSdk(h)
    ids = [await sdk.send(message_data(text=str(i))) for i in range(3)]
    resp = await h.session.get(f"{h.messages_url}?size=2", headers=h.auth)
    links = resp.headers.getall("Link")
    assert len(links) == 2 and links[0].endswith('; rel="next"') and links[1].endswith('; rel="deprecation"')
    java = {}
    for value in links:
        java.update(parse_link_header(value))
    assert java["next"] == links[0][1:].split(">")[0] and java["deprecation"] == "https://wiki.example.com/v2"
    assert [m["id"] for m in await sdk.list("size=2")] == list(reversed(ids))


async def test_none_by_default(harness: Harness) -> None:
    await harness.send()
    await harness.send()
    resp = await harness.session.get(f"{harness.messages_url}?size=1", headers=harness.auth)
    assert not any(k in resp.headers for k in SIGNALS)
    assert [v.endswith('rel="next"') for v in resp.headers.getall("Link")] == [True]


async def test_partial_blocks(make_harness: HarnessFactory) -> None:
    h = await deprecated_harness(make_harness, sunset="2027-06-01")
    resp = await h.session.get(f"{h.url}/v1/users/u-test/account", headers=h.auth)
    assert resp.headers.getall("Sunset") == ["Tue, 01 Jun 2027 00:00:00 GMT"]
    assert "Deprecation" not in resp.headers and "Link" not in resp.headers


@pytest.mark.parametrize(("block", "says"), [
    ({}, "at least one"),
    ({"date": "2027-06-01", "sunset": "2027-03-01"}, "sunset must not be before date"),
    ({"link": "ftp://x.example/a"}, "http"),
    ({"link": "https://x.example/a,b"}, "percent-encode"),
    ({"date": "next tuesday"}, "users.0.deprecation.date"),
    ({"date": "2027-01-01", "when": "x"}, "users.0.deprecation.when"),
])
def test_bad_blocks_are_config_errors(block: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"users": [dict(USER) | {"deprecation": block}]})
    assert says in str(err.value)


def test_headers_are_built_once() -> None:
    cfg = DeprecationConfig.model_validate({"date": "2027-03-01T01:00:00+01:00"})
    assert cfg.headers == (("Deprecation", "@1803859200"),)
    assert cfg.headers is cfg.headers
