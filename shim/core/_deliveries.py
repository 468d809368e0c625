"""What the outbox holds: one callback to deliver, as data (built by the pure core)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class Route(BaseModel):
    """Where and how a callback goes: a message's ``callbackUrl``…, a user's ``incoming`` or its
    ``native_events`` route."""

    url: str
    fallback_url: str | None = None
    method: Literal["GET", "POST"] = "POST"
    timeout_ms: int = 10000


class DeliverySpec(BaseModel):
    """Built only by ``DeliverySpec.to``: one constructor for every kind of callback."""

    # Stable id, sent as ``webhook-id`` on every attempt so receivers can de-duplicate.
    event_id: str
    # Events with the same key are delivered in order (a later one waits for an earlier one).
    order_key: str
    user_id: str | None = None
    url: str
    fallback_url: str | None = None
    method: Literal["GET", "POST"] = "POST"
    timeout_ms: int = 10000
    # v1: one JSON object (query params for GET); v2: the raw v2 callback array.
    format: Literal["v1", "v2"] = "v1"
    body: Any
    # The request that caused this callback (sent as X-Request-Id, logged on failure).
    request_id: str | None = None
    # Caused by reconciliation (SPEC §9), not by a received event: sent with ``X-Shim-Reconciled: true``.
    reconciled: bool = False

    @classmethod
    def to(
        cls, route: Route, *, event_id: str, order_key: str, user_id: str | None, body: Any,
        format: Literal["v1", "v2"] = "v1",
    ) -> DeliverySpec:
        return cls(
            event_id=event_id, order_key=order_key, user_id=user_id, url=route.url,
            fallback_url=route.fallback_url, method=route.method if format == "v1" else "POST",
            timeout_ms=route.timeout_ms, format=format, body=body,
        )


class Delivery(BaseModel):
    """An outbox row leased to this worker."""

    id: int
    spec: DeliverySpec
    attempts: int
    # When the row was enqueued (the v2 event's ingest, or the send for sent-message callbacks).
    created_us: int = 0
