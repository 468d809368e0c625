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
from ._message import STATE_RANK, MessageRecord, built_model
from ._time import parse_time_us
from ._translate_send import rewrite_inbound_media
from ._v2 import V2Event, V2Message

DELIVERED_DESCRIPTION = "Message Delivered to Carrier"


def message_uri(public_url: str, user_id: str, message_id: str) -> str:
    return f"{public_url}/v1/users/{user_id}/messages/{message_id}"


def v1_callback_body(
    rec: MessageRecord, public_url: str, *, delivery: bool = False, state: str | None = None,
    time: str | None = None,
) -> dict[str, Any]:
    """``time``: ``rec.time`` when the caller has it already (it costs a date format)."""
    body: dict[str, Any] = {
        "eventType": "mms" if rec.media else "sms",
        "direction": rec.direction,
        "messageId": rec.id,
        "messageUri": f"{public_url}/v1/users/{rec.user_id}/messages/{rec.id}",
        "from": rec.from_,
        "to": rec.to,
        "text": rec.text,
        "time": time or rec.time,
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


# The fields ``DeliverySpec(...)`` would count as set in ``_outbound_specs``.
_SPEC_SET = frozenset({"event_id", "order_key", "user_id", "url", "fallback_url", "method", "timeout_ms", "format", "body"})


def _outbound_specs(rec: MessageRecord, calls: list[tuple[str, dict[str, Any]]]) -> list[DeliverySpec]:
    """The message's v1 callbacks: what ``DeliverySpec.to`` builds from the message's route
    (without building the route for each)."""
    assert rec.callback_url is not None
    url, fallback, method, timeout = rec.callback_url, rec.fallback_url, rec.callback_method, rec.callback_timeout
    # Every value comes from a validated record, so the spec is built without validating it again
    # (``built_model``): the same model ``DeliverySpec(...)`` makes, a few µs less an event.
    return [built_model(DeliverySpec, {"event_id": f"evt_{rec.id}_{kind}", "order_key": rec.id, "user_id": rec.user_id,
                                       "url": url, "fallback_url": fallback, "method": method,
                                       "timeout_ms": timeout or 10000, "format": "v1", "body": body,
                                       "request_id": None, "reconciled": False}, set(_SPEC_SET))
            for kind, body in calls]


def apply_status(
    rec: MessageRecord, event: dict[str, Any] | V2Event, public_url: str
) -> tuple[MessageRecord, list[DeliverySpec]]:
    """One v2 status event applied to a stored outbound message. ``event`` is validated here
    unless the caller already did (ingest validates each event once, at the gateway).

    The state machine works on plain values; the record is copied once, with its changes (the
    same result as setting them one by one on a copy)."""
    ev = event if isinstance(event, V2Event) else V2Event.model_validate(event)
    if rec.direction != "out":
        return rec, []
    changes: dict[str, Any] = {}
    kinds: list[str] = []  # the callbacks, in order: "sent", "receipt", "error"
    state: str = rec.state
    receipt = rec.receipt_requested or "none"

    def advance(to: str) -> str:
        return to if STATE_RANK[to] > STATE_RANK[state] else state

    def notify_sent() -> None:
        if not rec.sent_notified and state == "sent":
            changes["sent_notified"] = True
            kinds.append("sent")

    if ev.type == "message-sending":
        state = advance("sending")
    elif ev.type == "message-sent":
        state = advance("sent")
        notify_sent()
    elif ev.type == "message-delivered":
        # Failed wins over a later delivered (group duplicates); a second delivered is a dup.
        if state == "error" or rec.delivery_state is not None:
            return rec, []
        state = advance("sent")
        changes["delivery_state"] = "delivered"
        changes["delivery_code"] = "0"
        changes["delivery_description"] = DELIVERED_DESCRIPTION
        notify_sent()
        if receipt == "all":
            kinds.append("receipt")
    elif ev.type == "message-failed":
        if state == "error":
            return rec, []
        state = "error"
        changes["delivery_state"] = "not-delivered"
        changes["delivery_code"], changes["delivery_description"] = map_error_code(ev.errorCode, ev.description)
        kinds.append("error")
    else:
        return rec, []
    if state != rec.state:
        changes["state"] = state
    if not changes:  # nothing to store: the record itself comes back (callers test ``is``)
        return rec, []
    new = rec.model_copy(update=changes)
    if not rec.callback_url or not kinds:
        return new, []
    # Only the state and the delivery fields change here, so every body is built from the final
    # record: the "sent" one names its state and carries no delivery fields.
    time = new.time
    calls = [(kind, v1_callback_body(new, public_url, time=time, state="sent" if kind == "sent" else None,
                                     delivery=kind == "receipt" or (kind == "error" and receipt in ("all", "error"))))
             for kind in kinds]
    return new, _outbound_specs(new, calls)


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
