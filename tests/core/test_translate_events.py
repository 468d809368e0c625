"""v2 events → stored v1 state + v1 callbacks (SPEC §4 table), as input → output tables."""

from __future__ import annotations

from typing import Any

import pytest

from shim.config import IncomingConfig, NativeEventsConfig, UserConfig
from shim.core import (
    MessageRecord,
    V2Event,
    apply_status,
    inbound_deliveries,
    inbound_record,
    map_error_code,
    native_deliveries,
)

from ..conftest import USER

PUBLIC = "https://shim.example.com"
U = UserConfig.model_validate(USER)
MID = "14762070468292kw2fuqty55yp2b2"


def rec(**kw: Any) -> MessageRecord:
    base: dict[str, Any] = dict(
        id=MID, user_id="u-test", direction="out", from_="+15551230001", to="+15551230002",
        text="hello", time_us=1_767_225_600_000_000, callback_url="https://cb.example/x",
        fallback_url="https://fb.example/y", callback_timeout=2000, tag="t1",
    )
    return MessageRecord(**(base | kw))


def event(type_: str, **kw: Any) -> dict[str, Any]:
    return {
        "type": type_, "time": "2026-01-01T00:00:01Z", "to": "+15551230002",
        "description": kw.pop("description", "ok"),
        "message": {"id": MID, "owner": "+15551230001", "applicationId": USER["application_id"],
                    "time": "2026-01-01T00:00:00Z", "segmentCount": 1, "direction": "out",
                    "to": ["+15551230002"], "from": "+15551230001", "text": ""},
    } | kw


def run(r: MessageRecord, *types: str | dict[str, Any]) -> tuple[MessageRecord, list[tuple[str, dict[str, Any]]]]:
    out = []
    for t in types:
        payload = event(t) if isinstance(t, str) else t
        r, specs = apply_status(r, payload, PUBLIC)
        out += [(s.event_id.rsplit("_", 1)[1], s.body) for s in specs]
    return r, out


DELIVERY_KEYS = {"deliveryState", "deliveryCode", "deliveryDescription"}


@pytest.mark.parametrize(
    ("receipt", "events", "state", "delivery_state", "callbacks"),
    [
        # message-sending: state only, no callback.
        (None, ["message-sending"], "sending", None, []),
        # sent → one "sent" callback, once per message.
        (None, ["message-sent", "message-sent"], "sent", None, [("sent", "sent", False)]),
        # delivered without receipts: a "sent" if not yet sent, no receipt.
        (None, ["message-delivered"], "sent", "delivered", [("sent", "sent", False)]),
        ("none", ["message-sent", "message-delivered"], "sent", "delivered", [("sent", "sent", False)]),
        ("error", ["message-delivered"], "sent", "delivered", [("sent", "sent", False)]),
        # receiptRequested=all: also a receipt carrying the delivery fields.
        ("all", ["message-delivered"], "sent", "delivered",
         [("sent", "sent", False), ("receipt", "sent", True)]),
        ("all", ["message-sending", "message-sent", "message-delivered"], "sent", "delivered",
         [("sent", "sent", False), ("receipt", "sent", True)]),
        # failed → error callback; delivery fields only with all/error.
        (None, ["message-failed"], "error", "not-delivered", [("error", "error", False)]),
        ("error", ["message-failed"], "error", "not-delivered", [("error", "error", True)]),
        ("all", ["message-failed"], "error", "not-delivered", [("error", "error", True)]),
        # Group duplicates: delivered after failed is dropped; failed wins.
        ("all", ["message-failed", "message-delivered"], "error", "not-delivered", [("error", "error", True)]),
        # Out of order: state never moves backwards.
        (None, ["message-delivered", "message-sending"], "sent", "delivered", [("sent", "sent", False)]),
        (None, ["message-sent", "message-sending"], "sent", None, [("sent", "sent", False)]),
        # Duplicate terminal events add nothing.
        ("all", ["message-delivered", "message-delivered"], "sent", "delivered",
         [("sent", "sent", False), ("receipt", "sent", True)]),
        (None, ["message-failed", "message-failed"], "error", "not-delivered", [("error", "error", False)]),
        # Unknown types are ignored.
        (None, ["message-read"], "queued", None, []),
    ],
)
def test_state_machine(
    receipt: str | None, events: list[str], state: str, delivery_state: str | None,
    callbacks: list[tuple[str, str, bool]],
) -> None:
    final, out = run(rec(receipt_requested=receipt), *events)
    assert final.state == state
    assert final.delivery_state == delivery_state
    assert [(kind, body["state"], DELIVERY_KEYS <= set(body)) for kind, body in out] == callbacks


def test_callback_body_exact() -> None:
    _, out = run(rec(receipt_requested="all"), "message-delivered")
    assert out[1][1] == {
        "eventType": "sms", "direction": "out", "messageId": MID,
        "messageUri": f"{PUBLIC}/v1/users/u-test/messages/{MID}",
        "from": "+15551230001", "to": "+15551230002", "text": "hello", "time": "2026-01-01T00:00:00.000Z",
        "state": "sent", "segmentCount": 1, "tag": "t1",
        "deliveryState": "delivered", "deliveryCode": "0", "deliveryDescription": "Message Delivered to Carrier",
    }


def test_failed_code_mapping_in_body() -> None:
    _, out = run(rec(receipt_requested="error"), event("message-failed", errorCode=4720))
    assert out[0][1]["deliveryCode"] == "720"
    assert out[0][1]["deliveryDescription"] == "Invalid Destination Address"
    _, out = run(rec(receipt_requested="error"), event("message-failed", errorCode=4432))
    assert out[0][1]["deliveryCode"] == "999"
    assert out[0][1]["deliveryDescription"] == "rejected-forbidden-country (v2 4432)"


def test_mms_callback_has_media_and_event_type() -> None:
    _, out = run(rec(media=["https://x.io/a.png"]), "message-delivered")
    assert out[0][1]["eventType"] == "mms" and out[0][1]["media"] == ["https://x.io/a.png"]


def test_no_callback_url_means_state_only() -> None:
    final, out = run(rec(callback_url=None, receipt_requested="all"), "message-delivered")
    assert final.delivery_state == "delivered" and out == []


def test_delivery_spec_fields() -> None:
    r = rec(callback_method="GET")
    _, specs = apply_status(r, event("message-sent"), PUBLIC)
    (spec,) = specs
    assert (spec.url, spec.fallback_url, spec.method, spec.timeout_ms, spec.order_key) == (
        "https://cb.example/x", "https://fb.example/y", "GET", 2000, MID)
    assert spec.event_id == f"evt_{MID}_sent"


@pytest.mark.parametrize(
    ("v2", "code", "description"),
    [
        (4720, "720", "Invalid Destination Address"),
        (4775, "775", "Rejected due to user opt out"),
        (5600, "600", "Destination Carrier Queue Full"),
        (9902, "902", "Message Expired"),
        (4470, "189", "Spam Detected"),
        (4432, "999", "rejected-forbidden-country (v2 4432)"),
        (4121, "999", "Rejected as SPAM (v2 4121)"),
        (1234, "999", "some text (v2 1234)"),
        (None, "999", "some text"),
    ],
)
def test_error_code_table(v2: int | None, code: str, description: str) -> None:
    assert map_error_code(v2, "some text") == (code, description)


def inbound_event(to: list[str], owner: str, media: list[str] | None = None) -> V2Event:
    return V2Event.model_validate({
        "type": "message-received", "time": "2026-01-01T00:00:00Z", "to": owner,
        "description": "Incoming message received",
        "message": {"id": MID, "time": "2026-01-01T00:00:00Z", "to": to, "from": "+15559990000",
                    "text": "Hey", "applicationId": USER["application_id"], "owner": owner,
                    "direction": "in", "segmentCount": 1, "media": media or []},
    })


def test_inbound_record_and_callback() -> None:
    v2_media = f"https://messaging.bandwidth.com/api/v2/users/9900001/media/{MID}/0/bw.png"
    r = inbound_record(inbound_event(["+15551230001"], "+15551230001", [v2_media]), U, PUBLIC, 0)
    assert (r.id, r.direction, r.state, r.to, r.from_) == (MID, "in", "received", "+15551230001", "+15559990000")
    assert r.media == [f"{PUBLIC}/v1/users/u-test/media/{MID}/0/bw.png"]
    (spec,) = inbound_deliveries(r, IncomingConfig(url="https://app.example/in", method="GET", timeout_ms=500), PUBLIC)
    assert (spec.url, spec.method, spec.timeout_ms) == ("https://app.example/in", "GET", 500)
    assert spec.body == {
        "eventType": "mms", "direction": "in", "messageId": MID,
        "messageUri": f"{PUBLIC}/v1/users/u-test/messages/{MID}", "from": "+15559990000",
        "to": "+15551230001", "text": "Hey", "time": "2026-01-01T00:00:00.000Z", "state": "received",
        "segmentCount": 1, "media": r.media, "applicationId": USER["application_id"],
    }
    assert inbound_deliveries(r, None, PUBLIC) == []


def test_inbound_group_one_message_per_owned_recipient() -> None:
    a = inbound_record(inbound_event(["+15551230001", "+15551230002"], "+15551230001"), U, PUBLIC, 0)
    b = inbound_record(inbound_event(["+15551230001", "+15551230002"], "+15551230002"), U, PUBLIC, 0)
    assert a.id != b.id and {a.to, b.to} == {"+15551230001", "+15551230002"}


def test_native_events_raw_and_translated() -> None:
    payload = event("message-failed", errorCode=4720)
    (raw,) = native_deliveries(payload, U, NativeEventsConfig(format="v2", url="https://n.example/v2"), PUBLIC, "k" * 64, 0)
    assert raw.body == [payload] and raw.format == "v2"
    (v1,) = native_deliveries(payload, U, NativeEventsConfig(format="v1", url="https://n.example/v1"), PUBLIC, "k" * 64, 0)
    assert v1.body["state"] == "error" and v1.body["deliveryCode"] == "720" and v1.format == "v1"
