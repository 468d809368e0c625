"""The v2 passthrough (SPEC §8): v2 code and a v1 app on the same shim, each one's callbacks
reaching its own handler at once."""

from __future__ import annotations

import time
from typing import Any

from yarl import URL

from shim.core import MessageRecord
from shim.keys import STORE

from ..conftest import OTHER_USER, USER, Harness, HarnessFactory, auth, sql_rows, wait_until
from ..gateway.test_callbacks import post_events, v2_event

V2_AUTH = auth(USER["v2_username"], USER["v2_password"])
# The grace an unmatched event waits is far longer than the test allows: routing must not wait for it.
GRACE = {"callbacks__unmatched_grace_s": 60}


async def _harness(make_harness: HarnessFactory, native_format: str = "v2") -> Harness:
    return await make_harness(users=[
        USER | {"native_events": {"format": native_format, "url": "{receiver}/native"}},
        OTHER_USER,
    ], **GRACE)


def _v2_url(h: Harness, account: str = USER["account_id"], tail: str = "messages") -> str:
    return f"{h.url}/api/v2/users/{account}/{tail}"


async def _v2_send(h: Harness, **fields: Any) -> Any:
    body = {"applicationId": USER["application_id"], "from": "+15551230001", "to": ["+15551230003"],
            "text": "from v2"} | fields
    return await h.session.post(_v2_url(h), json=body, headers=V2_AUTH)


async def test_v2_client_and_v1_app_share_shim_each_callback_to_its_own_handler(make_harness: HarnessFactory) -> None:
    h = await _harness(make_harness)
    started = time.monotonic()
    resp = await _v2_send(h, tag="v2-app-tag")
    assert resp.status == 202, await resp.text()
    v2_body = await resp.json()
    native_id = v2_body["id"]
    assert v2_body["tag"] == "v2-app-tag"  # forwarded unchanged: no correlation key added
    v1_id = await h.send(callbackUrl=f"{h.receiver.url}/v1-callbacks", receiptRequested="all")

    await wait_until(lambda: len(h.receiver.at("/native")) >= 1 and len(h.receiver.at("/v1-callbacks")) >= 2,
                     timeout=5)
    assert time.monotonic() - started < 5  # far less than unmatched_grace_s: no grace wait
    native = h.receiver.at("/native")
    assert {r.json[0]["message"]["id"] for r in native} == {native_id}
    assert all(r.json[0]["message"]["tag"] == "v2-app-tag" for r in native)
    v1 = h.receiver.at("/v1-callbacks")
    assert {r.json["messageId"] for r in v1} == {v1_id}
    # The v2 send went upstream exactly as sent, and is in the v1 history (as native, direction out).
    assert h.v2_requests[0]["tag"] == "v2-app-tag"

    async def delivered() -> bool:
        rec = await h.app[STORE].get_message("u-test", native_id)
        return rec is not None and rec.delivery_state == "delivered"

    await wait_until(delivered)
    stored = await h.stored(native_id)
    assert (stored["direction"], stored["to"], stored["text"], stored["state"]) == ("out", "+15551230003", "from v2", "sent")
    resp, listed = await h.get_json(h.messages_url)
    assert {m["id"] for m in listed} == {native_id, v1_id}
    # Nothing native ever waited as an unmatched event.
    assert await sql_rows(h.app[STORE], "SELECT 1 FROM events WHERE status = 'pending'") == []


async def test_events_arriving_before_the_record_are_routed_once_and_update_it(make_harness: HarnessFactory) -> None:
    """A native message's events that beat its record (v2 answers after calling back) are routed
    at ingest; recording the message later brings its state up to date and routes nothing twice."""
    h = await _harness(make_harness)
    ev = v2_event("native-early-000000000000000", "message-delivered")
    assert (await post_events(h, [ev])).status == 200
    await wait_until(lambda: len(h.receiver.at("/native")) == 1)
    rec = MessageRecord(id="native-early-000000000000000", user_id="u-test", direction="out", from_="+15551230001",
                        to="+15551230002", text="x", state="sending", time_us=1, native=True)
    await h.app[STORE].record_native(rec)
    stored = await h.app[STORE].get_message("u-test", rec.id)
    assert stored is not None and stored.delivery_state == "delivered"
    assert await post_events(h, [v2_event(rec.id, "message-sent")])
    await wait_until(lambda: len(h.receiver.at("/native")) == 2)


async def test_refuses_credentials_of_another_account_or_unknown(make_harness: HarnessFactory) -> None:
    h = await _harness(make_harness)
    body = {"applicationId": USER["application_id"], "from": "+15551230001", "to": ["+15551230003"], "text": "x"}
    for headers, account in (
        (auth(OTHER_USER["v2_username"], OTHER_USER["v2_password"]), USER["account_id"]),  # a user, not this account
        (auth(USER["v2_username"], "wrong"), USER["account_id"]),
        (auth(USER["api_token"], USER["api_secret"]), USER["account_id"]),  # v1 credentials are not v2's
        (V2_AUTH, "123456"),  # an account shim does not serve
        ({}, USER["account_id"]),
    ):
        resp = await h.session.post(_v2_url(h, account), json=body, headers=headers)
        assert resp.status == 401
        assert await resp.json() == {"type": "unauthorized", "description": "Authentication Failed"}
        resp = await h.session.get(_v2_url(h, account, "media/x.txt"), headers=headers)
        assert resp.status == 401
    assert h.v2_requests == []
    assert await sql_rows(h.app[STORE], "SELECT 1 FROM messages") == []


async def test_v2_errors_are_returned_as_they_are_and_nothing_recorded(make_harness: HarnessFactory) -> None:
    h = await _harness(make_harness)
    resp = await h.session.post(_v2_url(h), data=b'{"to": []}', headers=V2_AUTH | {"Content-Type": "application/json"})
    assert resp.status == 400
    body = await resp.json()
    assert body["type"] == "request-validation" and body["fieldErrors"]
    resp = await h.session.post(_v2_url(h), data=b"{}", headers=V2_AUTH | {"Content-Type": "text/plain"})
    assert resp.status == 415
    resp = await _v2_send(h, to=["+15550000429"])
    assert resp.status == 429
    assert await sql_rows(h.app[STORE], "SELECT 1 FROM messages") == []
    h.v2_requests.clear()  # invalid on purpose: the harness checks what shim itself sent


async def test_media_passthrough_streams_both_ways(make_harness: HarnessFactory) -> None:
    h = await _harness(make_harness)
    url = _v2_url(h, tail="media/pics/cat.png")
    data = bytes(range(256)) * 1000
    resp = await h.session.put(url, data=data, headers=V2_AUTH | {"Content-Type": "image/png"})
    assert resp.status in (200, 204), await resp.text()
    resp = await h.session.get(url, headers=V2_AUTH)
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
    assert await resp.read() == data
    resp = await h.session.head(url, headers=V2_AUTH)
    assert resp.status == 200 and resp.headers["Content-Length"] == str(len(data))
    resp = await h.session.get(_v2_url(h, tail="media"), headers=V2_AUTH)
    assert resp.status == 200
    assert any(item["mediaName"] == "pics/cat.png" for item in await resp.json())
    # The same media through the v1 facade: one account, two APIs.
    resp = await h.session.get(f"{h.url}/v1/users/u-test/media/pics/cat.png", headers=h.auth)
    assert resp.status == 200 and await resp.read() == data
    resp = await h.session.delete(url, headers=V2_AUTH)
    assert resp.status in (200, 204)
    resp = await h.session.get(url, headers=V2_AUTH)
    assert resp.status == 404
    escape = URL(_v2_url(h, tail="media/a/%2e%2e/%2e%2e/9900002/media/x"), encoded=True)
    resp = await h.session.get(escape, headers=V2_AUTH)
    assert resp.status == 400
    h.cfg.upstream.max_media_bytes = 1000
    resp = await h.session.put(url, data=b"x" * 1001, headers=V2_AUTH)
    assert resp.status == 413
