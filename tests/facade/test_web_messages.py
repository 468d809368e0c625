"""End to end: the v1 messages resource on a real server, with the sandbox upstream."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import parse_qs, urlsplit

import pytest

from shim.core import send_key_of
from shim.keys import UPSTREAM

from ..conftest import Harness, auth, free_port

PY_SDK_KEYS = ("from", "to", "text", "media", "receiptRequested", "callbackUrl",
               "callbackHttpMethod", "callbackTimeout", "fallbackUrl", "tag")


@pytest.mark.compat("GET /v1/users/{userId}/messages/{messageId}", "id, messageId", "supported",
                    note="equal; the v2 message id")
@pytest.mark.compat("GET /v1/users/{userId}/messages/{messageId}", "from, to, direction", "supported")
@pytest.mark.compat("GET /v1/users/{userId}/messages/{messageId}", "text", "supported",
                    note="cleared everywhere after retention.text_days (v1: 3 days)")
@pytest.mark.compat("GET /v1/users/{userId}/messages/{messageId}", "media", "supported",
                    note="an array, [] when none")
@pytest.mark.compat("GET /v1/users/{userId}/messages/{messageId}", "segmentCount", "supported",
                    note="v2's segment count")
async def test_single_send_201_location_and_readback(harness: Harness) -> None:
    resp = await harness.post({"from": "+15551230001", "to": "+15551230002", "text": "Hello"})
    assert resp.status == 201
    assert await resp.read() == b""
    location = resp.headers["Location"]
    assert re.fullmatch(rf"{harness.messages_url}/[0-9a-z]{{29}}", location)
    # Readable the moment the 201 is sent.
    r, body = await harness.get_json(location)
    assert r.status == 200
    assert r.headers["Content-Type"] == "application/json"
    mid = location.rsplit("/", 1)[1]
    assert body["id"] == body["messageId"] == mid
    assert body["from"] == "+15551230001" and body["to"] == "+15551230002"
    assert body["direction"] == "out" and body["text"] == "Hello" and body["media"] == []
    assert body["segmentCount"] == 1 and body["state"] in ("queued", "sent")
    assert "receiptRequested" not in body and "callbackUrl" not in body
    assert None not in body.values()
    sent = harness.v2_requests[-1]
    assert sent == {
        "applicationId": harness.cfg.users[0].application_id,
        "to": ["+15551230002"], "from": "+15551230001", "text": "Hello", "tag": sent["tag"],
    }
    assert send_key_of(sent["tag"]) is not None  # the send's correlation key


@pytest.mark.compat("POST /v1/users/{userId}/messages", "null values", "supported",
                    note="JSON null means absent (the Python SDK sends all ten keys, unset ones null)")
async def test_python_sdk_shaped_send_with_nulls(harness: Harness) -> None:
    body = dict.fromkeys(PY_SDK_KEYS)
    body.update({"from": "+15551230001", "to": "+15551230002", "text": "py sdk"})
    resp = await harness.post(body)
    assert resp.status == 201
    stored = await harness.stored(resp.headers["Location"].rsplit("/", 1)[1])
    assert stored["text"] == "py sdk"
    assert "tag" not in stored and "fallbackUrl" not in stored
    sent = harness.v2_requests[-1]
    assert sent == {
        "applicationId": harness.cfg.users[0].application_id,
        "to": ["+15551230002"], "from": "+15551230001", "text": "py sdk", "tag": sent["tag"],
    }
    assert send_key_of(sent["tag"]) is not None and sent["tag"].count(":") == 1  # no app tag to carry


@pytest.mark.compat("GET /v1/users/{userId}/messages/{messageId}",
                    "callbackUrl, callbackTimeout, fallbackUrl, tag, receiptRequested", "supported",
                    note="present when set, omitted otherwise (never null); callbackTimeout an integer")
async def test_media_as_string_timeout_as_string_and_all_fields(harness: Harness) -> None:
    mid = await harness.send(
        text=None, media="https://example.com/cat.jpg", callbackTimeout="2000",
        callbackUrl=f"{harness.receiver.url}/cb", callbackHttpMethod="get",
        fallbackUrl=f"{harness.receiver.url}/fb", tag="t1", receiptRequested="none",
    )
    stored = await harness.stored(mid)
    assert stored["media"] == ["https://example.com/cat.jpg"]
    assert stored["callbackTimeout"] == 2000
    assert stored["tag"] == "t1" and stored["receiptRequested"] == "none"
    assert stored["callbackUrl"] == f"{harness.receiver.url}/cb"
    sent = harness.v2_requests[-1]
    assert sent["media"] == ["https://example.com/cat.jpg"] and "text" not in sent
    assert send_key_of(sent["tag"]) is not None and sent["tag"].endswith(":t1")  # key, then the app's tag


@pytest.mark.compat("GET|PUT|DELETE /v1/users/{userId}/media/{mediaName}", "v1 media URLs in sends", "supported",
                    note="media URLs pointing at shim's or api.catapult.inetwork.com's media are rewritten to the v2 "
                         "media URL, so upload-then-send keeps working")
async def test_own_and_legacy_media_urls_are_rewritten_to_v2(harness: Harness) -> None:
    own = f"{harness.url}/v1/users/u-test/media/pic.png"
    legacy = "https://api.catapult.inetwork.com/v1/users/u-test/media/old.gif"
    await harness.send(media=[own, legacy, "https://elsewhere.example/x.png"])
    media = harness.v2_requests[-1]["media"]
    base = harness.cfg.upstream.base_url
    assert media == [f"{base}/users/9900001/media/pic.png", f"{base}/users/9900001/media/old.gif",
                     "https://elsewhere.example/x.png"]


async def test_batch_of_50_with_bad_items(harness: Harness) -> None:
    items: list[object] = []
    for i in range(50):
        if i % 10 == 3:
            items.append({"from": "+15551230001", "text": "no to"})
        elif i % 10 == 7:
            items.append({"from": "+15551230001", "to": "not-a-number", "text": "v2 rejects"})
        elif i == 49:
            items.append("not an object")
        else:
            items.append({"from": "+15551230001", "to": f"+1555123{i:04d}", "text": f"m{i}"})
    resp = await harness.post(items)
    assert resp.status == 202
    assert resp.headers["Content-Type"] == "application/json"
    results = await resp.json()
    assert len(results) == 50
    errors = []
    for i, r in enumerate(results):
        if i % 10 == 3:
            assert r["result"] == "error" and r["error"]["code"] == "missing-property"
        elif i % 10 == 7:
            assert r["result"] == "error" and r["error"]["code"] == "validation-error"
            assert "E164" in r["error"]["message"]
        elif i == 49:
            assert r["result"] == "error" and r["error"]["category"] == "bad-request"
        else:
            assert set(r) == {"result", "location"} and r["result"] == "accepted"
            stored = await harness.stored(r["location"].rsplit("/", 1)[1])
            assert stored["text"] == f"m{i}"  # request order kept
            continue
        assert set(r) == {"result", "error"}
        errors.append(r["error"])
    # Every bad item carries a complete v1 error body (details is always a list of name/value pairs).
    assert len(errors) == 11
    for err in errors:
        assert set(err) == {"category", "code", "message", "details"}, err
        assert all(isinstance(err[k], str) and err[k] for k in ("category", "code", "message")), err
        assert isinstance(err["details"], list), err
        assert all(set(d) == {"name", "value"} for d in err["details"]), err
    # Items shim can judge itself never reach v2; the rest are sent once each.
    assert sorted(b["text"] for b in harness.v2_requests) == sorted(
        [f"m{i}" for i in range(49) if i % 10 not in (3, 7)] + ["v2 rejects"] * 5)


async def test_batch_over_50_is_refused_and_nothing_sent(harness: Harness) -> None:
    before = len(harness.v2_requests)
    resp = await harness.post([{"from": "+15551230001", "to": "+15551230002", "text": "x"}] * 51)
    assert resp.status == 403
    body = await resp.json()
    assert (body["category"], body["code"]) == ("limit", "multi-message-limit")
    assert len(harness.v2_requests) == before


@pytest.mark.compat("POST /v1/users/{userId}/messages", "v2 errors", "supported",
                    note="v2 400 → 400 validation-error with v2's fieldErrors in details; 429 → 403 "
                         "limit/message-rate-limit; 5xx, 401/403 (shim's own credentials), no connection → 503 "
                         "unavailable/message-gateway-unavailable")
async def test_upstream_error_mapping(harness: Harness) -> None:
    resp = await harness.post({"from": "+15551230001", "to": "+15550000429", "text": "x"})
    assert resp.status == 403
    assert (await resp.json())["code"] == "message-rate-limit"
    resp = await harness.post({"from": "+15551230001", "to": "+15550000500", "text": "x"})
    assert resp.status == 503
    assert (await resp.json())["code"] == "message-gateway-unavailable"
    resp = await harness.post({"from": "+15551230001", "to": "+1invalid", "text": "x"})
    assert resp.status == 400
    body = await resp.json()
    assert body["code"] == "validation-error"
    assert {"name": "to.0", "value": "'+1invalid' must be replaced with a valid E164 formatted "
            "telephone number"} in body["details"] or any("E164" in d["value"] for d in body["details"])


async def test_wrong_upstream_credentials_are_503(make_harness) -> None:  # type: ignore[no-untyped-def]
    h = await make_harness()
    h.cfg.users[0].v2_password = type(h.cfg.users[0].v2_password)("wrong")
    resp = await h.post({"from": "+15551230001", "to": "+15551230002", "text": "x"})
    assert resp.status == 503
    assert (await resp.json())["category"] == "unavailable"


@pytest.mark.compat("POST /v1/users/{userId}/messages", "outcome unknown", "supported",
                    note="a timeout after the request left is a 503 whose details say outcome: unknown (with the "
                         "correlation key); never resent automatically")
async def test_upstream_timeout_is_503_and_not_retried(make_harness) -> None:  # type: ignore[no-untyped-def]
    h = await make_harness(upstream={"mode": "sandbox", "timeout_s": 0.3, "connect_retries": 2})
    resp = await h.post({"from": "+15551230001", "to": "+15550000408", "text": "x"})
    assert resp.status == 503
    assert len(h.v2_requests) == 1  # never re-sent once it may have reached v2


async def test_upstream_down_is_503(make_harness) -> None:  # type: ignore[no-untyped-def]
    h = await make_harness()
    h.app[UPSTREAM].base_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    resp = await h.post({"from": "+15551230001", "to": "+15551230002", "text": "x"})
    assert resp.status == 503
    assert (await resp.json())["code"] == "message-gateway-unavailable"


@pytest.mark.compat("GET /v1/users/{userId}/messages/{messageId}", "unknown id", "supported",
                    note="404 not-found/message-not-found; another user's message is not found either")
async def test_get_unknown_and_other_users_message(harness: Harness) -> None:
    r, body = await harness.get_json(f"{harness.messages_url}/m-doesnotexist")
    assert r.status == 404
    assert (body["category"], body["code"]) == ("not-found", "message-not-found")
    mid = await harness.send()
    other = auth("t-other-token", "other-secret")
    r, body = await harness.get_json(f"{harness.url}/v1/users/u-other/messages/{mid}", auth=other)
    assert r.status == 404
    r, body = await harness.get_json(f"{harness.messages_url}/{mid}", auth=other)
    assert r.status == 401 and body["code"] == "access-denied"


async def test_patch_redacts_text(harness: Harness) -> None:
    mid = await harness.send(text="secret text")
    url = f"{harness.messages_url}/{mid}"
    r = await harness.session.patch(url, json={"text": "other"}, headers=harness.auth)
    assert r.status == 400
    r = await harness.session.patch(url, json={"text": "", "x": 1}, headers=harness.auth)
    assert r.status == 400
    assert (await harness.stored(mid))["text"] == "secret text"
    r = await harness.session.patch(url, json={"text": ""}, headers=harness.auth)
    assert r.status == 200
    assert (await harness.stored(mid))["text"] == ""
    r = await harness.session.patch(f"{harness.messages_url}/nope", json={"text": ""}, headers=harness.auth)
    assert r.status == 404


@pytest.mark.compat("GET /v1/users/{userId}/messages", "from, to", "supported",
                    note="exact E.164 match")
@pytest.mark.compat("GET /v1/users/{userId}/messages", "unknown parameters", "supported",
                    note="ignored")
@pytest.mark.compat("GET /v1/users/{userId}/messages", "direction, state, deliveryState, sortOrder", "supported")
@pytest.mark.compat("GET /v1/users/{userId}/messages", "fromDateTime, toDateTime", "supported")
async def test_list_filters_and_order(harness: Harness) -> None:
    a = await harness.send(to="+15551110001", text="a")
    b = await harness.send(to="+15551110002", text="b")
    c = await harness.send(to="+15551110001", text="c")
    r, body = await harness.get_json(harness.messages_url)
    assert r.status == 200 and "Link" not in r.headers
    assert [m["id"] for m in body][:3] == [c, b, a]  # newest first
    r, body = await harness.get_json(harness.messages_url, params={"to": "+15551110001", "sortOrder": "asc"})
    assert [m["id"] for m in body] == [a, c]
    r, body = await harness.get_json(harness.messages_url, params={"direction": "Out", "size": "1"})
    assert len(body) == 1 and r.headers["Link"].endswith('; rel="next"')
    r, body = await harness.get_json(harness.messages_url, params={"fromDateTime": "2999-01-01"})
    assert body == []
    r, body = await harness.get_json(
        harness.messages_url, params={"fromDateTime": "2000-01-01 00:00", "toDateTime": "2999-01-01T00:00:00Z"})
    assert len(body) == 3
    r, body = await harness.get_json(harness.messages_url, params={"state": "bogus"})
    assert r.status == 400 and body["code"] == "validation-error"
    r, body = await harness.get_json(harness.messages_url, params={"unknownParam": "x"})
    assert r.status == 200 and len(body) == 3


@pytest.mark.compat("GET /v1/users/{userId}/messages", "sortKeyLT cursor", "supported",
                    note="opaque cursor (sortKeyLT, or sortKeyGT in ascending order) in the next Link; pages stay stable "
                         "while new messages arrive; default order newest first (v1's docs disagreed with themselves)")
@pytest.mark.compat("GET /v1/users/{userId}/messages", "Link", "supported")
async def test_list_paging_stable_while_inserting(harness: Harness) -> None:
    sent = [await harness.send(to="+15552220001", text=f"p{i}") for i in range(12)]
    seen: list[str] = []
    url: str | None = harness.messages_url + "?to=%2B15552220001&size=5&direction=out"
    extra = 0
    while url:
        r, body = await harness.get_json(url)
        assert r.status == 200
        seen += [m["id"] for m in body]
        link = r.headers.get("Link")
        # New messages arrive between pages.
        await harness.send(to="+15552220001", text=f"new{extra}")
        extra += 1
        if link is None:
            url = None
            break
        assert r.headers.getall("Link") == [link]
        m = re.fullmatch(r'<([^>]+)>; rel="next"', link)
        assert m, link
        url = m.group(1)
        assert "," not in url and ";" not in url and url.startswith(harness.url)
        q = parse_qs(urlsplit(url).query)
        assert q["to"] == ["+15552220001"] and q["size"] == ["5"] and q["direction"] == ["out"]
    assert seen == list(reversed(sent))
    assert len(seen) == len(set(seen))


async def test_list_legacy_page_param(harness: Harness) -> None:
    sent = [await harness.send(to="+15553330001", text=f"p{i}") for i in range(5)]
    _, page0 = await harness.get_json(harness.messages_url, params={"to": "+15553330001", "size": "2", "page": "0"})
    _, page1 = await harness.get_json(harness.messages_url, params={"to": "+15553330001", "size": "2", "page": "1"})
    assert [m["id"] for m in page0 + page1] == list(reversed(sent))[:4]


async def test_batch_items_are_sent_concurrently_with_a_bound(make_harness) -> None:  # type: ignore[no-untyped-def]
    # Counts sends in flight at the upstream (not a timing test): concurrent, never above the bound.
    h = await make_harness(upstream_delay_s=0.2, upstream={"mode": "sandbox", "batch_concurrency": 8})
    items = [{"from": "+15551230001", "to": f"+1555444{i:04d}", "text": "x"} for i in range(20)]
    resp = await h.post(items)
    assert resp.status == 202
    assert all(r["result"] == "accepted" for r in await resp.json())
    assert 1 < h.v2_in_flight["max"] <= 8


async def test_server_keeps_serving_after_many_requests(harness: Harness) -> None:
    results = await asyncio.gather(*(harness.post(None, raw=b"{bad") for _ in range(20)))
    assert all(r.status == 400 for r in results)
    await harness.send()
