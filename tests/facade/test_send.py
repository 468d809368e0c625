"""The send use case with no sockets: ``Sender`` over a ``MockTransport`` (the v2 edge) and a real
in-memory SQLite store. Each v2 request built is checked against the packaged official spec."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shim.config import Config, parse_config
from shim.core import ListQuery, message_request_errors, send_key_of, v2_tag
from shim.errors import (
    InvalidProperty,
    MessageRateLimit,
    MultiMessageLimit,
    OutcomeUnknown,
    ShimError,
    StoreUnavailable,
    Unavailable,
)
from shim.facade import Sender
from shim.facade._send import new_send_key
from shim.gateway import Gateway
from shim.store import Store, open_store
from shim.upstream import ConnectFailed, MockResponse, MockTransport, Request, RequestFailed, UpstreamClient

from ..conftest import USER

NOW_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
CFG: Config = parse_config({"server": {"public_url": "https://shim.example"}, "users": [USER],
                            "callbacks": {"username": "bandwidth", "password": "callback-pass-1"},
                            "upstream": {"mode": "bandwidth", "base_url": "https://v2.example/api/v2",
                                         "connect_retries": 2, "batch_concurrency": 4}})
U = CFG.users[0]
ITEM = {"from": "+15551230001", "to": "+15551230002", "text": "hi"}


def v2_accepts(req: Request, mid: str = "m" * 29, time: str | None = None) -> MockResponse:
    body = req.json()
    assert message_request_errors(body) == []
    msg = {"id": mid, "owner": body["from"], "applicationId": body["applicationId"], "segmentCount": 1,
           "direction": "out", "to": body["to"], "from": body["from"], "text": body.get("text", "")}
    if time:
        msg["time"] = time
    return MockResponse.of_json(202, msg)


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    s = open_store("sqlite:///:memory:", Gateway(CFG))
    await s.open()
    yield s
    await s.close()


def keys(start: int = 0) -> Any:
    n = itertools.count(start)
    return lambda now_us: f"key{next(n):019d}"


async def make_sender(store: Store, handler: Any, first_key: int = 0) -> tuple[Sender, MockTransport]:
    transport = MockTransport(handler)
    upstream = UpstreamClient(CFG.upstream, CFG.upstream.base_url, transport=transport)
    await upstream.start()
    return Sender(CFG, upstream, store, lambda: NOW_US, new_key=keys(first_key)), transport


async def rows(store: Store, sql: str) -> int:
    ((n,),) = await store.query(sql)
    return int(n)


@pytest.mark.parametrize(("earlier_us", "later_us"), [
    (0, 1_000),  # one millisecond
    (1_700_000_000_000_000, 1_700_000_000_001_000),
    (63_000, 64_000),  # the last character wraps: "_" < "a", "z" < the next "0" one place up
    (4_095_000, 4_096_000),  # two characters wrap
    (1_764_000_000_000_000, 4_000_000_000_000_000),  # 2025 and 2096
])
def test_send_keys_sort_by_their_time_in_byte_order(earlier_us: int, later_us: int) -> None:
    # Byte order is how SQLite compares them: the index on keys gets appends, not random pages.
    a, b = new_send_key(earlier_us), new_send_key(later_us)
    assert a.encode() < b.encode()
    assert a[:8] < b[:8]


def test_send_keys_of_consecutive_milliseconds_sort_in_order() -> None:
    heads = [new_send_key(ms * 1000)[:8].encode() for ms in range(64 * 64 + 1)]  # every character, twice
    assert heads == sorted(heads) and len(set(heads)) == len(heads)


def test_send_keys_are_valid_v2_correlation_keys_and_random_within_a_millisecond() -> None:
    keys = {new_send_key(1_764_000_000_123_456) for _ in range(1000)}
    assert len(keys) == 1000
    assert {k[:8] for k in keys} == {new_send_key(1_764_000_000_123_999)[:8]}
    for k in keys:
        assert len(k) == 24
        assert send_key_of(v2_tag(k, None)) == k
        assert send_key_of(v2_tag(k, "app tag")) == k


async def test_the_send_key_is_made_from_the_clock_the_send_is_recorded_at(store: Store) -> None:
    seen: list[int] = []

    def key(now_us: int) -> str:
        seen.append(now_us)
        return f"key{now_us:019d}"
    async def handler(req: Request) -> MockResponse:
        return v2_accepts(req)

    transport = MockTransport(handler)
    upstream = UpstreamClient(CFG.upstream, CFG.upstream.base_url, transport=transport)
    await upstream.start()
    sender = Sender(CFG, upstream, store, lambda: NOW_US, new_key=key)
    await sender.send(U, ITEM)
    assert seen == [NOW_US]
    assert await store.query("SELECT send_key FROM messages") == [(f"key{NOW_US:019d}",)]


async def test_single_send_builds_the_v2_request_and_stores_before_answering(store: Store) -> None:
    async def handler(req: Request) -> MockResponse:
        return v2_accepts(req, "a" * 29)

    sender, transport = await make_sender(store, handler)
    location = await sender.send(U, ITEM | {"tag": "t1", "callbackUrl": "https://app.example/cb"}, "rid-1")
    assert location == f"https://shim.example/v1/users/{U.user_id}/messages/{'a' * 29}"
    (req,) = transport.requests
    assert (req.method, req.url) == ("POST", f"https://v2.example/api/v2/users/{U.account_id}/messages")
    # The app's tag goes to v2 behind the send's correlation key; GET and callbacks show it alone.
    assert req.json() == {"applicationId": U.application_id, "to": ["+15551230002"], "from": "+15551230001",
                          "text": "hi", "tag": f"shim1:key{0:019d}:t1"}
    assert req.headers["X-Request-Id"] == "rid-1" and req.headers["Content-Type"] == "application/json"
    rec = await store.get_message(U.user_id, "a" * 29)
    assert rec is not None and rec.callback_url == "https://app.example/cb" and rec.tag == "t1"
    # v2 gave no time: the record is dated by the injected clock.
    assert rec.time_us == NOW_US and rec.time == "2026-01-01T00:00:00.000Z"


async def test_v2_time_wins_over_the_clock(store: Store) -> None:
    async def handler(req: Request) -> MockResponse:
        return v2_accepts(req, "b" * 29, time="2025-06-01T12:00:00.250Z")

    sender, _ = await make_sender(store, handler)
    await sender.send(U, ITEM)
    rec = await store.get_message(U.user_id, "b" * 29)
    assert rec is not None and rec.time == "2025-06-01T12:00:00.250Z"


async def test_invalid_item_is_rejected_before_v2(store: Store) -> None:
    async def handler(req: Request) -> MockResponse:
        raise AssertionError("nothing may be sent")

    sender, transport = await make_sender(store, handler)
    with pytest.raises(ShimError) as err:
        await sender.send(U, {"from": "+15551230001", "text": "no to"})
    assert err.value.code == "missing-property" and transport.requests == []


@pytest.mark.parametrize(
    ("answer", "error", "code"),
    [
        (MockResponse.of_json(400, {"type": "request-validation", "description": "bad",
                                    "fieldErrors": [{"fieldName": "to", "description": "not E164"}]}),
         InvalidProperty, "validation-error"),
        (MockResponse.of_json(429, {"description": "slow down"}), MessageRateLimit, "message-rate-limit"),
        (MockResponse.of_json(401, {}), Unavailable, "message-gateway-unavailable"),
        (MockResponse.of_json(500, {}), Unavailable, "message-gateway-unavailable"),
    ],
)
async def test_v2_answers_map_to_v1_errors_and_store_nothing(
    store: Store, answer: MockResponse, error: type[ShimError], code: str,
) -> None:
    async def handler(req: Request) -> MockResponse:
        return answer

    sender, transport = await make_sender(store, handler)
    with pytest.raises(error) as err:
        await sender.send(U, ITEM)
    assert err.value.code == code and len(transport.requests) == 1
    assert await store.list_messages(U.user_id, ListQuery(size=100)) == []
    # The intent recorded before the call is gone: v2 said no, nothing was sent.
    assert await rows(store, "SELECT COUNT(*) FROM messages") == 0


async def test_connect_failures_are_retried_but_a_send_that_may_have_arrived_is_not(store: Store) -> None:
    calls: list[str] = []

    async def flaky_connect(req: Request) -> MockResponse:
        calls.append("c")
        if len(calls) <= 2:
            raise ConnectFailed("refused")
        return v2_accepts(req, "c" * 29)

    sender, transport = await make_sender(store, flaky_connect)
    await sender.send(U, ITEM)
    assert len(transport.requests) == 3  # connect_retries = 2

    async def reset_after_sending(req: Request) -> MockResponse:
        raise RequestFailed("ServerDisconnectedError")

    sender, transport = await make_sender(store, reset_after_sending, first_key=100)
    with pytest.raises(OutcomeUnknown) as err:
        await sender.send(U, ITEM)
    assert len(transport.requests) == 1
    # The 503 says the outcome is unknown, and the intent is kept for the events that may come.
    assert err.value.status == 503 and err.value.details["outcome"] == "unknown"
    assert await rows(store, "SELECT COUNT(*) FROM messages WHERE bound = 0") == 1


async def test_an_accepted_send_without_a_readable_id_keeps_its_intent(store: Store) -> None:
    async def handler(req: Request) -> MockResponse:
        return MockResponse(202, b"not json")

    sender, _ = await make_sender(store, handler)
    with pytest.raises(OutcomeUnknown):
        await sender.send(U, ITEM)
    assert await rows(store, "SELECT COUNT(*) FROM messages WHERE bound = 0") == 1


async def test_store_failure_after_v2_accepted_is_503_naming_the_message(store: Store) -> None:
    async def handler(req: Request) -> MockResponse:
        return v2_accepts(req, "d" * 29)

    sender, _ = await make_sender(store, handler)
    bind = store.bind_send

    async def failing_bind(*args: Any, **kw: Any) -> int:
        raise OSError("disk gone")

    store.bind_send = failing_bind  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable) as err:
        await sender.send(U, ITEM | {"callbackUrl": "https://app.example/cb"})
    assert err.value.details == {"messageId": "d" * 29}
    store.bind_send = bind  # type: ignore[method-assign]
    # The intent was recorded before the call: the first v2 event (it echoes the tag) binds it.
    assert await store.get_message(U.user_id, "d" * 29) is None
    event = {"type": "message-delivered", "time": "2026-01-01T00:00:02Z", "to": "+15551230002",
             "description": "ok", "message": {"id": "d" * 29, "applicationId": U.application_id,
                                              "direction": "out", "to": ["+15551230002"], "from": "+15551230001",
                                              "text": "", "segmentCount": 1, "tag": f"shim1:key{0:019d}"}}
    enqueued = await store.ingest([Gateway(CFG).prepare(event)])
    rec = await store.get_message(U.user_id, "d" * 29)
    assert rec is not None and rec.state == "sent" and rec.delivery_state == "delivered"
    assert enqueued == 1  # the v1 "sent" callback owed to the app


async def test_batch_results_in_order_bounded_concurrency(store: Store) -> None:
    in_flight = {"now": 0, "max": 0}
    n = iter(range(100))

    async def handler(req: Request) -> MockResponse:
        in_flight["now"] += 1
        in_flight["max"] = max(in_flight["max"], in_flight["now"])
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        in_flight["now"] -= 1
        if req.json()["to"] == ["+15550000429"]:
            return MockResponse.of_json(429, {})
        return v2_accepts(req, f"{next(n):029d}")

    sender, _ = await make_sender(store, handler)
    items: list[Any] = [ITEM | {"to": f"+1555123{i:04d}"} for i in range(10)]
    items[3] = {"from": "+15551230001"}
    items[5] = ITEM | {"to": "+15550000429"}
    items[7] = "not an object"
    results = await sender.send_batch(U, items)
    assert [r["result"] for r in results] == ["accepted"] * 3 + ["error", "accepted", "error", "accepted", "error"] \
        + ["accepted"] * 2
    assert results[3]["error"]["code"] == "missing-property"
    assert results[5]["error"]["code"] == "message-rate-limit"
    assert all(set(r["error"]) == {"category", "code", "message", "details"} for r in results if "error" in r)
    assert 1 < in_flight["max"] <= CFG.upstream.batch_concurrency
    with pytest.raises(MultiMessageLimit):
        await sender.send_batch(U, [ITEM] * 51)

