"""End to end: v2 callbacks from the sandbox → v1 callbacks at a real receiver on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

import shim.config
from shim.clock import now_us
from shim.keys import DELIVERY, METRICS, STORE

from ..conftest import CB_PASS, CB_USER, SIGNING_SECRET, USER, Harness, Received, auth, outbox_is, sql_rows, wait_until


def verify_signature(r: Received, secret: str = SIGNING_SECRET) -> None:
    """With the Standard Webhooks reference library: the body (POST) or the exact query string (GET)."""
    payload = r.raw_query if r.method == "GET" else r.body.decode()
    Webhook(secret).verify(payload, dict(r.headers), json_parse=False)
    with pytest.raises(WebhookVerificationError):  # the signature covers what was sent
        Webhook(secret).verify(payload + " ", dict(r.headers), json_parse=False)


def v2_event(mid: str, type_: str = "message-delivered", **kw: Any) -> dict[str, Any]:
    return {"type": type_, "time": "2026-01-01T00:00:01Z", "to": "+15551230002", "description": "ok",
            "message": {"id": mid, "owner": "+15551230001", "applicationId": USER["application_id"],
                        "time": "2026-01-01T00:00:00Z", "segmentCount": 1, "direction": "out",
                        "to": ["+15551230002"], "from": "+15551230001", "text": ""}} | kw


async def post_events(h: Harness, events: list[dict[str, Any]], creds: tuple[str, str] | None = (CB_USER, CB_PASS)) -> Any:
    headers = {"Content-Type": "application/json"} | (auth(*creds) if creds else {})
    return await h.session.post(f"{h.url}/callbacks/v2", data=json.dumps(events), headers=headers)


async def test_ingest_requires_basic_auth_with_challenge(harness: Harness) -> None:
    for creds in (None, ("bandwidth", "wrong")):
        resp = await post_events(harness, [v2_event("x")], creds)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="shim"'
    resp = await post_events(harness, [v2_event("x")])
    assert resp.status == 200


async def test_ingest_rejects_garbage(harness: Harness) -> None:
    for body in ([], [1], [{"type": "message-delivered"}], "x"):
        resp = await post_events(harness, body)  # type: ignore[arg-type]
        assert resp.status == 400
    resp = await harness.session.post(f"{harness.url}/callbacks/v2", data=b"{oops", headers=auth(CB_USER, CB_PASS))
    assert resp.status == 400


async def test_ingest_answers_only_after_the_events_are_committed(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from shim.core import MessageRecord

    store, registry = harness.app[STORE], harness.app[METRICS].registry
    mid = "m-gate-000000000000000000000"
    await store.insert_message(MessageRecord(
        id=mid, user_id="u-test", direction="out", from_="+15551230001", to="+15551230002", text="x",
        time="2026-01-01T00:00:00.000Z", time_us=now_us(), callback_url=f"{harness.receiver.url}/gate"))
    entered, release = asyncio.Event(), asyncio.Event()
    real_ingest = store.ingest

    async def gated(events: Any) -> int:
        entered.set()
        await release.wait()
        return await real_ingest(events)

    monkeypatch.setattr(store, "ingest", gated)
    def answered() -> bool:
        labels = {"route": "/callbacks/v2", "method": "POST", "status": "200"}
        return registry.get_sample_value("shim_http_requests_total", labels) is not None

    task = asyncio.create_task(post_events(harness, [v2_event(mid)]))
    await asyncio.wait_for(entered.wait(), 10)
    # The write is held: the handler has not answered (its access metric counts an answer as soon
    # as the handler returns), and no response reaches the client.
    for _ in range(20):
        await asyncio.sleep(0)
    assert not answered() and not task.done()
    done, _ = await asyncio.wait({task}, timeout=0.1)
    assert not done and not answered()
    assert await sql_rows(store, "SELECT COUNT(*) FROM events") == [(0,)]
    release.set()
    resp = await task
    assert resp.status == 200 and answered()
    # Everything the 200 promises is already committed: the event and the callback it causes.
    assert await sql_rows(store, "SELECT message_id, status FROM events") == [(mid, "applied")]
    assert await sql_rows(store, "SELECT event_id FROM outbox") == [(f"evt_{mid}_sent",)]


@pytest.mark.compat("v1 callbacks (callbackUrl)", "receiptRequested none|all|error", "supported",
                    note="none: the sent event only; all: also the delivery receipt (deliveryState, deliveryCode, "
                         "deliveryDescription); error: delivery fields on the error event only. One sent event per "
                         "message; MMS gets no receipts")
async def test_sms_receipt_none_gets_one_sent_callback(harness: Harness) -> None:
    mid = await harness.send(callbackUrl=f"{harness.receiver.url}/cb", tag="order-1")
    await wait_until(lambda: len(harness.receiver.at("/cb")) == 1)
    await wait_until(lambda: harness.sandbox_state.callbacks_posted >= 1)
    (r,) = harness.receiver.at("/cb")
    assert r.method == "POST"
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert r.headers["User-Agent"] == "BandwidthAPI/v1"
    assert r.headers["webhook-id"] == f"evt_{mid}_sent"
    verify_signature(r)
    stored = await harness.stored(mid)
    assert r.json == {
        "eventType": "sms", "direction": "out", "messageId": mid,
        "messageUri": f"{harness.messages_url}/{mid}", "from": "+15551230001", "to": "+15551230002",
        "text": "hi", "time": r.json["time"], "state": "sent", "segmentCount": 1, "tag": "order-1",
    }
    # The callback keeps milliseconds (v1's callback examples); GET shows whole seconds (the Java SDK).
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r.json["time"])
    assert stored["time"] == r.json["time"][:19] + "Z"
    assert (stored["state"], stored["deliveryState"], stored["deliveryCode"]) == ("sent", "delivered", "0")


@pytest.mark.compat("v1 callbacks (callbackUrl)", "receiptRequested none|all|error", "supported",
                    note="none: the sent event only; all: also the delivery receipt (deliveryState, deliveryCode, "
                         "deliveryDescription); error: delivery fields on the error event only. One sent event per "
                         "message; MMS gets no receipts")
async def test_receipt_all_gets_sent_then_receipt(harness: Harness) -> None:
    mid = await harness.send(callbackUrl=f"{harness.receiver.url}/cb", receiptRequested="all")
    await wait_until(lambda: len(harness.receiver.at("/cb")) == 2)
    sent, receipt = harness.receiver.at("/cb")
    verify_signature(sent)
    verify_signature(receipt)
    assert sent.json["state"] == "sent" and "deliveryState" not in sent.json
    assert receipt.json["state"] == "sent"
    assert (receipt.json["deliveryState"], receipt.json["deliveryCode"], receipt.json["deliveryDescription"]) == (
        "delivered", "0", "Message Delivered to Carrier")
    assert receipt.headers["webhook-id"] == f"evt_{mid}_receipt"


@pytest.mark.compat("v1 callbacks (callbackUrl)", "receiptRequested none|all|error", "supported",
                    note="none: the sent event only; all: also the delivery receipt (deliveryState, deliveryCode, "
                         "deliveryDescription); error: delivery fields on the error event only. One sent event per "
                         "message; MMS gets no receipts")
async def test_failure_with_receipt_error(harness: Harness) -> None:
    mid = await harness.send(to="+15550004720", callbackUrl=f"{harness.receiver.url}/cb", receiptRequested="error")
    await wait_until(lambda: len(harness.receiver.at("/cb")) == 1)
    (r,) = harness.receiver.at("/cb")
    assert r.json["state"] == "error"
    assert (r.json["deliveryState"], r.json["deliveryCode"], r.json["deliveryDescription"]) == (
        "not-delivered", "720", "Invalid Destination Address")
    stored = await harness.stored(mid)
    assert (stored["state"], stored["deliveryState"], stored["deliveryCode"]) == ("error", "not-delivered", "720")


async def test_failure_without_receipt_has_no_delivery_fields(harness: Harness) -> None:
    await harness.send(to="+15550004432", callbackUrl=f"{harness.receiver.url}/cb")
    await wait_until(lambda: len(harness.receiver.at("/cb")) == 1)
    (r,) = harness.receiver.at("/cb")
    assert r.json["state"] == "error" and "deliveryCode" not in r.json


async def test_mms_sending_then_delivered(harness: Harness) -> None:
    mid = await harness.send(text=None, media="https://example.com/a.png", callbackUrl=f"{harness.receiver.url}/cb")
    await wait_until(lambda: harness.sandbox_state.callbacks_posted >= 2)
    await wait_until(lambda: len(harness.receiver.at("/cb")) == 1)
    (r,) = harness.receiver.at("/cb")
    assert r.json["eventType"] == "mms" and r.json["media"] == ["https://example.com/a.png"]
    assert r.json["text"] == ""
    assert (await harness.stored(mid))["state"] == "sent"


@pytest.mark.compat("v1 callbacks (callbackUrl)", "callbackHttpMethod GET", "supported",
                    note="the same fields as query parameters")
@pytest.mark.compat("v1 callbacks (callbackUrl)", "URL userinfo", "supported",
                    note="user:pass@ in callbackUrl becomes an Authorization: Basic header; never logged")
async def test_get_callback_with_query_params_and_userinfo(harness: Harness) -> None:
    url = harness.receiver.url.replace("http://", "http://app%20user:p%40ss@") + "/bxml"
    mid = await harness.send(callbackUrl=url, callbackHttpMethod="GET")
    await wait_until(lambda: len(harness.receiver.at("/bxml")) == 1)
    (r,) = harness.receiver.at("/bxml")
    assert r.method == "GET" and r.body == b""
    assert r.query["messageId"] == [mid] and r.query["state"] == ["sent"]
    assert r.query["from"] == ["+15551230001"] and r.query["segmentCount"] == ["1"]
    assert r.query["messageUri"] == [f"{harness.messages_url}/{mid}"]
    assert r.headers["Authorization"] == auth("app user", "p@ss")["Authorization"]
    assert r.headers["User-Agent"] == "BandwidthAPI/v1"
    verify_signature(r)


@pytest.mark.compat("v1 callbacks (callbackUrl)", "webhook-id, webhook-signature", "supported",
                    note="shim extension: Standard Webhooks webhook-id (stable across retries), webhook-timestamp, "
                         "webhook-signature with a signing secret")
async def test_rotating_secrets_sign_post_and_get_callbacks(make_harness: Any) -> None:
    new = "whsec_" + base64.b64encode(b"the-next-signing-key!").decode()
    h = await make_harness(callbacks__signing_secrets=[new])
    await h.send(callbackUrl=f"{h.receiver.url}/post?x=1&y=a%20b")
    await h.send(callbackUrl=f"{h.receiver.url}/get?x=1", callbackHttpMethod="GET", tag="a b&c=d/é")
    await wait_until(lambda: bool(h.receiver.at("/post")) and bool(h.receiver.at("/get")))
    for r in h.receiver.at("/post") + h.receiver.at("/get"):
        assert len(r.headers["webhook-signature"].split(" ")) == 2
        verify_signature(r, SIGNING_SECRET)
        verify_signature(r, new)
        with pytest.raises(WebhookVerificationError):
            verify_signature(r, "whsec_" + base64.b64encode(b"some-other-key-16b").decode())
    (g,) = h.receiver.at("/get")
    assert g.query["x"] == ["1"] and g.query["tag"] == ["a b&c=d/é"] and g.raw_query.startswith("x=1&")


@pytest.mark.compat("v1 callbacks (callbackUrl)", "fallbackUrl", "supported",
                    note="the same event to fallbackUrl when the callbackUrl attempt fails (timeout callbackTimeout or non-2xx)")
async def test_fallback_on_primary_failure(harness: Harness) -> None:
    harness.receiver.script["/primary"] = [500]
    await harness.send(callbackUrl=f"{harness.receiver.url}/primary", fallbackUrl=f"{harness.receiver.url}/fallback")
    await wait_until(lambda: len(harness.receiver.at("/fallback")) == 1)
    assert len(harness.receiver.at("/primary")) == 1
    assert harness.receiver.at("/fallback")[0].json["state"] == "sent"


@pytest.mark.compat("v1 callbacks (callbackUrl)", "retries", "supported",
                    note="v1 tried each URL once; shim retries with backoff on callbacks.retry_schedule_s (default > 24 "
                         "h), honours Retry-After, then dead-letters (admin replay): at-least-once")
async def test_retries_until_success_same_event_id(harness: Harness) -> None:
    harness.receiver.script["/flaky"] = [500, 503, 200]
    mid = await harness.send(callbackUrl=f"{harness.receiver.url}/flaky")
    await wait_until(lambda: len(harness.receiver.at("/flaky")) == 3)
    ids = {r.headers["webhook-id"] for r in harness.receiver.at("/flaky")}
    assert ids == {f"evt_{mid}_sent"}
    for r in harness.receiver.at("/flaky"):
        verify_signature(r)  # every attempt signed afresh
    # The third attempt's 200 is recorded: one row, delivered on its third attempt after two failures.
    await wait_until(outbox_is(harness.app[STORE], pending=0, delivered=1, dead=0))
    rows = await sql_rows(harness.app[STORE], "SELECT event_id, status, attempts, last_error FROM outbox")
    assert [tuple(r) for r in rows] == [(f"evt_{mid}_sent", "delivered", 3, "HTTP 503")]
    assert len(harness.receiver.at("/flaky")) == 3


async def test_retry_after_is_honoured(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    # Retry-After far beyond the 0.2 s (±20%) schedule: the retry is booked an hour out, in the store.
    store = harness.app[STORE]
    claims: list[tuple[int, list[int]]] = []  # each finished claim round: when it started, what it took
    real_claim = store.claim

    async def counting_claim(*args: Any, **kwargs: Any) -> Any:
        started = now_us()
        taken = await real_claim(*args, **kwargs)
        claims.append((started, [d.id for d in taken]))
        return taken

    monkeypatch.setattr(store, "claim", counting_claim)
    harness.receiver.script["/busy"] = [429, 200]
    harness.receiver.headers["/busy"] = {"Retry-After": "3600"}
    before = now_us()
    await harness.send(callbackUrl=f"{harness.receiver.url}/busy")

    async def failed_once() -> bool:
        return [r[0] for r in await sql_rows(store, "SELECT attempts FROM outbox")] == [1]

    await wait_until(failed_once)
    ((row_id, status, next_us, failed_us, error),) = await sql_rows(
        store, "SELECT id, status, next_attempt_us, updated_us, last_error FROM outbox")
    assert (status, error) == ("pending", "HTTP 429")
    assert before + 3600 * 10**6 <= next_us <= now_us() + 3600 * 10**6
    # Claim rounds that ran after the schedule's retry would have been due (0.24 s) did not take it.
    await wait_until(lambda: any(t >= failed_us + 300_000 for t, _ in claims))
    assert sum(ids.count(row_id) for _, ids in claims) == 1
    assert len(harness.receiver.at("/busy")) == 1
    # Bring the retry forward: it is delivered, as the same event.
    await store.run_sql("UPDATE outbox SET next_attempt_us = ? WHERE id = ?", now_us(), row_id)
    harness.app[DELIVERY].wake()
    await wait_until(outbox_is(store, pending=0, delivered=1))
    first, second = harness.receiver.at("/busy")
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


async def test_ordering_under_retries(harness: Harness) -> None:
    harness.receiver.script["/order"] = [500, 500, 200]
    await harness.send(callbackUrl=f"{harness.receiver.url}/order", receiptRequested="all")
    await wait_until(lambda: len(harness.receiver.at("/order")) == 4)
    kinds = [r.headers["webhook-id"].rsplit("_", 1)[1] for r in harness.receiver.at("/order")]
    assert kinds == ["sent", "sent", "sent", "receipt"]


ADMIN = {"username": "admin", "password": "admin-pass-123"}


async def test_dead_letter_then_replay(make_harness: Any) -> None:
    harness = await make_harness(admin=ADMIN)
    admin = auth(ADMIN["username"], ADMIN["password"])
    harness.receiver.script["/down"] = [500]
    down = harness.receiver.url.replace("http://", "http://hook:hook-pass-77@") + "/down"
    mid = await harness.send(callbackUrl=down)
    # 1 attempt + 3 retries (schedule of 3), then dead.
    await wait_until(lambda: len(harness.receiver.at("/down")) == 4)

    async def listed() -> bool:
        resp = await harness.session.get(f"{harness.url}/admin/dead-letters", headers=admin)
        return len(await resp.json()) == 1

    await wait_until(listed)
    resp = await harness.session.get(f"{harness.url}/admin/dead-letters", headers=admin)
    (dead,) = await resp.json()
    assert dead["eventId"] == f"evt_{mid}_sent" and dead["attempts"] == 4 and "500" in dead["lastError"]
    assert "hook-pass-77" not in json.dumps(dead) and dead["url"].startswith("http://hook:***@127.0.0.1")

    async def gauge_shows_it() -> bool:  # the sweeper refreshes the gauge (a scrape queries nothing)
        metrics = await (await harness.session.get(f"{harness.url}/metrics")).text()
        return "shim_callback_dead_letters 1.0" in metrics

    await wait_until(gauge_shows_it)
    harness.receiver.script["/down"] = [200]
    replay = f"{harness.url}/admin/dead-letters/replay"
    for body in (None, {}, {"ids": []}, {"all": False}, {"ids": "all"}):
        resp = await harness.session.post(replay, headers=admin, **({} if body is None else {"json": body}))
        assert resp.status == 400, body  # replay needs explicit ids or {"all": true}
    resp = await harness.session.post(replay, json={"ids": [dead["id"]]}, headers=admin)
    assert (await resp.json()) == {"replayed": 1}
    await wait_until(lambda: len(harness.receiver.at("/down")) == 5)
    await wait_until(outbox_is(harness.app[STORE], pending=0))
    resp = await harness.session.get(f"{harness.url}/admin/dead-letters", headers=admin)
    assert await resp.json() == []


async def test_refused_callback_urls_are_400_at_send(harness: Harness) -> None:
    port = harness.cfg.server.port
    for prop, url in (("callbackUrl", "http://169.254.169.254/latest"), ("callbackUrl", "http://10.0.0.1/cb"),
                      ("fallbackUrl", "http://[::ffff:192.168.0.1]/cb"),
                      ("callbackUrl", f"http://127.0.0.1:{port}/admin/dead-letters/replay"),
                      ("callbackUrl", f"http://localhost:{port}/callbacks/v2")):
        resp = await harness.post({"from": "+15551230001", "to": "+15551230002", "text": "x", prop: url})
        assert resp.status == 400, url
        assert (await resp.json())["code"] == "callback-invalid-url"
    assert harness.v2_requests == []  # refused before anything reached v2


async def test_callback_never_reaches_shim_itself(make_harness: Any) -> None:
    h = await make_harness(admin=ADMIN, callbacks__retry_schedule_s=[0.1, 0.1, 0.1])
    port = h.cfg.server.port
    from shim.core import MessageRecord

    for i, url in enumerate((f"http://127.0.0.1:{port}/admin/dead-letters/replay",
                             f"http://admin:admin-pass-123@localhost:{port}/admin/dead-letters/replay")):
        mid = f"m-self-{i}-000000000000000000000"
        await h.app[STORE].insert_message(MessageRecord(
            id=mid, user_id="u-test", direction="out", from_="+15551230001", to="+15551230002", text="x",
            time="2026-01-01T00:00:00.000Z", time_us=now_us(), callback_url=url))
        assert (await post_events(h, [v2_event(mid, "message-sent")])).status == 200

    async def dead() -> bool:
        return (await h.app[STORE].outbox_counts())["dead"] == 2

    await wait_until(dead)
    rows = await h.app[STORE].dead_letters()
    assert all(d.attempts == 1 and "refused" in (d.last_error or "") for d in rows), rows  # at once, not retried
    metrics = await (await h.session.get(f"{h.url}/metrics")).text()
    assert "/admin/dead-letters/replay" not in metrics  # never requested


async def test_duplicate_v2_deliveries_ingested_once(harness: Harness) -> None:
    mid = "m-dup-0000000000000000000000"
    from shim.core import MessageRecord

    await harness.app[STORE].insert_message(MessageRecord(
        id=mid, user_id="u-test", direction="out", from_="+15551230001", to="+15551230002", text="x",
        time="2026-01-01T00:00:00.000Z", time_us=now_us(), callback_url=f"{harness.receiver.url}/dup", receipt_requested="all"))
    for _ in range(3):
        assert (await post_events(harness, [v2_event(mid)])).status == 200
    await wait_until(lambda: len(harness.receiver.at("/dup")) == 2)
    await wait_until(outbox_is(harness.app[STORE], pending=0))
    assert len(harness.receiver.at("/dup")) == 2  # sent + receipt, once each


async def test_event_of_a_send_never_bound_binds_it(harness: Harness) -> None:
    """The send's intent was recorded, v2 accepted it, and shim never learnt the id (crash, store
    failure or timeout after the 202): the first event, carrying the key in its tag, binds it."""
    from shim.core import MessageRecord, pending_id, v2_tag

    key, mid = "early-key-00000000000000", "m-early-000000000000000000000"
    await harness.app[STORE].record_intent(MessageRecord(
        id=pending_id(key), user_id="u-test", direction="out", from_="+15551230001", to="+15551230002", text="x",
        time_us=now_us(), callback_url=f"{harness.receiver.url}/early", receipt_requested="error", send_key=key))
    r, _ = await harness.get_json(f"{harness.messages_url}/{mid}")
    assert r.status == 404
    event = v2_event(mid, "message-failed", errorCode=4775)
    event["message"]["tag"] = v2_tag(key, None)
    assert (await post_events(harness, [event])).status == 200
    await wait_until(lambda: len(harness.receiver.at("/early")) == 1)
    (r,) = harness.receiver.at("/early")
    assert (r.json["messageId"], r.json["state"], r.json["deliveryCode"]) == (mid, "error", "775")
    assert (await harness.stored(mid))["state"] == "error"
    assert await harness.app[STORE].pending_event_count() == 0


async def test_event_without_a_key_for_an_unknown_message_is_native_at_once(harness: Harness) -> None:
    """No correlation key: a message sent natively on v2 — routed at once, never left pending."""
    assert (await post_events(harness, [v2_event("native-0000000000000000000000")])).status == 200
    assert await harness.app[STORE].pending_event_count() == 0


@pytest.mark.compat("v1 inbound (incomingMessageUrl)", "sms, mms", "supported",
                    note="to users[].incoming.url (shim's config replaces the v1 applications API)")
@pytest.mark.compat("GET|PUT|DELETE /v1/users/{userId}/media/{mediaName}", "inbound media URLs", "supported",
                    note="v2 media URLs of inbound MMS become {public_url}/v1/users/{userId}/media/…, served with the v1 "
                         "credentials")
async def test_inbound_sms_and_mms_with_media(harness: Harness) -> None:
    png = b"\x89PNG fake image bytes"
    resp = await harness.session.post(
        f"{harness.cfg.upstream.base_url}/sandbox/inbound",
        json={"accountId": "9900001", "applicationId": USER["application_id"], "from": "+15559990000",
              "to": ["+15551230001"], "text": "pic",
              "media": [{"name": "cat.png", "contentType": "image/png", "base64": base64.b64encode(png).decode()}]})
    info = await resp.json()
    assert info["delivered"]
    await wait_until(lambda: len(harness.receiver.at("/incoming")) == 1)
    (r,) = harness.receiver.at("/incoming")
    body = r.json
    mid = info["id"]
    media_url = f"{harness.url}/v1/users/u-test/media/{mid}/0/cat.png"
    assert body == {
        "eventType": "mms", "direction": "in", "messageId": mid, "messageUri": f"{harness.messages_url}/{mid}",
        "from": "+15559990000", "to": "+15551230001", "text": "pic", "time": body["time"], "state": "received",
        "segmentCount": 1, "media": [media_url], "applicationId": USER["application_id"],
    }
    stored = await harness.stored(mid)
    assert (stored["direction"], stored["state"], stored["media"]) == ("in", "received", [media_url])
    # The app fetches the media with its v1 credentials; shim streams it from v2.
    resp = await harness.session.get(media_url, headers=harness.auth)
    assert resp.status == 200 and await resp.read() == png


@pytest.mark.compat("v1 inbound (incomingMessageUrl)", "group messages", "supported",
                    note="a v2 group message arrives once per owned recipient (v1 had none); its id is the v2 id plus "
                         "-<recipient digits>")
async def test_inbound_group_once_per_owned_recipient(harness: Harness) -> None:
    resp = await harness.session.post(
        f"{harness.cfg.upstream.base_url}/sandbox/inbound",
        json={"accountId": "9900001", "applicationId": USER["application_id"], "from": "+15559990000",
              "to": ["+15551230001", "+15551230005", "+15557777777"], "owned": ["+15551230001", "+15551230005"],
              "text": "group"})
    assert (await resp.json())["delivered"]
    await wait_until(lambda: len(harness.receiver.at("/incoming")) == 2)
    tos = sorted(r.json["to"] for r in harness.receiver.at("/incoming"))
    assert tos == ["+15551230001", "+15551230005"]
    assert len({r.json["messageId"] for r in harness.receiver.at("/incoming")}) == 2


async def test_native_v2_events_forwarded_raw_and_translated(make_harness: Any) -> None:
    h = await make_harness(users=[
        USER | {"native_events": {"format": "v2", "url": "{receiver}/native-v2"}},
    ])
    ev = v2_event("native-msg-1", errorCode=4720, type="message-failed")
    assert (await post_events(h, [ev])).status == 200
    await wait_until(lambda: len(h.receiver.at("/native-v2")) == 1, timeout=10)
    (r,) = h.receiver.at("/native-v2")
    assert r.json == [ev]
    verify_signature(r)


async def test_native_v1_translation(make_harness: Any) -> None:
    h = await make_harness(users=[
        USER | {"native_events": {"format": "v1", "url": "{receiver}/native-v1"}},
    ])
    assert (await post_events(h, [v2_event("native-msg-2")])).status == 200
    await wait_until(lambda: len(h.receiver.at("/native-v1")) == 1, timeout=10)
    (r,) = h.receiver.at("/native-v1")
    assert (r.json["messageId"], r.json["state"], r.json["deliveryState"]) == ("native-msg-2", "sent", "delivered")


async def test_metadata_and_denied_addresses_are_refused(make_harness: Any) -> None:
    h = await make_harness(callbacks__deny_cidrs=["127.0.0.0/8"], callbacks__retry_schedule_s=[0.1, 0.1, 0.1])
    from shim.core import MessageRecord

    urls = ("http://169.254.169.254/latest/meta-data", f"{h.receiver.url}/never", "http://localhost:1/never")
    for i, url in enumerate(urls):
        resp = await h.post({"from": "+15551230001", "to": "+15551230002", "text": "x", "callbackUrl": url})
        assert resp.status == 400 and (await resp.json())["code"] == "callback-invalid-url"
        # Recorded before the policy changed (or by another replica): refused at delivery, dead at once.
        mid = f"m-refused-{i}-00000000000000000"
        await h.app[STORE].insert_message(MessageRecord(
            id=mid, user_id="u-test", direction="out", from_="+15551230001", to="+15551230002", text="x",
            time="2026-01-01T00:00:00.000Z", time_us=now_us(), callback_url=url))
        assert (await post_events(h, [v2_event(mid, "message-sent")])).status == 200

    async def dead_count() -> bool:
        return (await h.app[STORE].outbox_counts())["dead"] == 3

    await wait_until(dead_count)
    dead = await h.app[STORE].dead_letters()
    assert all("refused" in (d.last_error or "") and d.attempts == 1 for d in dead), dead
    assert h.receiver.at("/never") == []


async def test_slow_endpoint_does_not_delay_healthy_one(make_harness: Any) -> None:
    h = await make_harness(callbacks__per_host_concurrency=2)
    slow_url = h.receiver.url.replace("127.0.0.1", "localhost") + "/slow"  # another host key
    h.receiver.script["/slow"] = ["hang"]
    for _ in range(10):
        await h.send(callbackUrl=slow_url, callbackTimeout=3000)
    for _ in range(10):
        await h.send(callbackUrl=f"{h.receiver.url}/fast")
    await wait_until(lambda: len(h.receiver.at("/fast")) == 10, timeout=10)
    # All healthy callbacks arrived before the first slow attempt even timed out.
    metrics = await (await h.session.get(f"{h.url}/metrics")).text()
    assert 'shim_callback_deliveries_total{outcome="retry"}' not in metrics
    assert len(h.receiver.at("/slow")) <= 2  # per-host cap held the rest back


async def test_slow_receiver_is_never_attempted_twice_at_once(make_harness: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attempts (and rows waiting behind a host's slots) outlast a 1 s lease: the engine keeps
    renewing it, so no claim round takes the same event again while it is held."""
    monkeypatch.setattr(shim.config, "MAX_ATTEMPT_S", 0.0)  # a lease this short is for tests only
    monkeypatch.setattr(shim.config, "LEASE_MARGIN_S", 1.0)
    now: Counter[str] = Counter()
    most: Counter[str] = Counter()
    seen: list[str] = []

    async def slow(request: web.Request) -> web.StreamResponse:
        wid = request.headers["webhook-id"]
        seen.append(wid)
        now[wid] += 1
        most[wid] = max(most[wid], now[wid])
        try:
            await asyncio.sleep(2.5)  # held longer than the lease
        finally:
            now[wid] -= 1
        return web.Response()

    rapp = web.Application()
    rapp.router.add_post("/slow", slow)
    server = TestServer(rapp, host="127.0.0.1")
    await server.start_server()
    try:
        h = await make_harness(callbacks__lease_s=1, callbacks__per_host_concurrency=2)
        assert h.cfg.callbacks.lease_s == 1
        busy = str(server.make_url("/slow"))  # 2 in flight, 2 claimed and waiting locally
        other = busy.replace("127.0.0.1", "localhost")  # another host: 1 in flight, host not busy
        for url in (busy, busy, busy, busy, other):
            await h.send(callbackUrl=url, callbackTimeout=8000)
        all_delivered = outbox_is(h.app[STORE], pending=0, delivered=5)

        async def settled() -> bool:  # ends early once an event is attempted twice at once
            return max(most.values(), default=0) > 1 or await all_delivered()

        await wait_until(settled, timeout=30)
        assert max(most.values()) == 1, most  # one attempt at a time per event
        assert len(set(seen)) == 5
        assert max(Counter(seen).values()) == 1, Counter(seen)  # and no duplicate delivery
    finally:
        await server.close()


async def test_a_retry_runs_when_it_comes_due_not_at_the_next_poll(make_harness: Any) -> None:
    # The delivery loop wakes for the retries it scheduled: a 0.05 s retry does not wait for the
    # poll (30 s here; 0.5 s by default, which made every short retry schedule a 0.5 s one).
    h = await make_harness(callbacks__retry_schedule_s=[0.05, 0.05, 0.05])
    h.app[DELIVERY].poll_s = 30
    h.receiver.script["/retry"] = [503, 200]
    from shim.core import MessageRecord

    mid = "m-retry-due-000000000000000000"
    await h.app[STORE].insert_message(MessageRecord(
        id=mid, user_id="u-test", direction="out", from_="+15551230001", to="+15551230002", text="x",
        time="2026-01-01T00:00:00.000Z", time_us=now_us(), callback_url=f"{h.receiver.url}/retry"))
    assert (await post_events(h, [v2_event(mid, "message-sent")])).status == 200
    await wait_until(lambda: len(h.receiver.at("/retry")) == 2, timeout=10)
    await wait_until(outbox_is(h.app[STORE], pending=0, dead=0))


async def test_a_claim_skipping_busy_hosts_that_found_nothing_is_not_repeated_on_every_wake(
    make_harness: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each claim that skips a busy host reads all that host's due rows; every ingest wakes the
    # loop. An empty one waits (10 ms, doubling to 100 ms) before it runs again; another host's
    # callbacks enqueued meanwhile go out when the wait ends.
    from shim.core import MessageRecord

    h = await make_harness(callbacks__per_host_concurrency=1)
    engine = h.app[DELIVERY]
    t = engine.clock()
    engine.clock = lambda: t  # no quiet wait ends until the test moves the clock
    skipping: list[list[str]] = []
    claim = h.app[STORE].claim

    async def counted(owner: str, limit: int, lease_us: int, per_host: int = 1_000_000,
                      skip_hosts: Sequence[str] = ()) -> Any:
        if skip_hosts:
            skipping.append(list(skip_hosts))
        return await claim(owner, limit, lease_us, per_host, skip_hosts)

    monkeypatch.setattr(h.app[STORE], "claim", counted)
    h.receiver.script["/slow"] = ["hang"] * 3
    slow_url = f"{h.receiver.url}/slow"
    other_url = slow_url.replace("127.0.0.1", "localhost").replace("/slow", "/other")  # another host

    async def message(i: int, url: str) -> str:
        mid = f"m-quiet-{i:02d}-000000000000000000000"
        await h.app[STORE].insert_message(MessageRecord(
            id=mid, user_id="u-test", direction="out", from_="+15551230001", to="+15551230002", text="x",
            time="2026-01-01T00:00:00.000Z", time_us=now_us(), callback_url=url))
        return mid

    async def one_round() -> None:
        rounds = engine.rounds
        engine.wake()
        await wait_until(lambda: engine.rounds > rounds)

    for i in range(3):  # one in flight (hung); the others wait, locally or in the outbox
        assert (await post_events(h, [v2_event(await message(i, slow_url), "message-sent")])).status == 200
    await wait_until(lambda: len(h.receiver.at("/slow")) == 1)
    for _ in range(20):
        await one_round()
    assert len(skipping) == 1, skipping  # the first found nothing; every later wake found it quiet

    await post_events(h, [v2_event(await message(9, other_url), "message-sent")])
    await one_round()
    assert h.receiver.at("/other") == [] and len(skipping) == 1  # enqueued in the quiet wait: not claimed yet
    engine.clock = lambda: t + 100_000  # the wait (10 ms) is over
    engine.wake()
    await wait_until(lambda: len(h.receiver.at("/other")) == 1)
    assert len(skipping) >= 2  # the claim that found it skipped the busy host


async def test_a_host_is_claimed_for_again_when_its_last_waiting_delivery_starts(make_harness: Any) -> None:
    # One slot (per_host_concurrency 1), up to two held: when the one waiting locally starts,
    # the loop claims the next for that host at once, while its slot is still taken; before,
    # that host counted as busy and was skipped until a slot came free.
    from shim.core import MessageRecord

    release: dict[str, asyncio.Event] = {}
    arrived: list[str] = []

    async def held(request: web.Request) -> web.StreamResponse:
        mid = (await request.json())["messageId"]
        arrived.append(mid)
        await release.setdefault(mid, asyncio.Event()).wait()
        return web.Response()

    rapp = web.Application()
    rapp.router.add_post("/held", held)
    server = TestServer(rapp, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        h = await make_harness(callbacks__per_host_concurrency=1)
        url = str(server.make_url("/held"))
        mids = [f"m-refill-{i}-0000000000000000000000" for i in range(3)]
        for mid in mids:
            await h.app[STORE].insert_message(MessageRecord(
                id=mid, user_id="u-test", direction="out", from_="+15551230001", to="+15551230002", text="x",
                time="2026-01-01T00:00:00.000Z", time_us=now_us(), callback_url=url))
            assert (await post_events(h, [v2_event(mid, "message-sent")])).status == 200

        def held(*expected: str) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                rows = await sql_rows(h.app[STORE], "SELECT order_key FROM outbox WHERE lease_owner IS NOT NULL"
                                      " AND status = 'pending' ORDER BY id")
                return [r[0] for r in rows] == list(expected)
            return check

        await wait_until(lambda: arrived == mids[:1])
        await wait_until(held(*mids[:2]))  # the first in flight, the second waiting locally
        release.setdefault(mids[0], asyncio.Event()).set()
        await wait_until(lambda: arrived == mids[:2])
        # The second in flight (the slot taken) and the third claimed, before any slot is free.
        await wait_until(held(*mids[1:]), timeout=5)
        for mid in mids:
            release.setdefault(mid, asyncio.Event()).set()
        await wait_until(outbox_is(h.app[STORE], pending=0, delivered=3))
        assert arrived == mids
    finally:
        await server.close()
