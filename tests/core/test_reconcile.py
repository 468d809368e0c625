"""The reconciliation core as tables: search item → synthesized v2 event → state and callbacks,
identical (but for the reconciled mark) to what the real events cause through ``apply_status``."""

from __future__ import annotations

from typing import Any

import pytest

from shim.core import (
    SEARCH_WINDOW_US,
    MessageRecord,
    SearchItem,
    apply_status,
    beyond_window,
    is_final,
    match_items,
    reconcile_message,
    search_item,
    search_params,
    synthesize_events,
)

PUBLIC = "https://shim.example.com"
APP = "aaaaaaaa-1111-2222-3333-444444444444"
MID = "1589228074636lm4k2je7j7jklbn2"


def rec(**kw: Any) -> MessageRecord:
    base: dict[str, Any] = dict(
        id=MID, user_id="u1", direction="out", from_="+15551230001", to="+15551230002", text="hi",
        state="queued", time_us=1_700_000_000_000_000, callback_url="https://app.example.com/cb",
        receipt_requested="all", send_key="k" * 20, tag="mine",
    )
    return MessageRecord(**(base | kw))


def item(status: str, **kw: Any) -> SearchItem:
    return SearchItem(**({"message_id": MID, "status": status, "destination": "+15551230002"} | kw))


def real_event(kind: str, **kw: Any) -> dict[str, Any]:
    """What Bandwidth posts for the message (the sandbox's shape)."""
    return {"type": kind, "time": "2023-11-14T22:13:21.000Z", "to": "+15551230002", "description": "x",
            "message": {"id": MID, "owner": "+15551230001", "applicationId": APP, "time": "2023-11-14T22:13:20.000Z",
                        "segmentCount": 1, "direction": "out", "to": ["+15551230002"], "from": "+15551230001",
                        "text": "", "media": [], "tag": "shim1:" + "k" * 20 + ":mine"}} | kw


# (receiptRequested, search status, errorCode, real events) → same state and callback bodies
CASES = [
    ("all", "DELIVERED", None, [real_event("message-delivered")]),
    ("none", "DELIVERED", None, [real_event("message-delivered")]),
    ("error", "DELIVERED", None, [real_event("message-delivered")]),
    ("all", "FAILED", 4720, [real_event("message-failed", errorCode=4720)]),
    ("error", "FAILED", 4432, [real_event("message-failed", errorCode=4432)]),
    ("none", "UNDELIVERED", 9902, [real_event("message-failed", errorCode=9902)]),
    ("all", "SENT", None, [real_event("message-sent")]),
    ("all", "SENDING", None, [real_event("message-sending")]),
]


@pytest.mark.parametrize(("receipt", "status", "code", "events"), CASES)
def test_repair_equals_the_real_events(receipt: str, status: str, code: int | None, events: list[dict[str, Any]]) -> None:
    r = rec(receipt_requested=receipt)
    expected, expected_calls = r, []
    for ev in events:
        expected, calls = apply_status(expected, ev, PUBLIC)
        expected_calls += calls
    repair = reconcile_message(r, [item(status, error_code=code)], PUBLIC, APP)
    assert repair.record == expected
    assert [c.body for c in repair.deliveries] == [c.body for c in expected_calls]
    assert [c.event_id for c in repair.deliveries] == [c.event_id for c in expected_calls]
    assert all(c.reconciled for c in repair.deliveries) and not any(c.reconciled for c in expected_calls)
    assert repair.outcome == ("final" if status in ("DELIVERED", "FAILED", "UNDELIVERED") else "progress")
    assert len(repair.events) == 1


@pytest.mark.parametrize(("state", "status", "outcome", "kinds"), [
    ("sent", "DELIVERED", "final", ["receipt"]),  # sent callback already emitted
    ("sending", "FAILED", "final", ["error"]),
    ("sent", "SENT", "unchanged", []),
    ("queued", "QUEUED", "unchanged", []),
    ("queued", "ACCEPTED", "unchanged", []),
    ("queued", "RECEIVED", "unchanged", []),
    ("queued", "WHATEVER", "unchanged", []),
])
def test_outcomes(state: str, status: str, outcome: str, kinds: list[str]) -> None:
    r = rec(state=state, sent_notified=state == "sent")
    repair = reconcile_message(r, [item(status, error_code=4720)], PUBLIC, APP)
    assert repair.outcome == outcome
    assert [d.event_id.rsplit("_", 1)[1] for d in repair.deliveries] == kinds


def test_final_messages_and_no_items_are_left_alone() -> None:
    done = rec(state="error", delivery_state="not-delivered")
    assert reconcile_message(done, [item("DELIVERED")], PUBLIC).outcome == "unchanged"
    assert reconcile_message(rec(), [], PUBLIC).outcome == "unchanged"
    assert is_final(done) and is_final(rec(direction="in", state="received")) and not is_final(rec(state="sent"))


def test_unbound_intent_takes_the_v2_id() -> None:
    r = rec(id="pending-" + "k" * 20)
    repair = reconcile_message(r, [item("DELIVERED")], PUBLIC, APP)
    assert repair.record.id == MID
    assert repair.deliveries[0].event_id == f"evt_{MID}_sent"
    assert repair.deliveries[0].body["messageId"] == MID


def test_failed_wins_over_delivered_in_any_order() -> None:
    for items in ([item("FAILED", error_code=4720), item("DELIVERED")], [item("DELIVERED"), item("FAILED", error_code=4720)]):
        repair = reconcile_message(rec(), items, PUBLIC, APP)
        assert repair.record.state == "error" and repair.record.delivery_code == "720"


@pytest.mark.parametrize(("raw", "expected"), [
    ({"messageId": MID, "messageStatus": "DELIVERED", "destinationTn": "+1", "errorCode": 0, "tag": "t"},
     SearchItem(MID, "DELIVERED", "+1", None, 0, None, None, "t")),
    ({"messageId": MID, "messageStatus": "failed", "errorCode": True}, SearchItem(MID, "FAILED")),
    ({"messageId": MID, "messageStatus": "SENT", "errorCode": 2**40, "segmentCount": 2},
     SearchItem(MID, "SENT", segment_count=2)),
    ({"messageId": "", "messageStatus": "SENT"}, None),
    ({"messageStatus": "SENT"}, None),
    ({"messageId": MID}, None),
    ("not an object", None),
])
def test_search_item(raw: Any, expected: SearchItem | None) -> None:
    assert search_item(raw) == expected


def test_synthesized_failed_event_names_its_code() -> None:
    [ev] = synthesize_events(rec(), item("FAILED", error_code=4432), APP)
    assert ev["type"] == "message-failed" and ev["errorCode"] == 4432
    assert ev["description"] == "rejected-forbidden-country"
    assert ev["message"]["applicationId"] == APP and ev["message"]["text"] == ""
    [ev] = synthesize_events(rec(), item("UNDELIVERED"), APP)
    assert ev["errorCode"] == 9999
    assert synthesize_events(rec(), item("QUEUED"), APP) == []


def test_match_by_id_or_by_correlation_key() -> None:
    bound = rec(id="m1", send_key="a" * 20)
    intent = rec(id="pending-x", send_key="b" * 20)
    items = [item("DELIVERED", message_id="m1"), item("DELIVERED", message_id="m2", tag="shim1:" + "b" * 20 + ":app"),
             item("DELIVERED", message_id="m3", tag="shim1:" + "c" * 20), item("SENT", message_id="pending-x")]
    got = match_items([bound, intent], [True, False], items)
    assert {k: [i.message_id for i in v] for k, v in got.items()} == {0: ["m1"], 1: ["m2"]}


def test_search_params_and_window() -> None:
    a, b = rec(time_us=10_000_000_000_000), rec(time_us=10_000_060_000_000, from_="+15551230009")
    p = search_params([a, b], 500)
    assert p == {"messageDirection": "OUTBOUND", "fromDateTime": "1970-04-26T17:41:40.000Z",
                 "toDateTime": "1970-04-26T17:52:40.000Z", "limit": "500", "sourceTn": "+15551230001,+15551230009"}
    many = [rec(from_=f"+1555123{i:04d}") for i in range(11)]
    assert "sourceTn" not in search_params(many, 10)
    now = a.time_us + SEARCH_WINDOW_US
    assert not beyond_window(a, now) and beyond_window(a, now + 1)
