"""v2 callback events → stored v1 state and v1 callbacks. Pure: no I/O, no clock (SPEC §4 table);
the time an event was received is an argument.

Callback ids are derived from (message, kind) so that re-applying an event can never enqueue
a second copy: the outbox ignores an ``event_id`` it already has.
"""

from __future__ import annotations

from typing import Any

from shim.config import IncomingConfig, NativeEventsConfig, UserConfig

from ._deliveries import DeliverySpec, Route
from ._delivery_codes import map_error_code
from ._message import STATE_RANK, MessageRecord
from ._time import parse_time_us
from ._translate_send import rewrite_inbound_media
from ._v2 import V2Event, V2Message

DELIVERED_DESCRIPTION = "Message Delivered to Carrier"


def message_uri(public_url: str, user_id: str, message_id: str) -> str:
    return f"{public_url}/v1/users/{user_id}/messages/{message_id}"


def v1_callback_body(
    rec: MessageRecord, public_url: str, *, delivery: bool = False, state: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "eventType": rec.event_type,
        "direction": rec.direction,
        "messageId": rec.id,
        "messageUri": message_uri(public_url, rec.user_id, rec.id),
        "from": rec.from_,
        "to": rec.to,
        "text": rec.text,
        "time": rec.time,
        "state": state or rec.state,
        "segmentCount": rec.segment_count,
    }
    if rec.tag is not None:
        body["tag"] = rec.tag
    if rec.media:
        body["media"] = list(rec.media)
    if rec.direction == "in" and rec.application_id:
        body["applicationId"] = rec.application_id
    if delivery:
        for key, value in (
            ("deliveryState", rec.delivery_state),
            ("deliveryCode", rec.delivery_code),
            ("deliveryDescription", rec.delivery_description),
        ):
            if value is not None:
                body[key] = value
    return body


def _outbound_spec(rec: MessageRecord, kind: str, body: dict[str, Any]) -> DeliverySpec:
    assert rec.callback_url is not None
    route = Route(url=rec.callback_url, fallback_url=rec.fallback_url, method=rec.callback_method,
                  timeout_ms=rec.callback_timeout or 10000)
    return DeliverySpec.to(route, event_id=f"evt_{rec.id}_{kind}", order_key=rec.id, user_id=rec.user_id,
                           body=body)


def apply_status(
    rec: MessageRecord, event: dict[str, Any] | V2Event, public_url: str
) -> tuple[MessageRecord, list[DeliverySpec]]:
    """One v2 status event applied to a stored outbound message. ``event`` is validated here
    unless the caller already did (ingest validates each event once, at the gateway)."""
    ev = event if isinstance(event, V2Event) else V2Event.model_validate(event)
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
            calls.append(("sent", v1_callback_body(new, public_url, state="sent")))

    if ev.type == "message-sending":
        advance("sending")
    elif ev.type == "message-sent":
        advance("sent")
        notify_sent()
    elif ev.type == "message-delivered":
        # Failed wins over a later delivered (group duplicates); a second delivered is a dup.
        if new.state == "error" or new.delivery_state is not None:
            return rec, []
        advance("sent")
        new.delivery_state = "delivered"
        new.delivery_code = "0"
        new.delivery_description = DELIVERED_DESCRIPTION
        notify_sent()
        if receipt == "all":
            calls.append(("receipt", v1_callback_body(new, public_url, delivery=True)))
    elif ev.type == "message-failed":
        if new.state == "error":
            return rec, []
        new.state = "error"
        new.delivery_state = "not-delivered"
        new.delivery_code, new.delivery_description = map_error_code(ev.errorCode, ev.description)
        body = v1_callback_body(new, public_url, delivery=receipt in ("all", "error"))
        calls.append(("error", body))
    else:
        return rec, []
    specs = [_outbound_spec(new, kind, body) for kind, body in calls] if rec.callback_url else []
    return new, specs


def inbound_id(ev: V2Event) -> str:
    """One v1 message per owned recipient: a group copy gets the recipient in its id."""
    recipients = ev.message.to
    if len(recipients) > 1 and ev.to:
        return f"{ev.message.id}-{ev.to.lstrip('+')}"
    return ev.message.id


def record_from_v2(
    ev: V2Event, user: UserConfig, received_us: int, *, id: str, direction: str, state: str,
    media: list[str], tag: str | None = None,
) -> MessageRecord:
    """The one constructor of a record seen first as a v2 event (inbound, or native on v2). Its
    time is v2's, or when v2 gave none the time shim received the event."""
    return MessageRecord.model_validate({
        "id": id, "user_id": user.user_id, "direction": direction,
        "from_": ev.message.from_ or "", "to": ev.to or (ev.message.to[0] if ev.message.to else (ev.message.owner or "")),
        "text": ev.message.text or "", "media": media, "state": state,
        "time_us": parse_time_us(ev.message.time or ev.time or "") or received_us,
        "segment_count": ev.message.segmentCount, "application_id": ev.message.applicationId or user.application_id,
        "tag": tag,
    })


def native_record(msg: V2Message, user: UserConfig, received_us: int) -> MessageRecord:
    """A message sent natively on v2 through shim's passthrough, from v2's 202 body (a group
    message is recorded once, under its first recipient)."""
    return MessageRecord.model_validate({
        "id": msg.id, "user_id": user.user_id, "direction": "out", "from_": msg.from_ or msg.owner or "",
        "to": msg.to[0] if msg.to else "", "text": msg.text or "", "media": list(msg.media), "state": "sending",
        "time_us": parse_time_us(msg.time or "") or received_us, "segment_count": msg.segmentCount,
        "application_id": msg.applicationId or user.application_id, "tag": msg.tag, "native": True,
    })


def inbound_record(ev: V2Event, user: UserConfig, public_url: str, received_us: int) -> MessageRecord:
    return record_from_v2(
        ev, user, received_us, id=inbound_id(ev), direction="in", state="received",
        media=[rewrite_inbound_media(u, public_url, user) for u in ev.message.media],
    )


def inbound_deliveries(
    rec: MessageRecord, incoming: IncomingConfig | None, public_url: str
) -> list[DeliverySpec]:
    if incoming is None:
        return []
    route = Route(url=incoming.url, fallback_url=incoming.fallback_url, method=incoming.method,
                  timeout_ms=incoming.timeout_ms)
    return [DeliverySpec.to(route, event_id=f"evt_{rec.id}_received", order_key=rec.id, user_id=rec.user_id,
                            body=v1_callback_body(rec, public_url))]


_NATIVE_STATE = {
    "message-sending": "sending",
    "message-sent": "sent",
    "message-delivered": "sent",
    "message-failed": "error",
    "message-received": "received",
}


def native_deliveries(
    payload: dict[str, Any], user: UserConfig, native: NativeEventsConfig, public_url: str,
    dedupe_key: str, received_us: int,
) -> list[DeliverySpec]:
    """Events of messages sent natively on v2 (staged migration): raw v2 or translated v1."""
    ev = V2Event.model_validate(payload)
    route = Route(url=native.url)
    event_id, order_key = f"evt_native_{dedupe_key[:32]}", f"native_{ev.message.id}"
    if native.format == "v2":
        return [DeliverySpec.to(route, event_id=event_id, order_key=order_key, user_id=user.user_id, body=[payload],
                                format="v2")]
    state = _NATIVE_STATE.get(ev.type)
    if state is None:
        return []
    direction = "in" if ev.type == "message-received" else "out"
    media = ([rewrite_inbound_media(u, public_url, user) for u in ev.message.media]
             if direction == "in" else list(ev.message.media))
    rec = record_from_v2(ev, user, received_us, id=ev.message.id, direction=direction, state=state,
                         media=media, tag=ev.message.tag)
    if ev.type == "message-delivered":
        rec.delivery_state, rec.delivery_code = "delivered", "0"
        rec.delivery_description = DELIVERED_DESCRIPTION
    elif ev.type == "message-failed":
        rec.delivery_state = "not-delivered"
        rec.delivery_code, rec.delivery_description = map_error_code(ev.errorCode, ev.description)
    return [DeliverySpec.to(route, event_id=event_id, order_key=order_key, user_id=user.user_id,
                            body=v1_callback_body(rec, public_url, delivery=True))]
