"""Property-based fuzzing of every way in (SPEC §6): send bodies (single and batch), list query
strings, ingest arrays and raw HTTP framing. Whatever arrives, the answer is v1 JSON with
``Content-Type: application/json`` exactly (bodyless successes excepted), never a 5xx, and a
rejected request (4xx) changes no stored row. Seeded (``derandomize``) and bounded."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from .conftest import CB_PASS, CB_USER, USER, Harness, HarnessFactory, auth
from .test_web_bad_input import V1_KEYS, parse_raw, row_counts

FUZZ = settings(
    derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# The categories the C# SDK knows: a batch item's error must be one of them.
SDK_CATEGORIES = {"authentication", "authorization", "not-found", "bad-request", "conflict", "unavailable",
                  "credit", "limit", "payment", "forbidden"}

SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])
HOSTILE_TEXT = st.one_of(
    st.text(max_size=30),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=5), SURROGATES, st.text(max_size=5)),
    st.sampled_from(["", " ", "\x00", "\u202e", "x" * 3000, "https://", "ftp://x/y", "http://[::1", "%ff"]),
)
HOSTILE_NUMBER = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**400]),
    st.floats(allow_nan=False, allow_infinity=False),
)
JUNK: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.booleans(), HOSTILE_NUMBER, HOSTILE_TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(HOSTILE_TEXT, inner, max_size=3)),
    max_leaves=6,
)
VALID = {
    "from": st.sampled_from(["+15551230001", " +15551230001 "]),
    "to": st.sampled_from(["+15551230002", "+15551230003"]),
    "text": st.sampled_from(["hi", "héllo ☃", "x" * 2048]),
    "media": st.sampled_from(["https://example.com/a.png", ["https://example.com/a.png"]]),
    "tag": st.sampled_from(["t", "ü" * 10]),
    "callbackUrl": st.sampled_from(["https://example.com/cb", "http://127.0.0.1:9/cb"]),
    "fallbackUrl": st.just("https://example.com/fb"),
    "callbackHttpMethod": st.sampled_from(["GET", "post"]),
    "callbackTimeout": st.sampled_from([1, "500", 10000]),
    "receiptRequested": st.sampled_from(["none", "all", "error"]),
}
SEND_KEYS = [*VALID, "from", "to", "text", "junk"]


def _taint(value: Any, surrogate: str) -> Any:
    """A valid value with a lone surrogate in it: passes every check but UTF-8's."""
    if isinstance(value, str):
        return value + surrogate
    if isinstance(value, list):
        return [_taint(v, surrogate) for v in value]
    return value


@st.composite
def send_items(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JUNK)
    item: dict[str, Any] = {"from": "+15551230001", "to": "+15551230002", "text": "hi"}
    for key in draw(st.lists(st.sampled_from(SEND_KEYS), max_size=4, unique=True)):
        how = draw(st.sampled_from(["junk", "valid", "tainted"]))
        if how == "junk" or key == "junk":
            item[key] = draw(JUNK)
        else:
            value = draw(VALID[key]) if key in VALID else draw(st.sampled_from(["hi", "+15551230002"]))
            item[key] = _taint(value, draw(SURROGATES)) if how == "tainted" else value
    for key in draw(st.lists(st.sampled_from(["from", "to", "text"]), max_size=1)):
        del item[key]
    return item


SEND_BODIES = st.one_of(send_items(), st.lists(send_items(), min_size=0, max_size=4), JUNK)


async def assert_v1_answer(status: int, content_type: str | None, body: bytes, bodyless_ok: bool = False) -> Any:
    if bodyless_ok and not body:
        return None
    assert content_type == "application/json", (status, content_type, body[:200])
    data = json.loads(body)
    if status >= 400:
        assert set(data) == V1_KEYS, data
        assert isinstance(data["message"], str) and data["message"]
        assert all(set(d) == {"name", "value"} and isinstance(d["value"], str) for d in data["details"])
    return data


def no_5xx(status: int, data: Any) -> None:
    # Only the documented 503 of an unreachable/failing upstream may be a 5xx, and here the upstream
    # (the sandbox) is up: none at all.
    assert status < 500, (status, data)


@pytest.fixture
async def quiet_harness(make_harness: HarnessFactory) -> Harness:
    # No sandbox callbacks and no retention purge: stored rows change only through the requests.
    h = await make_harness(retention__purge_days=10_000_000)
    h.sandbox_state.target = None
    return h


@settings(FUZZ, max_examples=300)
@given(body=SEND_BODIES)
async def test_fuzz_send(quiet_harness: Harness, body: Any) -> None:
    h = quiet_harness
    before = row_counts(h)
    resp = await h.post(None, raw=json.dumps(body).encode())
    raw = await resp.read()
    data = await assert_v1_answer(resp.status, resp.headers.get("Content-Type"), raw,
                                  bodyless_ok=resp.status == 201)
    no_5xx(resp.status, data)
    if resp.status == 201:
        assert resp.headers["Location"].startswith(h.messages_url + "/")
        assert isinstance(body, dict)
    elif resp.status == 202:
        assert isinstance(body, list) and len(data) == len(body)
        for result in data:
            if result["result"] == "error":
                assert set(result["error"]) == V1_KEYS
                # The upstream is up: an item fails for its own content, never "unavailable".
                assert result["error"]["category"] in SDK_CATEGORIES - {"unavailable"}, result
            else:
                assert result["result"] == "accepted"
    else:
        assert 400 <= resp.status < 500
        assert row_counts(h) == before


LIST_KEYS = ["from", "to", "direction", "state", "deliveryState", "fromDateTime", "toDateTime", "sortOrder",
             "size", "page", "sortKeyLT", "sortKeyGT", "junk"]
QUERY_VALUE = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.sampled_from(["", "0", "-0", "1e3", "0x10", "  7 ", "NotDelivered", "in", "asc", "9" * 3000,
                     "2014-05-25 10:30:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]),
    st.binary(max_size=12).map(lambda b: "".join(f"%{c:02X}" for c in b)),
    st.text(max_size=10).map(lambda t: "".join(f"%{c:02X}" for c in t.encode())),
)


@settings(FUZZ, max_examples=100)
@given(params=st.lists(st.tuples(st.sampled_from(LIST_KEYS), QUERY_VALUE), max_size=5))
async def test_fuzz_list_query(quiet_harness: Harness, params: list[tuple[str, str]]) -> None:
    h = quiet_harness
    if not row_counts(h)[0]:
        await h.send()
    before = row_counts(h)
    query = "&".join(f"{k}={v}" for k, v in params)
    resp = await h.session.get(URL(f"{h.messages_url}?{query}", encoded=True), headers=h.auth)
    data = await assert_v1_answer(resp.status, resp.headers.get("Content-Type"), await resp.read())
    no_5xx(resp.status, data)
    assert resp.status in (200, 400, 414), (resp.status, data)  # 414: a URL over 8190 bytes
    if resp.status == 200:
        assert isinstance(data, list)
    assert row_counts(h) == before


def v2_event(mid: str, type_: str) -> dict[str, Any]:
    return {"type": type_, "time": "2026-01-01T00:00:01Z", "to": "+15551230002", "description": "ok",
            "errorCode": 4720,
            "message": {"id": mid, "owner": "+15551230002", "applicationId": USER["application_id"],
                        "time": "2026-01-01T00:00:00Z", "segmentCount": 1,
                        "direction": "in" if type_ == "message-received" else "out",
                        "to": ["+15551230002"], "from": "+15557770000", "text": "hey"}}


@st.composite
def v2_events(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JUNK)
    ev = v2_event(draw(st.sampled_from(["m-1", "m-2", "m-\ud800"])),
                  draw(st.sampled_from(["message-received", "message-delivered", "message-failed", "x"])))
    for _ in range(draw(st.integers(0, 2))):
        targets = [ev] + ([ev["message"]] if isinstance(ev.get("message"), dict) else [])
        target = draw(st.sampled_from(targets))
        key = draw(st.sampled_from([*target, "junk"]))
        if draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = draw(st.one_of(JUNK, st.sampled_from(["0001-01-01T00:00:00+14:00",
                                                                   "9999-12-31T23:59:59-14:00"])))
    return ev


@settings(FUZZ, max_examples=200)
@given(body=st.one_of(st.lists(v2_events(), max_size=4), v2_events()))
async def test_fuzz_ingest(quiet_harness: Harness, body: Any) -> None:
    h = quiet_harness
    before = row_counts(h)
    resp = await h.session.post(f"{h.url}{h.cfg.callbacks.path}", data=json.dumps(body).encode(),
                                headers={"Content-Type": "application/json"} | auth(CB_USER, CB_PASS))
    raw = await resp.read()
    data = await assert_v1_answer(resp.status, resp.headers.get("Content-Type"), raw,
                                  bodyless_ok=resp.status == 200)
    no_5xx(resp.status, data)
    assert resp.status in (200, 400), (resp.status, data)
    if resp.status == 400:
        assert row_counts(h) == before


METHODS = st.sampled_from([b"GET", b"POST", b"PATCH", b"PUT", b"FOO", b"G@T", b"", b"get", b"\x16\x03"])
PATHS = st.one_of(
    st.sampled_from([b"/v1/users/u-test/messages", b"/v1/users/u-test/messages/x", b"/callbacks/v2", b"/nope",
                     b"*", b"", b"/v1/users/u-test/messages?size=" + b"9" * 30]),
    st.binary(max_size=20).map(lambda b: b"/" + b.replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b"")),
)
HEADERS = st.lists(st.one_of(
    st.sampled_from([b"Content-Length: 5", b"Content-Length: -1", b"Content-Length: 99999999999999999999",
                     b"Content-Length: abc", b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip",
                     b"Content-Encoding: gzip", b"Content-Encoding: br", b"Content-Type: application/json",
                     b"Bad Header: x", b"X-Big: " + b"a" * 9000, b"Host: x", b"Expect: 100-continue",
                     b"Authorization: Basic " + b"A" * 50]),
    st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
), max_size=5)


@settings(FUZZ, max_examples=300)
@given(method=METHODS, path=PATHS, version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b""]),
       headers=HEADERS, body=st.binary(max_size=40))
async def test_fuzz_raw_http(quiet_harness: Harness, method: bytes, path: bytes, version: bytes,
                             headers: list[bytes], body: bytes) -> None:
    h = quiet_harness
    before = row_counts(h)
    raw = method + b" " + path + b" " + version + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body
    host, port = h.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    if answer:  # The server may also just close a connection that never sent a whole head.
        status, hdrs, rest = parse_raw(answer)
        length = int(hdrs.get("content-length", "0"))
        data = await assert_v1_answer(status, hdrs.get("content-type"), rest[:length],
                                      bodyless_ok=status in (200, 201, 202) or method == b"HEAD")
        no_5xx(status, data)
        if 400 <= status < 500:
            assert row_counts(h) == before
    resp = await h.session.get(h.url + "/healthz")
    assert resp.status == 200
