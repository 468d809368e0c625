"""The callback gateway's routing: which user an event belongs to, and how it is prepared
for the store. Thin glue between config and the pure ``translate_events`` core."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from shim.clock import Clock, now_us
from shim.config import Config, UserConfig
from shim.core import (
    DeliverySpec,
    MessageRecord,
    V2Event,
    apply_status,
    inbound_deliveries,
    inbound_id,
    inbound_record,
    native_deliveries,
    send_key_of,
)
from shim.store import IncomingEvent

log = logging.getLogger("shim.gateway")


def canonical(payload: dict[str, Any]) -> tuple[str, str]:
    """(canonical JSON, dedupe key). Bandwidth re-sends identical events (at-least-once): same
    content, same key. The JSON is also what the store keeps, so each event is encoded once."""
    canon = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return canon, hashlib.sha256(canon.encode()).hexdigest()


def dedupe_key(payload: dict[str, Any]) -> str:
    return canonical(payload)[1]


class Gateway:
    """The event rules the store applies (``apply_status``, ``route_native``) and the preparation
    of each ingested event. The clock only dates events v2 sent without a time."""

    def __init__(self, cfg: Config, clock: Clock = now_us) -> None:
        self.cfg = cfg
        self.clock = clock
        self.public_url = cfg.server.public_url
        self.by_app: dict[str, UserConfig] = {}
        # Called once per event no route takes (``shim_callback_events_unroutable_total``).
        self.on_unroutable: Callable[[], object] | None = None
        self.index_users()

    def index_users(self) -> None:
        """(Re)build the application → user index from ``cfg.users`` (at start and on reload)."""
        by_app: dict[str, UserConfig] = {}
        for u in self.cfg.users:
            by_app.setdefault(u.application_id, u)
        self.by_app = by_app

    def user_for(self, ev: V2Event) -> UserConfig | None:
        return self.by_app.get(ev.message.applicationId or "")

    def prepare(self, payload: dict[str, Any], request_id: str | None = None) -> IncomingEvent:
        """Validate one v2 event (raises pydantic.ValidationError) and route it."""
        ev = V2Event.model_validate(payload)
        payload_json, key = canonical(payload)
        if ev.type == "message-received" and ev.message.direction != "out":
            user = self.user_for(ev)
            if user is not None:
                rec = inbound_record(ev, user, self.public_url, self.clock())
                specs = inbound_deliveries(rec, user.incoming, self.public_url)
                return IncomingEvent(key, rec.id, payload, payload_json, inbound=rec, inbound_deliveries=specs,
                                     request_id=request_id)
            return IncomingEvent(key, inbound_id(ev), payload, payload_json, request_id=request_id)
        return IncomingEvent(key, ev.message.id, payload, payload_json, request_id=request_id,
                             send_key=send_key_of(ev.message.tag), event=ev)

    def apply_status(
        self, rec: MessageRecord, event: dict[str, Any] | V2Event
    ) -> tuple[MessageRecord, list[DeliverySpec]]:
        return apply_status(rec, event, self.public_url)

    def route_native(self, payload: dict[str, Any]) -> list[DeliverySpec]:
        ev = V2Event.model_validate(payload)
        user = self.user_for(ev)
        if user is None or user.native_events is None:
            log.warning(
                "event for a message shim did not send and no native_events route",
                extra={"v2_message_id": ev.message.id, "type": ev.type},
            )
            if self.on_unroutable is not None:
                self.on_unroutable()
            return []
        return native_deliveries(
            payload, user, user.native_events, self.public_url, dedupe_key(payload), self.clock()
        )
