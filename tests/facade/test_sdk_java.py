"""The Java SDK (java-bandwidth 1.16, Bandwidth/java-bandwidth @ 8f7ef1fc) against a real shim.

Each test replays the SDK's exact requests and parses the answers the way its source does:

- ``src/main/java/com/bandwidth/sdk/BandwidthClient.java``: ``getPath`` joins ``apiEndpoint/apiVersion/uri``
  and leaves a URI that already contains ``{endpoint}/v1/`` as it is; ``generatePostRequest`` sends
  ``JSONObject.toJSONString(params)`` (json-simple escapes ``/`` as ``\\/``) as
  ``Content-Type: application/json; charset=UTF-8``; ``validateCredentials`` calls
  ``Account.get().getAccountInfo()`` (``GET /v1/users/{id}/account``) and only a 401 means bad
  credentials; ``performRequest`` turns any status >= 400 into ``AppPlatformException``.
- ``RestResponse.java``: ``parseLinkHeader`` on every ``Link`` header (split on ``,`` then ``;``);
  ``Location`` kept verbatim.
- ``model/Message.java``: ``create`` cuts the id out of ``Location`` by the length of
  ``getPath(messagesUri)`` + 1, then ``get``s it; ``create(to, from, text, String media)`` sends
  ``media`` as one string; ``create(..., ReceiptRequest)`` sends ``"none"`` for null;
  ``getTime`` parses ``yyyy-MM-dd'T'HH:mm:ssZ`` (``ModelBase.java``, Joda: no fractional seconds);
  ``getCallbackTimeout`` casts to ``Long``.
- ``model/ResourceList.java``: ``list(page, size)`` sends ``?page=N&size=M`` and asks for ``page+1``
  while a ``next`` link exists; ``Utils.response2JSONArray`` needs a JSON Content-Type.
- ``model/AccountInfo.java``: ``(String) id``, ``Double.parseDouble(balance)``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
import pytest

from ..conftest import Harness, auth

compat = pytest.mark.compat
USER_AGENT = "Apache-HttpClient/4.5"
# Joda DateTimeFormat.forPattern("yyyy-MM-dd'T'HH:mm:ssZ"): the zone is "Z" or +hhmm, no fraction.
JODA_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|[+-]\d{4})")


def json_simple(params: dict[str, Any]) -> bytes:
    """``JSONObject.toJSONString``: no spaces, ``/`` escaped as ``\\/``."""
    return json.dumps(params, separators=(",", ":")).replace("/", "\\/").encode()


class JavaSdk:
    """The wire behaviour of ``BandwidthClient`` with ``apiEndpoint`` = shim's public URL."""

    def __init__(self, h: Harness, user_id: str = "u-test", creds: dict[str, str] | None = None) -> None:
        self.h = h
        self.endpoint = h.cfg.server.public_url
        self.users_uri = f"users/{user_id}"
        self.headers = {"Accept": "application/json", "Accept-Charset": "utf-8", "User-Agent": USER_AGENT} | (
            creds or h.auth)

    def get_path(self, uri: str) -> str:
        base = f"{self.endpoint}/v1/"
        return uri if base in uri else f"{base}{uri}"

    async def request(self, method: str, uri: str, params: dict[str, Any] | None = None,
                      body: bytes | None = None) -> tuple[aiohttp.ClientResponse, str]:
        path = self.get_path(uri)
        headers = dict(self.headers)
        if body is not None:
            headers["Content-Type"] = "application/json; charset=UTF-8"
        resp = await self.h.session.request(method, path, params=params, data=body, headers=headers)
        text = (await resp.read()).decode() or "{}"  # RestResponse: an empty body reads as "{}"
        return resp, text

    async def create(self, params: dict[str, Any]) -> dict[str, Any]:
        messages_uri = f"{self.users_uri}/messages"
        resp, text = await self.request("POST", messages_uri, body=json_simple(params))
        assert resp.status < 400, text  # else AppPlatformException
        location = resp.headers["Location"]
        message_id = location[len(self.get_path(messages_uri)) + 1:]
        msg = await self.get(message_id)
        return msg

    async def get(self, message_id: str) -> dict[str, Any]:
        resp, text = await self.request("GET", f"{self.users_uri}/messages/{message_id}")
        assert resp.status < 400, text
        obj = json.loads(text)
        assert isinstance(obj, dict)  # (JSONObject) cast
        check_message(obj)
        return obj

    async def list_page(self, page: int, size: int) -> tuple[list[dict[str, Any]], str | None]:
        resp, text = await self.request("GET", f"{self.users_uri}/messages", params={"page": page, "size": size})
        assert resp.status < 400, text
        assert "application/json" in resp.headers["Content-Type"].lower()  # RestResponse.isJson
        array = json.loads(text)
        assert isinstance(array, list)
        next_link = None
        for value in resp.headers.getall("Link", []):
            next_link = parse_link_header(value).get("next", next_link)
        return array, next_link


def parse_link_header(link: str) -> dict[str, str]:
    """``RestResponse.parseLinkHeader``, line for line."""
    found: dict[str, str] = {}
    for part in link.split(","):
        segments = part.split(";")
        if len(segments) < 2:
            continue
        link_part = segments[0].strip()
        if not link_part.startswith("<") or not link_part.endswith(">"):
            continue
        link_part = link_part[1:-1]
        for segment in segments[1:]:
            rel = segment.strip().split("=")
            if len(rel) < 2 or rel[0] != "rel":
                continue
            value = rel[1]
            if value.startswith('"') and value.endswith('"'):
                value = value[1:-1]
            found[value] = link_part
    return found


def check_message(obj: dict[str, Any]) -> None:
    """What ``Message``'s getters would throw on."""
    assert isinstance(obj.get("id"), str)
    assert JODA_TIME.fullmatch(obj["time"]), obj["time"]
    if "callbackTimeout" in obj:
        assert type(obj["callbackTimeout"]) is int  # (Long) cast on json-simple's Long
    for key in ("messageId", "from", "to", "state", "direction", "callbackUrl", "fallbackUrl", "text",
                "receiptRequested"):
        assert key not in obj or isinstance(obj[key], str), key  # (String) casts


@compat("GET /v1/users/{userId}/account", "balance, accountType", "partial",
        note="fixed body {\"balance\": \"0.00\", \"accountType\": \"pre-pay\"}: v2 has no messaging balance; "
             "enough for the Java SDK's credential check and Ruby/C# Account.get")
async def test_validate_credentials_reads_the_account(harness: Harness) -> None:
    sdk = JavaSdk(harness)
    resp, text = await sdk.request("GET", f"{sdk.users_uri}/account")
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    info = json.loads(text)
    assert info.get("id") is None or isinstance(info["id"], str)
    assert float(info["balance"]) >= 0 and info["accountType"] == "pre-pay"
    # Only a 401 means bad credentials (InvalidCredentialsException).
    bad = JavaSdk(harness, creds=auth("t-test-token", "wrong"))
    resp, text = await bad.request("GET", f"{bad.users_uri}/account")
    assert resp.status == 401 and json.loads(text)["code"] == "access-denied"
    other = JavaSdk(harness, user_id="u-other")
    resp, _ = await other.request("GET", f"{other.users_uri}/account")
    assert resp.status == 401


@compat("POST /v1/users/{userId}/messages", "Location", "supported",
        note="absolute, {public_url}/v1/users/{userId}/messages/{id}: the Java SDK cuts the id by the length of its "
             "configured endpoint, so the SDK's endpoint must be shim's server.public_url exactly")
@compat("GET /v1/users/{userId}/messages/{messageId}", "time", "supported",
        note="ISO-8601 UTC without fractional seconds (2015-09-14T21:32:25Z), as the Java SDK's parser needs; "
             "callbacks keep milliseconds")
async def test_create_cuts_the_id_by_endpoint_length_then_gets_it(harness: Harness) -> None:
    sdk = JavaSdk(harness)
    msg = await sdk.create({"to": "+15551230002", "from": "+15551230001", "text": "java/1",
                            "receiptRequested": "none"})
    assert msg["id"] == msg["messageId"] and re.fullmatch(r"[0-9a-z]{29}", msg["id"])
    assert msg["text"] == "java/1" and msg["receiptRequested"] == "none"
    assert msg["time"].endswith("Z") and "." not in msg["time"]
    sent = harness.v2_requests[-1]
    assert sent["text"] == "java/1" and sent["to"] == ["+15551230002"]


@compat("POST /v1/users/{userId}/messages", "media", "supported",
        note="a single URL string (Java, Python) or an array of URLs")
@compat("POST /v1/users/{userId}/messages", "Content-Type", "supported",
        note="application/json with or without a charset (Java sends application/json; charset=UTF-8)")
async def test_create_with_media_as_one_string_and_escaped_slashes(harness: Harness) -> None:
    sdk = JavaSdk(harness)
    msg = await sdk.create({"to": "+15551230002", "from": "+15551230001", "text": "pic",
                            "media": "https://example.com/cat.jpg", "callbackTimeout": 5000})
    assert msg["media"] == ["https://example.com/cat.jpg"]
    assert msg["callbackTimeout"] == 5000
    assert harness.v2_requests[-1]["media"] == ["https://example.com/cat.jpg"]


@compat("GET /v1/users/{userId}/messages", "page", "supported",
        note="legacy 0-based page number with size (Java ResourceList, Python 1.x); offset-based, so not stable "
             "while messages arrive (the Link cursor is)")
@compat("GET /v1/users/{userId}/messages", "Link", "supported",
        note="one Link: <absolute URL>; rel=\"next\" while more results exist; it contains {public_url}/v1/, "
             "so the Java SDK's getPath keeps it as it is")
async def test_list_pages_by_page_number_while_a_next_link_exists(harness: Harness) -> None:
    sdk = JavaSdk(harness)
    ids = [await harness.send(text=f"m{i}") for i in range(5)]
    seen: list[str] = []
    page = 0
    while True:
        items, next_link = await sdk.list_page(page, 2)
        for obj in items:
            check_message(obj)
        seen += [obj["id"] for obj in items]
        if next_link is None:
            break
        assert next_link.startswith(f"{sdk.endpoint}/v1/users/u-test/messages?")
        assert sdk.get_path(next_link) == next_link  # followed as it is, not re-prefixed
        page += 1
    assert seen == list(reversed(ids))


async def test_errors_are_app_platform_exceptions_with_json_text(harness: Harness) -> None:
    sdk = JavaSdk(harness)
    resp, text = await sdk.request("GET", f"{sdk.users_uri}/messages/nope")
    assert resp.status == 404 and json.loads(text)["code"] == "message-not-found"
    resp, text = await sdk.request("POST", f"{sdk.users_uri}/messages", body=json_simple({"from": "+15551230001"}))
    assert resp.status == 400 and json.loads(text)["code"] == "missing-property"
