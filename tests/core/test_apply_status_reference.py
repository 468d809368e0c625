"""``apply_status`` (one copy of the record, specs built from it) against the rules as they were
written first (one attribute at a time on a copy, a route per callback): the same record and
the same callbacks, over every pair of events on a table of records."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from shim.core import DeliverySpec, MessageRecord, V2Event, apply_status, map_error_code
from shim.core._deliveries import Route
from shim.core._message import STATE_RANK
from shim.core._translate_events import DELIVERED_DESCRIPTION, message_uri

PUBLIC = "https://shim.example.com"
MID = "14762070468292kw2fuqty55yp2b2"


def ref_body(rec: MessageRecord, public_url: str, *, delivery: bool = False, state: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "eventType": rec.event_type, "direction": rec.direction, "messageId": rec.id,
        "messageUri": message_uri(public_url, rec.user_id, rec.id), "from": rec.from_, "to": rec.to,
        "text": rec.text, "time": rec.time, "state": state or rec.state, "segmentCount": rec.segment_count,
    }
    if rec.tag is not None:
        body["tag"] = rec.tag
    if rec.media:
        body["media"] = list(rec.media)
    if rec.direction == "in" and rec.application_id:
        body["applicationId"] = rec.application_id
    if delivery:
        for key, value in (("deliveryState", rec.delivery_state), ("deliveryCode", rec.delivery_code),
                           ("deliveryDescription", rec.delivery_description)):
            if value is not None:
                body[key] = value
    return body


def ref_apply_status(rec: MessageRecord, event: dict[str, Any], public_url: str) -> tuple[MessageRecord, list[DeliverySpec]]:
    ev = V2Event.model_validate(event)
    if rec.direction != "out":
        return rec, []
    new = rec.model_copy()
    calls: list[tuple[str, dict[str, Any]]] = []
    receipt = rec.receipt_requested or "none"

    def advance(state: str) -> None:
        if STATE_RANK[state] > STATE_RANK[new.state]:
            new.state = state  # type: ignore[assignment]

    def notify_sent() -> None:
        if not new.sent_notified and new.state == "sent":
            new.sent_notified = True
            calls.append(("sent", ref_body(new, public_url, state="sent")))

    if ev.type == "message-sending":
        advance("sending")
    elif ev.type == "message-sent":
        advance("sent")
        notify_sent()
    elif ev.type == "message-delivered":
        if new.state == "error" or new.delivery_state is not None:
            return rec, []
        advance("sent")
        new.delivery_state = "delivered"
        new.delivery_code = "0"
        new.delivery_description = DELIVERED_DESCRIPTION
        notify_sent()
        if receipt == "all":
            calls.append(("receipt", ref_body(new, public_url, delivery=True)))
    elif ev.type == "message-failed":
        if new.state == "error":
            return rec, []
        new.state = "error"
        new.delivery_state = "not-delivered"
        new.delivery_code, new.delivery_description = map_error_code(ev.errorCode, ev.description)
        calls.append(("error", ref_body(new, public_url, delivery=receipt in ("all", "error"))))
    else:
        return rec, []
    specs = []
    for kind, body in calls if rec.callback_url else []:
        assert new.callback_url is not None
        route = Route(url=new.callback_url, fallback_url=new.fallback_url, method=new.callback_method,
                      timeout_ms=new.callback_timeout or 10000)
        specs.append(DeliverySpec.to(route, event_id=f"evt_{new.id}_{kind}", order_key=new.id,
                                     user_id=new.user_id, body=body))
    return new, specs


def rec(**kw: Any) -> MessageRecord:
    base: dict[str, Any] = dict(
        id=MID, user_id="u-test", direction="out", from_="+15551230001", to="+15551230002",
        text="hello", time_us=1_767_225_600_123_456, callback_url="https://cb.example/x",
    )
    return MessageRecord(**(base | kw))


RECORDS = [
    rec(),
    rec(receipt_requested="all", fallback_url="https://fb.example/y", callback_timeout=2000, tag="t1"),
    rec(receipt_requested="error", callback_method="GET", send_key="k-1"),
    rec(receipt_requested="none", media=["https://x.io/a.png", "https://x.io/b.png"], text=""),
    rec(receipt_requested="all", callback_url=None),
    rec(receipt_requested="all", state="sending"),
    rec(receipt_requested="all", state="sent", sent_notified=True),
    rec(receipt_requested="all", state="sent", sent_notified=True, delivery_state="delivered", delivery_code="0",
        delivery_description=DELIVERED_DESCRIPTION),
    rec(receipt_requested="error", state="error", delivery_state="not-delivered", delivery_code="720",
        delivery_description="Invalid Destination Address"),
    rec(direction="in", state="received", callback_url=None, application_id="app-1"),
    rec(native=True, callback_url=None, state="sending", application_id="app-1", tag="native-tag"),
    rec(dry_run=True, receipt_requested="all", id="dry-1", text="ünïcødé 😀 \n\"q\""),
    rec(receipt_requested="all", time_us=-62_135_596_800_000_000 + 1_000),  # year 1: the slow time format
]


def event(type_: str, **kw: Any) -> dict[str, Any]:
    return {
        "type": type_, "time": "2026-01-01T00:00:01Z", "to": "+15551230002", "description": "ok",
        "message": {"id": MID, "owner": "+15551230001", "applicationId": "app-1", "time": "2026-01-01T00:00:00Z",
                    "segmentCount": 1, "direction": "out", "to": ["+15551230002"], "from": "+15551230001", "text": ""},
    } | kw


EVENTS = [event("message-sending"), event("message-sent"), event("message-delivered"),
          event("message-failed", errorCode=4720), event("message-failed", errorCode=9999, description="odd"),
          event("message-read")]


@pytest.mark.parametrize("r", RECORDS)
def test_apply_status_equals_the_reference(r: MessageRecord) -> None:
    for pair in itertools.product(EVENTS, repeat=2):
        a, b = r, r
        for payload in pair:
            before = a
            a, a_specs = apply_status(a, payload, PUBLIC)
            b, b_specs = ref_apply_status(b, payload, PUBLIC)
            assert a == b and a.model_dump() == b.model_dump()
            assert a.model_dump_json() == b.model_dump_json()
            assert [s.model_dump() for s in a_specs] == [s.model_dump() for s in b_specs]
            assert [s.model_dump_json() for s in a_specs] == [s.model_dump_json() for s in b_specs]
            # Specs built without validation are the models validation builds, set fields included.
            assert a_specs == b_specs
            assert [s.model_fields_set for s in a_specs] == [s.model_fields_set for s in b_specs]
            assert [DeliverySpec.model_validate(s.model_dump()) for s in a_specs] == a_specs
            # Nothing changed is told by identity (the store then writes nothing).
            assert (a is before) == (b.model_dump() == before.model_dump())
    # A validated event (ingest's path) gives the same as its payload.
    for payload in EVENTS:
        a, a_specs = apply_status(r, V2Event.model_validate(payload), PUBLIC)
        b, b_specs = apply_status(r, payload, PUBLIC)
        assert a == b and [s.model_dump() for s in a_specs] == [s.model_dump() for s in b_specs]
