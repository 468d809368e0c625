"""What the store exchanges with the layers above it."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from yarl import URL

from shim.core import DeliverySpec, MessageRecord, V2Event


class EventRules(Protocol):
    """The event core the store applies inside its transactions (``shim.gateway.Gateway``)."""

    def apply_status(
        self, rec: MessageRecord, event: dict[str, Any] | V2Event,
    ) -> tuple[MessageRecord, list[DeliverySpec]]:
        """A status event applied to a stored message: the updated record and the v1 callbacks."""
        ...

    def route_native(self, payload: dict[str, Any]) -> list[DeliverySpec]:
        """An event whose message shim never recorded (sent natively on v2): the deliveries it causes."""
        ...


@dataclass
class IncomingEvent:
    """One v2 callback event, prepared by the gateway for ingestion."""

    dedupe_key: str
    message_id: str
    payload: dict[str, Any]
    payload_json: str
    # For ``message-received``: the new inbound record and its callbacks (no stored state needed).
    inbound: MessageRecord | None = None
    inbound_deliveries: Sequence[DeliverySpec] = ()
    # The ingest request's id, carried to the v1 callbacks it causes (X-Request-Id).
    request_id: str | None = None
    # The correlation key of shim's send, from the v2 tag (None: a message sent natively on v2).
    send_key: str | None = None
    # The event as validated by the gateway, so applying it does not validate it again.
    event: V2Event | None = None


@dataclass
class DeadLetter:
    id: int
    event_id: str
    url: str
    attempts: int
    last_error: str | None
    updated_us: int
    # The callback's message (its order key: ``native_<id>`` for a native route), user and host.
    message_id: str = ""
    user_id: str | None = None
    host: str = ""


@dataclass(frozen=True)
class PendingCallback:
    """A callback still to deliver (an operator's view of the queue): ``leased`` while a replica
    holds it (in flight), else waiting for ``next_attempt_us``."""

    id: int
    event_id: str
    message_id: str  # the outbox row's order key
    user_id: str | None
    host: str
    url: str
    attempts: int
    next_attempt_us: int
    created_us: int
    last_error: str | None
    leased: bool


@dataclass(frozen=True)
class Attempt:
    """One HTTP attempt of a callback, as the delivery log keeps it."""

    at_us: int
    outbox_id: int
    event_id: str
    order_key: str
    user_id: str | None
    target: str  # primary | fallback
    host: str
    status: int | None
    latency_us: int
    outcome: str
    error: str = ""
    # The first bytes of the receiver's answer (at most ``RESPONSE_PREVIEW`` bytes, decoded).
    response: str = ""


@dataclass
class DeliveryFilter:
    """Which outbox rows (replay, discard) or attempts (listing) an operator means. Times are
    epoch microseconds of the outbox row's last change (an attempt's time when listing)."""

    user_id: str | None = None
    host: str | None = None
    since_us: int | None = None
    until_us: int | None = None
    outcome: str | None = None  # dead | delivered | pending
    ids: Sequence[int] | None = None
    message_id: str | None = None
    event_id: str | None = None
    # Only rows enqueued up to this outbox id: what a count shown to an operator covered, so
    # the confirmed action never reaches callbacks that arrived after it (not a filter by itself).
    max_id: int | None = None

    def empty(self) -> bool:
        return all(v is None for k, v in vars(self).items() if k != "max_id")


@functools.lru_cache(maxsize=4096)
def host_key(url: str) -> str:
    """What per-host fairness counts by: ``host:port`` of a callback URL. Pure: cached (a
    message's callbacks, and a user's, repeat their URL)."""
    try:
        u = URL(url)
        return f"{u.host}:{u.port}"
    except (ValueError, TypeError):
        return "invalid"


@dataclass
class RetentionReport:
    """What one retention pass did: rows whose text it cleared, rows it purged."""

    messages_cleared: int = 0
    events_cleared: int = 0
    outbox_cleared: int = 0
    messages_purged: int = 0
    events_purged: int = 0
    outbox_purged: int = 0
    rejected_purged: int = 0
    attempts_purged: int = 0
    usage_days_purged: int = 0

    def add(self, other: RetentionReport) -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)
