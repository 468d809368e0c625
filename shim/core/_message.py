"""The stored message: v1's view of a message, kept by shim because v2 stores nothing."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from ._time import iso_from_us, iso_seconds_from_us

State = Literal["received", "queued", "sending", "sent", "error"]

# Order in which outbound state may advance; it never moves backwards.
STATE_RANK: dict[str, int] = {"received": 0, "queued": 0, "sending": 1, "sent": 2, "error": 3}


M = TypeVar("M", bound=BaseModel)


def built_model(cls: type[M], values: dict[str, Any], fields_set: set[str] | None = None) -> M:
    """``cls.model_construct(**values)`` for ``values`` holding every field of ``cls`` (no extra), in
    declaration order, each already of its type: the same model without pydantic's per-field work
    (defaults, aliases), which costs several µs on a send's hot path."""
    model = cls.__new__(cls)
    object.__setattr__(model, "__dict__", values)
    object.__setattr__(model, "__pydantic_fields_set__", set(values) if fields_set is None else fields_set)
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


class MessageRecord(BaseModel):
    """Built in one place per source: ``record_from_send`` (a v1 send, then ``bind_v2``) and ``record_from_v2``
    (an inbound or native v2 event). The v1 ``time`` is derived from ``time_us``, never stored
    twice."""

    id: str
    user_id: str
    direction: Literal["in", "out"]
    from_: str
    to: str
    text: str = ""
    media: list[str] = Field(default_factory=list)
    state: State = "queued"
    time_us: int = 0
    segment_count: int = 1
    application_id: str | None = None
    callback_url: str | None = None
    callback_method: Literal["GET", "POST"] = "POST"
    callback_timeout: int | None = None
    fallback_url: str | None = None
    tag: str | None = None
    receipt_requested: str | None = None
    delivery_state: str | None = None
    delivery_code: str | None = None
    delivery_description: str | None = None
    # Whether the v1 "sent" callback was already emitted (it fires once per message).
    sent_notified: bool = False
    # The correlation key shim put in the v2 tag of its send (None for inbound/legacy records).
    send_key: str | None = None
    # Sent natively on v2 through shim's passthrough (``/api/v2``): its events go to the user's
    # ``native_events`` route, never to v1 callbacks.
    native: bool = False
    # Recorded by a user in dry-run mode: nothing was sent, its callbacks were simulated.
    dry_run: bool = False
    seq: int | None = None

    @classmethod
    def built(cls, values: dict[str, Any], fields_set: set[str] | None = None) -> MessageRecord:
        """The record of ``values`` — every field, in declaration order, each already of its type
        (built from validated data) — without pydantic's per-field work: what ``model_construct``
        builds from them (``tests/core/test_translate_send.py`` proves it), at a fraction of
        its cost on the send's hot path."""
        return built_model(cls, values, fields_set)

    @property
    def time(self) -> str:
        return iso_from_us(self.time_us)

    @property
    def event_type(self) -> str:
        return "mms" if self.media else "sms"

    def to_v1(self) -> dict[str, Any]:
        """The v1 ``GET /messages/{id}`` body: unset keys omitted, never ``null``."""
        body: dict[str, Any] = {
            "id": self.id,
            "messageId": self.id,
            "from": self.from_,
            "to": self.to,
            "direction": self.direction,
            "text": self.text,
            "media": list(self.media),
            "state": self.state,
            # GET/list: whole seconds (Java); callbacks keep ``self.time`` with milliseconds.
            "time": iso_seconds_from_us(self.time_us),
            "segmentCount": self.segment_count,
        }
        optional = {
            "callbackUrl": self.callback_url,
            "callbackTimeout": self.callback_timeout,
            "fallbackUrl": self.fallback_url,
            "tag": self.tag,
            "receiptRequested": self.receipt_requested,
            "deliveryState": self.delivery_state,
            "deliveryCode": self.delivery_code,
            "deliveryDescription": self.delivery_description,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if self.dry_run:
            body["shimDryRun"] = True  # an extra field: old SDKs ignore unknown ones
        return body
