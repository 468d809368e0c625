"""The C# SDK (Bandwidth.Net 4.x, Bandwidth/csharp-bandwidth @ f63ee526) against a real shim.

Each test replays the SDK's exact requests and parses the answers the way its source does:

- ``src/Bandwidth.Net/Client.cs``: ``CreateRequest`` builds ``UriBuilder(baseUrl){Path = "/v1" + path}``
  (so shim must be served at the root of its host); ``BuildQueryString`` sends every non-null
  property, first letter lower-cased, enum *names* (``Out``, ``NotDelivered``, ``Desc``) and
  ``MessageQueryDateTime`` as ``yyyy-MM-dd HH:mm:ss``; ``MakePostJsonRequestAsync`` returns
  ``Location.AbsolutePath.Split('/').Last()``.
- ``JsonHelpers.cs``: bodies are Json.NET camelCase with ``DefaultValueHandling.IgnoreAndPopulate``
  (nulls omitted), ``StringContent(json, UTF8, "application/json")``; ``ReadAsJsonAsync`` needs
  ``ContentType.MediaType == "application/json"``; ``CheckResponseAsync`` reads ``Message ?? Code``.
- ``JsonStringEnumConverter.cs``: kebab-case → PascalCase, ``Enum.Parse`` throws on anything else
  (and on ``null``).
- ``Api/Message.cs``: ``Message`` has non-nullable enums ``Direction``, ``State``, ``ReceiptRequested``,
  ``DeliveryState`` and ints ``CallbackTimeout``, ``DeliveryCode``, ``SegmentCount``;
  ``SendMessageResult`` (``Result`` enum ``Accepted|Error``, ``Error`` of ``Api/Error.cs``, whose
  ``Category`` is the enum ``ErrorCategory``).
- ``LazyEnumerable.cs``: the *first* ``Link`` header, split on ``,`` then ``;``, exactly two parts,
  the second ``rel="next"``; the URL between ``<>`` fetched as is.
- ``CallbackEvent.cs``: ``EventType``, ``State`` (``CallbackEventState``), ``DeliveryState``,
  ``DeliveryCode`` int.
- ``Api/Account.cs``: ``Balance`` string, ``AccountType`` enum ``PrePay``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import pytest

from shim.errors import V1_CATEGORIES

from ..conftest import Harness, wait_until

compat = pytest.mark.compat
USER_AGENT = "csharp-bandwidth/v4.0"

ENUMS: dict[str, set[str]] = {
    # Api/Message.cs
    "MessageDirection": {"In", "Out"},
    "MessageState": {"Received", "Queued", "Sending", "Sent", "Error"},
    "MessageReceiptRequested": {"None", "All", "Error"},
    "MessageDeliveryState": {"Waiting", "Delivered", "NotDelivered"},
    "SendMessageResults": {"Accepted", "Error"},
    # Api/Error.cs
    "ErrorCategory": {"Authentication", "Authorization", "NotFound", "BadRequest", "Conflict", "Unavailable",
                      "Credit", "Limit", "Payment", "Forbidden"},
    # CallbackEvent.cs
    "CallbackEventType": {"Unknown", "Sms", "Mms", "Answer", "Playback", "Timeout", "Conference",
                          "ConferencePlayback", "ConferenceMember", "ConferenceSpeak", "Gather", "Hangup",
                          "Incomingcall", "Recording", "Speak", "Transcription", "Redirect"},
    "CallbackEventState": {"Active", "Completed", "Received", "Queued", "Sending", "Sent", "Complete", "Error",
                           "PlaybackStart", "PlaybackStop"},
    # Api/Account.cs
    "AccountType": {"PrePay"},
}
MESSAGE_ENUMS = {"direction": "MessageDirection", "state": "MessageState",
                 "receiptRequested": "MessageReceiptRequested", "deliveryState": "MessageDeliveryState"}
MESSAGE_INTS = ("callbackTimeout", "deliveryCode", "segmentCount")
EVENT_ENUMS = {"eventType": "CallbackEventType", "direction": "MessageDirection", "state": "CallbackEventState",
               "deliveryState": "MessageDeliveryState"}


def enum_parse(enum: str, raw: Any) -> str:
    """``JsonStringEnumConverter.ReadJson`` + ``Enum.Parse(ignoreCase: true)``."""
    assert isinstance(raw, str), f"{enum}: {raw!r} (null or not a string throws)"
    name = "".join(v[:1].upper() + v[1:] for v in raw.lower().replace("_", "-").split("-"))
    match = [m for m in ENUMS[enum] if m.lower() == name.lower()]
    assert match, f"{enum} has no member for {raw!r}"
    return match[0]


def json_int(raw: Any, key: str) -> int:
    """Json.NET into a non-nullable ``int``: a JSON integer, or a string of digits."""
    assert raw is not None, f"{key}: null into int throws"
    if isinstance(raw, str):
        assert re.fullmatch(r"-?\d+", raw), f"{key}: {raw!r} is not an int"
        return int(raw)
    assert type(raw) is int, f"{key}: {raw!r}"
    return raw


def json_datetime(raw: Any) -> datetime:
    assert isinstance(raw, str)
    return datetime.fromisoformat(raw.replace("Z", "+00:00"))


def read_message(obj: dict[str, Any]) -> dict[str, Any]:
    """Deserialize into ``Api/Message.cs`` ``Message``."""
    for key, enum in MESSAGE_ENUMS.items():
        if key in obj:
            enum_parse(enum, obj[key])
    for key in MESSAGE_INTS:
        if key in obj:
            json_int(obj[key], key)
    json_datetime(obj["time"])
    assert isinstance(obj["media"], list) and all(isinstance(m, str) for m in obj["media"])
    return obj


def read_error(obj: Any) -> str:
    """``Api/Error.cs`` ``Error``: the category must parse into ``ErrorCategory``."""
    assert isinstance(obj, dict)
    assert obj["category"] in V1_CATEGORIES
    enum_parse("ErrorCategory", obj["category"])
    assert isinstance(obj["code"], str) and isinstance(obj["message"], str)
    assert all(set(d) == {"name", "value"} for d in obj["details"])
    return str(obj["message"] or obj["code"])


class CSharpSdk:
    def __init__(self, h: Harness, user_id: str = "u-test") -> None:
        self.h = h
        self.base = h.cfg.server.public_url
        self.user_id = user_id
        self.headers = {"User-Agent": USER_AGENT, "Accept": "application/json"} | h.auth

    def url(self, path: str) -> str:
        # UriBuilder(baseUrl) { Path = "/v1" + path }: any path in baseUrl is replaced.
        parts = urlsplit(self.base)
        return f"{parts.scheme}://{parts.netloc}/v1/users/{self.user_id}{path}"

    async def request(self, method: str, url: str, body: Any = None, query: str = "") -> aiohttp.ClientResponse:
        headers = dict(self.headers)
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
            data = json.dumps(body, separators=(",", ":")).encode()
        resp = await self.h.session.request(method, url + (f"?{query}" if query else ""), data=data, headers=headers)
        await resp.read()
        if not 200 <= resp.status < 300:  # CheckResponseAsync
            err = json.loads(await resp.read())
            assert err.get("message") or err.get("code")
            raise CSharpError(resp.status, err)
        return resp

    async def read_json(self, resp: aiohttp.ClientResponse) -> Any:
        assert resp.headers["Content-Type"].split(";")[0] == "application/json"
        assert resp.content_type == "application/json"  # ContentType.MediaType
        raw = await resp.read()
        return json.loads(raw) if raw else None

    async def send(self, data: dict[str, Any]) -> str:
        resp = await self.request("POST", self.url("/messages"), body=data)
        location = resp.headers["Location"]
        return urlsplit(location).path.split("/")[-1]  # Location.AbsolutePath.Split('/').Last()

    async def send_many(self, data: list[dict[str, Any]]) -> list[dict[str, Any]]:
        resp = await self.request("POST", self.url("/messages"), body=data)
        results = await self.read_json(resp)
        assert isinstance(results, list) and len(results) == len(data)
        for r in results:
            result = enum_parse("SendMessageResults", r["result"])
            if result == "Accepted":
                r["id"] = r["location"].split("/")[-1]  # SendMessageResult.Id
            else:
                read_error(r["error"])
        return list(results)

    async def get(self, message_id: str) -> dict[str, Any]:
        resp = await self.request("GET", self.url(f"/messages/{message_id}"))
        return read_message(await self.read_json(resp))

    async def list(self, query: str) -> list[dict[str, Any]]:
        """``LazyEnumerable<Message>`` to the end."""
        out: list[dict[str, Any]] = []
        resp = await self.request("GET", self.url("/messages"), query=query)
        while True:
            out += [read_message(m) for m in await self.read_json(resp)]
            next_url = ""
            links = resp.headers.getall("Link", [])
            if links:
                for link in links[0].split(","):
                    values = link.split(";")
                    if len(values) == 2 and values[1].strip() == 'rel="next"':
                        next_url = values[0].replace("<", " ").replace(">", " ").strip()
                        break
            if not next_url:
                return out
            resp = await self.request("GET", next_url)


class CSharpError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message") or body.get("code"))
        self.status, self.body = status, body


def message_data(**kw: Any) -> dict[str, Any]:
    """``MessageData`` through Json.NET: nulls omitted, enums lower-case, never ``callbackHttpMethod``."""
    return {"from": "+15551230001", "to": "+15551230002", "text": "c#"} | kw


@compat("POST /v1/users/{userId}/messages", "id", "supported",
        note="the v2 message id, handed out verbatim: [0-9a-z] only, safe in a URL path as it is, equal to the body id")
async def test_send_takes_the_id_from_location_absolute_path(harness: Harness) -> None:
    sdk = CSharpSdk(harness)
    message_id = await sdk.send(message_data(media=["https://example.com/a.png"], callbackTimeout=3000, tag="c#tag"))
    assert quote(message_id, safe="") == message_id
    msg = await sdk.get(message_id)
    assert msg["id"] == msg["messageId"] == message_id
    assert msg["tag"] == "c#tag" and msg["callbackTimeout"] == 3000 and msg["media"] == ["https://example.com/a.png"]
    assert None not in msg.values()


@compat("GET /v1/users/{userId}/messages/{messageId}", "deliveryCode", "supported",
        note='a string of digits ("0", "720"; 999 for a v2 code with no v1 twin, its meaning in deliveryDescription): '
             "C# reads an int, Java a String")
@compat("GET /v1/users/{userId}/messages/{messageId}", "deliveryDescription", "supported",
        note="v1's description for a v1 code; for a v2 code with no v1 twin, v2's meaning with its code "
             "(rejected-forbidden-country (v2 4432))")
@compat("GET /v1/users/{userId}/messages/{messageId}", "deliveryState", "supported",
        note="delivered | not-delivered (waiting is never shown: v2 has no such state); absent until known")
@compat("GET /v1/users/{userId}/messages/{messageId}", "state", "supported",
        note="received | queued | sending | sent | error; never moves backwards")
async def test_get_has_no_nulls_and_numeric_delivery_codes(harness: Harness) -> None:
    sdk = CSharpSdk(harness)
    ok = await sdk.send(message_data(receiptRequested="all"))
    failed = await sdk.send(message_data(to="+15550004720", receiptRequested="error"))
    unmapped = await sdk.send(message_data(to="+15550004432", receiptRequested="error"))

    async def final(mid: str) -> bool:
        return "deliveryCode" in await sdk.get(mid)

    for mid in (ok, failed, unmapped):
        await wait_until(lambda mid=mid: final(mid))  # type: ignore[misc]
    got = {mid: await sdk.get(mid) for mid in (ok, failed, unmapped)}
    assert (got[ok]["deliveryState"], json_int(got[ok]["deliveryCode"], "deliveryCode")) == ("delivered", 0)
    assert (got[failed]["state"], got[failed]["deliveryCode"]) == ("error", "720")
    assert got[unmapped]["deliveryCode"] == "999" and "4432" in got[unmapped]["deliveryDescription"]
    for msg in got.values():
        assert None not in msg.values()
        assert isinstance(msg["deliveryCode"], str) and msg["deliveryCode"].isdigit()


@compat("GET /v1/users/{userId}/messages", "direction, state, deliveryState, sortOrder", "supported",
        note="enum values match case-insensitively ignoring '-' (C# sends names: Out, NotDelivered, Desc)")
@compat("GET /v1/users/{userId}/messages", "fromDateTime, toDateTime", "supported",
        note="yyyy-MM-dd[ HH:mm[:ss[.SSS]]] (zero-filled, UTC) and ISO-8601")
@compat("GET /v1/users/{userId}/messages", "size", "supported", note="default 25, max 1000 (larger is clamped)")
async def test_lazy_enumerable_follows_the_first_link_to_the_end(harness: Harness) -> None:
    sdk = CSharpSdk(harness)
    ids = [await sdk.send(message_data(text=f"n{i}")) for i in range(5)]
    query = "direction=Out&fromDateTime=" + quote("2000-01-01 00:00:00") + "&sortOrder=Desc&size=2"
    got = await sdk.list(query)
    assert [m["id"] for m in got] == list(reversed(ids))
    assert await sdk.list("deliveryState=NotDelivered") == []


async def test_batch_results_parse_and_every_error_category_is_known(harness: Harness) -> None:
    sdk = CSharpSdk(harness)
    results = await sdk.send_many([
        message_data(),
        message_data(to=None),  # a null Json.NET would have omitted: still "missing"
        {"from": "+15551230001", "text": "no to"},
        message_data(receiptRequested="all", media=["https://example.com/x.png"]),
        message_data(callbackUrl="not a url"),
        message_data(to="+15550000429"),
        message_data(to="+15550000500"),
    ])
    assert [r["result"] for r in results] == ["accepted"] + ["error"] * 6
    assert [r["error"]["category"] for r in results[1:]] == [
        "bad-request", "bad-request", "bad-request", "bad-request", "limit", "unavailable"]
    msg = await sdk.get(results[0]["id"])
    assert msg["id"] == results[0]["id"]


async def test_errors_read_message_or_code(harness: Harness) -> None:
    sdk = CSharpSdk(harness)
    with pytest.raises(CSharpError) as err:
        await sdk.get("m-unknown")
    assert err.value.status == 404 and read_error(err.value.body)
    with pytest.raises(CSharpError) as err:
        await sdk.send_many([message_data()] * 51)
    assert err.value.status == 403 and err.value.body["category"] == "limit"


@compat("v1 callbacks (callbackUrl)", "eventType, state, deliveryState, deliveryCode, time", "supported",
        note="C# CallbackEvent parses them: sms|mms, sent|error|received, delivered|not-delivered, deliveryCode a "
             "digit string; time with milliseconds")
async def test_callback_events_parse_as_callback_event(harness: Harness) -> None:
    sdk = CSharpSdk(harness)
    await sdk.send(message_data(to="+15550004720", receiptRequested="error", callbackUrl=f"{harness.receiver.url}/cs"))
    await sdk.send(message_data(receiptRequested="all", callbackUrl=f"{harness.receiver.url}/cs"))
    await wait_until(lambda: len(harness.receiver.at("/cs")) >= 3)
    for r in harness.receiver.at("/cs"):
        event = r.json
        for key, enum in EVENT_ENUMS.items():
            if key in event:
                enum_parse(enum, event[key])
        for key in ("deliveryCode", "segmentCount"):
            if key in event:
                json_int(event[key], key)
        json_datetime(event["time"])
        assert None not in event.values()


async def test_account_get_async(harness: Harness) -> None:
    sdk = CSharpSdk(harness)
    resp = await sdk.request("GET", sdk.url("/account"))
    account = await sdk.read_json(resp)
    assert isinstance(account["balance"], str) and enum_parse("AccountType", account["accountType"]) == "PrePay"
