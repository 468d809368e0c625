"""Bad input: every request gets a v1 error with the right status, nothing is stored, and the
server keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import sqlite3
import zlib
from datetime import UTC, datetime
from typing import Any

import pytest

from shim.facade.web_v1 import v1_json_bytes
from shim.keys import METRICS, SENDER, STORE
from shim.store._sqlite import sqlite_path

from .conftest import CB_PASS, CB_USER, USER, Harness, auth

V1_KEYS = {"category", "code", "message", "details"}


async def assert_v1_error(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"] == "application/json"
    body = json.loads(await resp.read())
    assert set(body) == V1_KEYS
    assert isinstance(body["message"], str) and body["message"]
    assert all(set(d) == {"name", "value"} for d in body["details"])
    if code:
        assert body["code"] == code, body
    return body


async def nothing_stored(h: Harness) -> None:
    r, body = await h.get_json(h.messages_url)
    assert r.status == 200 and body == []
    assert h.v2_requests == []


@pytest.mark.parametrize(
    ("raw", "status", "code", "says"),
    [
        (b"", 400, "bad-request", "empty"),
        (b"   ", 400, "bad-request", "empty"),
        (b"{not json", 400, "bad-request", "not valid JSON"),
        (b'{"from": "+1", "to": "+2", "text": "x",}', 400, "bad-request", "not valid JSON"),
        (b'"a string"', 400, "bad-request", "JSON object or an array"),
        (b"42", 400, "bad-request", "JSON object or an array"),
        (b"null", 400, "bad-request", "JSON object or an array"),
        (b"[]", 400, "bad-request", "empty array"),
        (b'{"text": "\xff\xfe bad utf8"}', 400, "bad-request", "UTF-8"),
        (b'{"from": NaN}', 400, "bad-request", "not valid JSON"),
        (b"[" * 100000 + b"]" * 100000, 400, "bad-request", "JSON"),
        (b'{"to": "+15551230002", "text": "x"}', 400, "missing-property", "'from'"),
        (b'{"from": "+15551230001", "text": "x"}', 400, "missing-property", "'to'"),
        (b'{"from": "+15551230001", "to": "  ", "text": "x"}', 400, "blank-property", "'to'"),
        (b'{"from": "+15551230001", "to": "+15551230002"}', 400, "missing-property", "'text'"),
        (b'{"from": 15551230001, "to": "+15551230002", "text": "x"}', 400, "validation-error", "string"),
        (b'{"from": "+15551230001", "to": ["+15551230002"], "text": "x"}', 400, "validation-error", "'to'"),
        (b'{"from": "+15551230001", "to": "+15551230002", "text": {"a": 1}}', 400, "validation-error", "text"),
        (json.dumps({"from": "+15551230001", "to": "+15551230002", "text": "x" * 2049}).encode(),
         400, "validation-error", "2,048"),
        (b'{"from": "+15551230001", "to": "+15551230002", "text": "x", "receiptRequested": "sometimes"}',
         400, "validation-error", "receiptRequested"),
        (b'{"from": "+15551230001", "to": "+15551230002", "text": "x", "callbackHttpMethod": "PUT"}',
         400, "validation-error", "callbackHttpMethod"),
        (b'{"from": "+15551230001", "to": "+15551230002", "text": "x", "callbackTimeout": 10001}',
         400, "validation-error", "callbackTimeout"),
        (b'{"from": "+15551230001", "to": "+15551230002", "text": "x", "callbackTimeout": "soon"}',
         400, "validation-error", "callbackTimeout"),
        (b'{"from": "+15551230001", "to": "+15551230002", "text": "x", "callbackUrl": "ftp://x/y"}',
         400, "callback-invalid-url", "callbackUrl"),
        (b'{"from": "+15551230001", "to": "+15551230002", "text": "x", "fallbackUrl": "not a url"}',
         400, "callback-invalid-url", "fallbackUrl"),
        (b'{"from": "+15551230001", "to": "+15551230002", "media": "https://x.io/a.png",'
         b' "receiptRequested": "all"}', 400, "validation-error", "receiptRequested"),
        (b'{"from": "+15551230001", "to": "+15551230002", "media": [1, 2]}', 400, "validation-error", "media"),
    ],
)
@pytest.mark.compat("all v1 endpoints", "error body", "supported",
                    note="{category, code, message, details: [{name, value}]} always; category always one of the C# SDK's "
                         "enum (internal errors are unavailable, never v1's backend)")
async def test_bad_send_bodies(harness: Harness, raw: bytes, status: int, code: str, says: str) -> None:
    body = await assert_v1_error(await harness.post(None, raw=raw), status, code)
    assert says in body["message"], body["message"]
    await nothing_stored(harness)


async def test_body_over_limit(make_harness: Any) -> None:
    h = await make_harness(server__max_body_bytes=4096)
    resp = await h.post(None, raw=json.dumps({"from": "+1", "to": "+2", "text": "x" * 5000}).encode())
    await assert_v1_error(resp, 413, "request-too-large")
    await nothing_stored(h)
    await h.send()


async def test_default_limit_is_one_mib(harness: Harness) -> None:
    resp = await harness.post(None, raw=b"[" + b"1," * 600_000 + b"1]")
    await assert_v1_error(resp, 413, "request-too-large")


async def test_ten_thousand_element_array(harness: Harness) -> None:
    items = [{"from": "+15551230001", "to": "+15551230002", "text": "x"}] * 10_000
    body = await assert_v1_error(await harness.post(items), 403, "multi-message-limit")
    assert "[10000]" in body["message"]
    await nothing_stored(harness)


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nope", 404, "resource-not-found"),
        ("GET", "/v1/users/u-test/nothing", 404, "resource-not-found"),
        ("DELETE", "/v1/users/u-test/messages", 405, "method-not-allowed"),
        ("PUT", "/v1/users/u-test/messages/abc", 405, "method-not-allowed"),
        ("POST", "/healthz", 405, "method-not-allowed"),
    ],
)
async def test_unknown_paths_and_methods(harness: Harness, method: str, path: str, status: int, code: str) -> None:
    resp = await harness.session.request(method, harness.url + path, headers=harness.auth)
    await assert_v1_error(resp, status, code)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        auth("t-test-token", "wrong"),
        auth("wrong", "s3cret-value"),
        auth("t-other-token", "other-secret"),  # valid, but for another userId
        {"Authorization": "Basic !!!notbase64"},
        {"Authorization": "Bearer abc"},
    ],
)
@pytest.mark.compat("all v1 endpoints", "HTTP Basic auth", "supported",
                    note="api_token:api_secret checked in constant time; unknown user, wrong credentials and someone "
                         "else's userId are the same 401 authorization/access-denied")
async def test_wrong_or_missing_auth(harness: Harness, headers: dict[str, str]) -> None:
    for method, url in (("POST", harness.messages_url), ("GET", harness.messages_url),
                        ("GET", harness.messages_url + "/x"), ("GET", f"{harness.url}/v1/users/u-test/media")):
        resp = await harness.session.request(method, url, headers=headers,
                                             data=b'{"from":"+15551230001","to":"+15551230002","text":"x"}')
        body = await assert_v1_error(resp, 401, "access-denied")
        assert body["category"] == "authorization"
    # Unknown user id gets the same answer.
    resp = await harness.session.get(f"{harness.url}/v1/users/u-nobody/messages", headers=harness.auth)
    await assert_v1_error(resp, 401, "access-denied")
    await nothing_stored(harness)


async def test_bad_list_queries(harness: Harness) -> None:
    for params in ({"size": "abc"}, {"size": "0"}, {"fromDateTime": "yesterday"},
                   {"sortOrder": "sideways"}, {"deliveryState": "maybe"}, {"sortKeyLT": "x"}):
        resp = await harness.session.get(harness.messages_url, params=params, headers=harness.auth)
        await assert_v1_error(resp, 400, "validation-error")
    resp = await harness.session.get(harness.messages_url, params={"size": "5000"}, headers=harness.auth)
    assert resp.status == 200


async def test_bad_patch_bodies(harness: Harness) -> None:
    mid = await harness.send(text="keep")
    for raw in (b"", b"[]", b'{"text": null}', b'{"text": "x"}', b"\xff"):
        resp = await harness.session.patch(f"{harness.messages_url}/{mid}", data=raw, headers=harness.auth)
        assert resp.status == 400
    assert (await harness.stored(mid))["text"] == "keep"


# --- malformed HTTP: aiohttp's parser errors answered as v1 JSON over a raw socket -----------

async def raw_exchange(h: Harness, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes on a fresh connection; everything the server writes until it closes."""
    host, port = h.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def parse_raw(resp: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def assert_raw_v1_error(resp: bytes, status: int, code: str | None = None) -> dict[str, Any]:
    got, headers, body = parse_raw(resp)
    assert got == status, resp[:300]
    assert headers["content-type"] == "application/json", resp[:300]
    data = json.loads(body[: int(headers["content-length"])])
    assert set(data) == V1_KEYS and data["message"], data
    assert all(set(d) == {"name", "value"} for d in data["details"])
    if code:
        assert data["code"] == code, data
    return data


def _req(head: bytes, body: bytes = b"") -> bytes:
    return head + b"\r\nHost: x\r\nConnection: close\r\n\r\n" + body


RAW_CASES = [
    (b"POST /v1/users/u-test/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad-request"),
    (b"POST /v1/users/u-test/messages HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "bad-request"),
    (b"POST /v1/users/u-test/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
     400, "bad-request"),
    (b"POST /v1/users/u-test/messages HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, "bad-request"),
    (b"POST /v1/users/u-test/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
     400, "bad-request"),
    (b"POST /v1/users/u-test/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "bad-request"),
    (_req(b"FOO /v1/users/u-test/messages HTTP/1.1"), 501, "method-not-implemented"),
    (_req(b"G@T / HTTP/1.1"), 400, "bad-request"),
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 400, "bad-request"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "bad-request"),
    (_req(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 9000), 431, "request-header-fields-too-large"),
    (_req(b"GET /healthz HTTP/1.1" + b"".join(b"\r\nX-%d: 1" % i for i in range(200))),
     431, "request-header-fields-too-large"),
    (_req(b"GET /" + b"a" * 9000 + b" HTTP/1.1"), 414, "uri-too-long"),
    (_req(b"GET /v1/users/u-test/messages?q=\xe9 HTTP/1.1"), 400, "bad-request"),
    (_req(b"GET /v1/\xff/messages HTTP/1.1"), 400, "bad-request"),
    (_req(b"GET / HTTP/1.1\r\nBad Header: x"), 400, "bad-request"),
    (_req(b"GET / HTTP/9.9"), 400, "bad-request"),
]


@pytest.mark.parametrize(("raw", "status", "code"), RAW_CASES)
async def test_malformed_http_gets_v1_json(harness: Harness, raw: bytes, status: int, code: str) -> None:
    assert_raw_v1_error(await raw_exchange(harness, raw), status, code)
    # Still serving, on a new connection.
    got, _, _ = parse_raw(await raw_exchange(harness, _req(b"GET /healthz HTTP/1.1")))
    assert got == 200
    await nothing_stored(harness)


async def test_head_timeout_closes_slow_clients(make_harness: Any) -> None:
    h = await make_harness(server__header_timeout_s=0.5)
    host, port = h.url.removeprefix("http://").split(":")
    started = asyncio.get_running_loop().time()
    # A partial head, then nothing: answered 408 and closed.
    partial = await raw_exchange(h, b"POST /v1/users/u-test/messages HTTP/1.1\r\nHost: x\r\nX-Slow: 1", timeout=5)
    assert_raw_v1_error(partial, 408, "request-timeout")
    # A connection that sends nothing at all is closed too.
    reader, writer = await asyncio.open_connection(host, int(port))
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert asyncio.get_running_loop().time() - started < 4
    # Whole requests on a kept-alive connection are unaffected.
    for _ in range(2):
        r, _ = await h.get_json(h.messages_url)
        assert r.status == 200


# --- Content-Encoding of request bodies ------------------------------------------------------

GOOD = {"from": "+15551230001", "to": "+15551230002", "text": "compressed"}


async def test_gzip_and_deflate_bodies_are_decoded(harness: Harness) -> None:
    raw = json.dumps(GOOD).encode()
    resp = await harness.post(None, raw=gzip.compress(raw), headers={"Content-Encoding": "gzip"})
    assert resp.status == 201, await resp.text()
    resp = await harness.post(None, raw=zlib.compress(raw), headers={"Content-Encoding": "deflate"})
    assert resp.status == 201, await resp.text()
    assert [m["text"] for m in harness.v2_requests] == ["compressed", "compressed"]


@pytest.mark.parametrize(
    ("encoding", "raw"),
    [
        ("br", b"\x1b\x03\x00\xf8\xa5\x05"),
        ("zstd", b"(\xb5/\xfd"),
        ("gzip", json.dumps(GOOD).encode()),  # says gzip, isn't
        ("deflate", b"not deflate at all"),
        ("compress", json.dumps(GOOD).encode()),
        ("foo", json.dumps(GOOD).encode()),
    ],
)
async def test_undecodable_bodies(harness: Harness, encoding: str, raw: bytes) -> None:
    resp = await harness.post(None, raw=raw, headers={"Content-Encoding": encoding})
    body = await assert_v1_error(resp, 400, "bad-request")
    assert "Content-Encoding is not supported or the body could not be decoded" in body["message"]
    await nothing_stored(harness)
    await harness.send()


async def test_truncated_gzip_is_a_bad_request(harness: Harness) -> None:
    raw = gzip.compress(json.dumps(GOOD).encode())[:-12]
    await assert_v1_error(await harness.post(None, raw=raw, headers={"Content-Encoding": "gzip"}), 400, "bad-request")
    await nothing_stored(harness)


async def test_body_limit_applies_to_decoded_size(make_harness: Any) -> None:
    h = await make_harness(server__max_body_bytes=4096)
    raw = gzip.compress(json.dumps(GOOD | {"text": "x" * 2000, "tag": "t" * 1000, "pad": "p" * 5000}).encode())
    assert len(raw) < 1024
    resp = await h.post(None, raw=raw, headers={"Content-Encoding": "gzip"})
    await assert_v1_error(resp, 413, "request-too-large")
    await nothing_stored(h)


@pytest.mark.parametrize("value", [str(2**63), str(2**64 + 1), "9" * 40, "-1", "-" + "9" * 30])
@pytest.mark.parametrize("key", ["sortKeyLT", "sortKeyGT"])
async def test_list_cursor_out_of_range(harness: Harness, key: str, value: str) -> None:
    await harness.send()
    resp = await harness.session.get(harness.messages_url, params={key: value}, headers=harness.auth)
    body = await assert_v1_error(resp, 400, "validation-error")
    assert {"name": "parameterName", "value": key} in body["details"]
    assert key in body["message"]


@pytest.mark.parametrize("value", [str(2**63), str(2**64 + 1), "9" * 40, "-" + "9" * 30])
async def test_list_huge_page_and_size_are_clamped(harness: Harness, value: str) -> None:
    await harness.send()
    r, body = await harness.get_json(harness.messages_url, params={"page": value})
    # A negative page is the first page; a page past the end is empty.
    assert r.status == 200 and len(body) == (1 if value.startswith("-") else 0), body
    r, body = await harness.get_json(harness.messages_url, params={"page": value, "size": value})
    if value.startswith("-"):
        assert r.status == 400 and body["details"][0] == {"name": "parameterName", "value": "size"}
    else:
        assert r.status == 200 and body == [], body
    r, body = await harness.get_json(harness.messages_url, params={"size": value})
    assert r.status == (400 if value.startswith("-") else 200), body


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "99999-01-01"])
async def test_list_dates_off_the_calendar(harness: Harness, value: str) -> None:
    resp = await harness.session.get(harness.messages_url, params={"fromDateTime": value}, headers=harness.auth)
    await assert_v1_error(resp, 400, "validation-error")


# --- values JSON can carry but UTF-8 cannot: lone surrogates ---------------------------------

def row_counts(h: Harness) -> tuple[int, int, int]:
    """(messages, events, outbox) rows, read through a separate SQLite connection."""
    with contextlib.closing(sqlite3.connect(sqlite_path(h.cfg.store.url))) as db:
        row = db.execute("SELECT (SELECT COUNT(*) FROM messages), (SELECT COUNT(*) FROM events),"
                         " (SELECT COUNT(*) FROM outbox)").fetchone()
    return int(row[0]), int(row[1]), int(row[2])


SURROGATE_FIELDS = [
    ("text", '"bad \\ud800 text"'),
    ("tag", '"\\udfff"'),
    ("from", '"+1555\\ud800"'),
    ("to", '"\\ud83d+15551230002"'),
    ("callbackUrl", '"https://example.com/\\ud800"'),
    ("fallbackUrl", '"https://example.com/x?\\udc80"'),
    ("media", '["https://example.com/\\ud800.png"]'),
    ("media", '"https://example.com/\\ud800.png"'),
]


def _with(key: str, raw_value: str) -> bytes:
    base = {"from": "+15551230001", "to": "+15551230002", "text": "hi"}
    fields = [f'"{k}": {json.dumps(v)}' for k, v in base.items() if k != key] + [f'"{key}": {raw_value}']
    return ("{" + ", ".join(fields) + "}").encode()


@pytest.mark.parametrize(("key", "raw_value"), SURROGATE_FIELDS)
async def test_lone_surrogates_rejected_before_sending(harness: Harness, key: str, raw_value: str) -> None:
    resp = await harness.post(None, raw=_with(key, raw_value))
    body = await assert_v1_error(resp, 400, "validation-error")
    assert {"name": "propertyName", "value": key} in body["details"]
    assert "surrogate" in body["message"]
    await nothing_stored(harness)
    assert row_counts(harness) == (0, 0, 0)


async def test_batch_with_a_surrogate_item_still_answers_202(harness: Harness) -> None:
    good = json.dumps({"from": "+15551230001", "to": "+15551230002", "text": "ok"}).encode()
    raw = b"[" + good + b"," + _with("text", '"\\ud800"') + b"," + _with("tag", '"\\udfff"') + b"]"
    resp = await harness.post(None, raw=raw)
    assert resp.status == 202, await resp.text()
    assert resp.headers["Content-Type"] == "application/json"
    results = json.loads(await resp.read())
    assert [r["result"] for r in results] == ["accepted", "error", "error"]
    assert [r["error"]["details"][0]["value"] for r in results[1:]] == ["text", "tag"]
    assert len(harness.v2_requests) == 1
    assert row_counts(harness)[0] == 1


async def test_batch_item_internal_error_is_unavailable(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    store = harness.app[STORE]
    real = store.bind_send
    calls = {"n": 0}

    async def flaky(rec: Any, request_id: str | None = None) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk on fire")
        return await real(rec, request_id)

    async def boom(*_: Any, **__: Any) -> Any:
        raise KeyError("unexpected")

    monkeypatch.setattr(store, "bind_send", flaky)
    items = [{"from": "+15551230001", "to": "+15551230002", "text": str(i)} for i in range(3)]
    resp = await harness.post(items)
    assert resp.status == 202
    results = json.loads(await resp.read())
    assert sorted(r["result"] for r in results) == ["accepted", "accepted", "error"]
    (err,) = [r["error"] for r in results if r["result"] == "error"]
    assert err["category"] == "unavailable" and set(err) == V1_KEYS
    # An unexpected exception (not a ShimError) in one item: that item is unavailable too.
    monkeypatch.setattr(harness.app[SENDER].upstream, "send_message", boom)
    resp = await harness.post(items[:2])
    assert resp.status == 202
    assert {r["error"]["category"] for r in json.loads(await resp.read())} == {"unavailable"}


async def test_error_bodies_never_crash_on_surrogates() -> None:
    body = v1_json_bytes({"message": "bad \ud800 value", "details": [{"name": "x", "value": "\udfff"}]})
    assert json.loads(body)["message"] == "bad ? value"


# --- ingest: one bad event never costs its array -----------------------------------------------

def _event(mid: str, type_: str = "message-delivered", **kw: Any) -> dict[str, Any]:
    return {"type": type_, "time": "2026-01-01T00:00:01Z", "to": "+15551230002", "description": "ok",
            "message": {"id": mid, "owner": "+15551230001", "applicationId": USER["application_id"],
                        "time": "2026-01-01T00:00:00Z", "segmentCount": 1, "direction": "out",
                        "to": ["+15551230002"], "from": "+15551230001", "text": ""}} | kw


async def post_raw_events(h: Harness, raw: bytes) -> Any:
    resp = await h.session.post(f"{h.url}{h.cfg.callbacks.path}", data=raw,
                                headers={"Content-Type": "application/json"} | auth(CB_USER, CB_PASS))
    await resp.read()
    return resp


def _inbound(mid: str, time: str = "", text: str = "hello") -> dict[str, Any]:
    # Recent: retention would purge an old message while the test looks.
    time = time or datetime.now(UTC).isoformat()
    ev = _event(mid, "message-received")
    ev["message"] |= {"direction": "in", "time": time, "text": text, "owner": "+15551230002",
                      "to": ["+15551230002"], "from": "+15557770000"}
    return ev


BAD_EVENTS: list[tuple[str, bytes]] = [
    ("invalid", json.dumps({"type": "message-delivered"}).encode()),
    ("invalid", json.dumps(_event("m-big", segmentCount=1) | {"errorCode": 2**70}).encode()),
    ("invalid", json.dumps({**_event("m-seg"), "message": {**_event("m-seg")["message"], "segmentCount": 2**64}}).encode()),
    ("not-an-object", b"42"),
    ("unencodable", json.dumps(_inbound("m-sur")).replace('"hello"', '"he\\ud800llo"').encode()),
    ("unencodable", json.dumps(_event("m-sur2")).replace('"description"', '"\\udfffkey"').encode()),
]


@pytest.mark.parametrize(("reason", "bad"), BAD_EVENTS)
async def test_one_bad_event_does_not_reject_its_array(
    harness: Harness, reason: str, bad: bytes, caplog: pytest.LogCaptureFixture,
) -> None:
    good = [json.dumps(_inbound(f"in-{i}")).encode() for i in range(2)]
    raw = b"[" + good[0] + b"," + bad + b"," + good[1] + b"]"
    resp = await post_raw_events(harness, raw)
    assert resp.status == 200, await resp.text()
    assert row_counts(harness)[:2] == (2, 2)
    metrics = harness.app[METRICS].render().decode()
    assert f'shim_callback_events_rejected_total{{reason="{reason}"}} 1.0' in metrics
    (rec,) = [r for r in caplog.records if r.getMessage() == "callback event rejected"]
    assert rec.levelname == "WARNING" and rec.__dict__["index"] == 1
    assert rec.__dict__["event"].isascii() and len(rec.__dict__["event"]) <= 600
    assert CB_PASS not in repr(rec.__dict__)
    # Kept for inspection (SPEC §4): the rejected event, escaped, with why and which request.
    ((kept_reason, body, request_id),) = await harness.app[STORE].query(
        "SELECT reason, body, request_id FROM rejected_events")
    assert kept_reason == reason and body.isascii() and request_id


@pytest.mark.parametrize("time", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
async def test_inbound_time_off_the_calendar(harness: Harness, time: str) -> None:
    resp = await post_raw_events(harness, json.dumps([_inbound("in-edge", time=time)]).encode())
    assert resp.status == 200, await resp.text()
    r, body = await harness.get_json(harness.messages_url)
    assert r.status == 200 and [m["text"] for m in body] == ["hello"]


async def test_all_bad_or_empty_arrays_are_400(harness: Harness) -> None:
    for raw in (b"[]", b"{}", b'"x"', b"[1, 2]", b'[{"type": "x"}]'):
        resp = await post_raw_events(harness, raw)
        await assert_v1_error(resp, 400, "bad-request")
    assert row_counts(harness) == (0, 0, 0)
