"""Reconciliation (SPEC §9): a v2 message search result → the v2 event(s) it stands for → stored
state and v1 callbacks, through the very ``apply_status`` the gateway uses, so a repaired message
ends exactly as if its events had come (same state, same callback bodies and ids), its callbacks
only marked as reconciled. Pure: the current time and the search window are arguments.

The search (``GET /users/{accountId}/messages``, ``listMessageItem``) gives a status per
recipient, no text; ``tag`` carries shim's correlation key, so a send whose outcome was unknown
(an unbound intent) is found by it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._deliveries import DeliverySpec
from ._delivery_codes import v2_names
from ._message import MessageRecord
from ._time import iso_from_us, parse_time_us
from ._translate_events import apply_status
from ._translate_send import send_key_of

# The header every reconciled v1 callback carries (its body is what the real event would have caused).
RECONCILED_HEADER = "X-Shim-Reconciled"
# How far back v2's message search reaches.
SEARCH_WINDOW_US = 14 * 24 * 3600 * 1_000_000
# Margin around a batch's times when searching (shim's clock and v2's receive time differ a little).
SEARCH_SLACK_US = 5 * 60 * 1_000_000
# The search's ``sourceTn`` filter takes at most this many numbers.
MAX_SOURCE_TNS = 10

# ``messageStatus`` → the v2 event that status stands for. RECEIVED, QUEUED and ACCEPTED say
# nothing a callback would have (the message has not left Bandwidth yet).
_EVENT_OF_STATUS = {
    "SENDING": "message-sending",
    "SENT": "message-sent",
    "DELIVERED": "message-delivered",
    "FAILED": "message-failed",
    "UNDELIVERED": "message-failed",
}
_DESCRIPTION = {
    "message-sending": "Message is sending to carrier",
    "message-sent": "Message sent",
    "message-delivered": "Message delivered to carrier",
}
# A failed search item without an error code: v2's generic unknown error.
UNKNOWN_ERROR_CODE = 9999

Outcome = Literal["final", "progress", "unchanged"]


@dataclass(frozen=True)
class SearchItem:
    """One ``listMessageItem`` (one recipient of one message), the fields reconciliation reads."""

    message_id: str
    status: str
    destination: str | None = None
    source: str | None = None
    error_code: int | None = None
    receive_time: str | None = None
    segment_count: int | None = None
    tag: str | None = None

    @property
    def send_key(self) -> str | None:
        return send_key_of(self.tag)


def search_item(raw: Any) -> SearchItem | None:
    """Parse one ``messages[]`` entry; None when it cannot be used (no id or status)."""
    if not isinstance(raw, dict):
        return None
    mid, status = raw.get("messageId"), raw.get("messageStatus")
    if not isinstance(mid, str) or not mid or not isinstance(status, str):
        return None

    def text(key: str) -> str | None:
        v = raw.get(key)
        return v if isinstance(v, str) else None

    def integer(key: str) -> int | None:
        v = raw.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) and -(2**31) <= v < 2**31 else None

    return SearchItem(mid, status.upper(), text("destinationTn"), text("sourceTn"), integer("errorCode"),
                      text("receiveTime"), integer("segmentCount"), text("tag"))


def is_final(rec: MessageRecord) -> bool:
    """An outbound message needs nothing more: it failed, or its delivery is known."""
    return rec.direction != "out" or rec.state == "error" or rec.delivery_state is not None


def beyond_window(rec: MessageRecord, now_us: int, window_us: int = SEARCH_WINDOW_US) -> bool:
    """Too old for v2's search: it can no longer be resolved."""
    return rec.time_us < now_us - window_us


def search_params(recs: Sequence[MessageRecord], limit: int) -> dict[str, str]:
    """The query that finds a batch of one account's messages: outbound, in the batch's time
    range (with a margin), from its numbers when there are few enough to filter by."""
    times = [r.time_us for r in recs]
    params = {
        "messageDirection": "OUTBOUND",
        "fromDateTime": iso_from_us(min(times) - SEARCH_SLACK_US),
        "toDateTime": iso_from_us(max(times) + SEARCH_SLACK_US),
        "limit": str(limit),
    }
    sources = sorted({r.from_ for r in recs})
    if len(sources) <= MAX_SOURCE_TNS:
        params["sourceTn"] = ",".join(sources)
    return params


def match_items(recs: Sequence[MessageRecord], bound: Sequence[bool], items: Iterable[SearchItem]
                ) -> dict[int, list[SearchItem]]:
    """Search items by the index of the record they belong to: a bound message by its id, an
    unbound send intent by the correlation key in the item's tag."""
    by_id = {r.id: i for i, (r, b) in enumerate(zip(recs, bound, strict=True)) if b}
    by_key = {r.send_key: i for i, (r, b) in enumerate(zip(recs, bound, strict=True)) if not b and r.send_key}
    out: dict[int, list[SearchItem]] = {}
    for item in items:
        i = by_id.get(item.message_id)
        if i is None and item.send_key is not None:
            i = by_key.get(item.send_key)
        if i is not None:
            out.setdefault(i, []).append(item)
    return out


def synthesize_events(rec: MessageRecord, item: SearchItem, application_id: str | None) -> list[dict[str, Any]]:
    """The v2 status event a search item stands for, shaped as Bandwidth posts it."""
    kind = _EVENT_OF_STATUS.get(item.status)
    if kind is None:
        return []
    event_time = item.receive_time if item.receive_time and parse_time_us(item.receive_time) else rec.time
    message: dict[str, Any] = {
        "id": item.message_id, "owner": rec.from_, "applicationId": application_id or rec.application_id,
        "time": rec.time, "segmentCount": item.segment_count if item.segment_count is not None else rec.segment_count,
        "direction": "out", "to": [rec.to], "from": rec.from_, "text": "", "media": list(rec.media),
    }
    if item.tag is not None:
        message["tag"] = item.tag
    event: dict[str, Any] = {"type": kind, "time": event_time, "to": item.destination or rec.to, "message": message}
    if kind == "message-failed":
        code = item.error_code if item.error_code is not None else UNKNOWN_ERROR_CODE
        event["errorCode"] = code
        event["description"] = v2_names().get(code) or "unknown-error"
    else:
        event["description"] = _DESCRIPTION[kind]
    return [event]


@dataclass
class Repair:
    """What reconciling one message does: its new record (bound to its v2 id), the synthesized
    events (kept like received ones), the v1 callbacks it is owed (marked reconciled)."""

    record: MessageRecord
    events: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[DeliverySpec] = field(default_factory=list)
    outcome: Outcome = "unchanged"


def reconcile_message(
    rec: MessageRecord, items: Sequence[SearchItem], public_url: str, application_id: str | None = None,
) -> Repair:
    """Apply what the search says about ``rec`` (one item per recipient) as the events would
    have been applied. An unbound intent takes the v2 id of its items."""
    if not items or is_final(rec):
        return Repair(rec)
    new = rec if rec.id == items[0].message_id else rec.model_copy(update={"id": items[0].message_id})
    events: list[dict[str, Any]] = []
    specs: list[DeliverySpec] = []
    # Progress first, then outcomes (failed after delivered: failed wins, as for group duplicates).
    order = {"SENDING": 0, "SENT": 1, "DELIVERED": 2, "FAILED": 3, "UNDELIVERED": 3}
    for item in sorted(items, key=lambda i: order.get(i.status, -1)):
        for payload in synthesize_events(new, item, application_id):
            after, calls = apply_status(new, payload, public_url)
            if after != new or calls:
                events.append(payload)
            new = after
            specs.extend(s.model_copy(update={"reconciled": True}) for s in calls)
    if new == rec:
        return Repair(rec)
    return Repair(new, events, specs, "final" if is_final(new) else "progress")
