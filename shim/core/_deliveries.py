"""What the outbox holds: one callback to deliver, as data (built by the pure core)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class DeliverySpec(BaseModel):
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


class Delivery(BaseModel):
    """An outbox row leased to this worker."""

    id: int
    spec: DeliverySpec
    attempts: int
