"""What the admin API and the CLI share for deliveries: reading a filter, showing attempts and
timelines. Nothing secret is shown: URL userinfo is masked, no header is ever kept."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from shim.config import mask_userinfo
from shim.core import iso_from_us, parse_time_us
from shim.store import OUTCOMES, Attempt, DeliveryFilter, Timeline

from ._logs import scrub

FILTER_KEYS = {"userId", "host", "since", "until", "outcome", "ids", "messageId", "webhookId"}


def parse_filter(data: Mapping[str, Any], allowed: set[str] = FILTER_KEYS) -> DeliveryFilter:
    """A filter from JSON (or query) fields; ``ValueError`` says what is wrong."""
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"unknown filter field(s): {', '.join(unknown)}")
    f = DeliveryFilter()
    for key, attr in (("userId", "user_id"), ("host", "host"), ("messageId", "message_id"), ("webhookId", "event_id")):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise ValueError(f"{key} must be a non-empty string")
        setattr(f, attr, value)
    for key in ("since", "until"):
        value = data.get(key)
        if value is None:
            continue
        us = parse_time_us(value) if isinstance(value, str) else None
        if us is None:
            raise ValueError(f"{key} must be an ISO-8601 time or yyyy-MM-dd")
        setattr(f, f"{key}_us", us)
    outcome = data.get("outcome")
    if outcome is not None:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
        f.outcome = outcome
    ids = data.get("ids")
    if ids is not None:
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ValueError("ids must be a non-empty list of integers")
        f.ids = ids
    return f


def attempt_json(a: Attempt, callback_status: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "time": iso_from_us(a.at_us), "outboxId": a.outbox_id, "eventId": a.event_id, "messageId": a.order_key,
        "userId": a.user_id, "target": a.target, "host": a.host, "status": a.status,
        "latencyMs": round(a.latency_us / 1000, 2), "outcome": a.outcome, "error": scrub(a.error) or None,
        "response": a.response or None,
    }
    if callback_status is not None:
        out["callbackStatus"] = callback_status
    return out


def _masked(body: dict[str, Any]) -> dict[str, Any]:
    """A v1 record with the userinfo of every URL in it (callbackUrl, fallbackUrl) masked."""
    return {k: mask_userinfo(v) if isinstance(v, str) and "://" in v else v for k, v in body.items()}


def timeline_json(t: Timeline) -> dict[str, Any]:
    events = []
    for key, payload, status, received_us in t.events:
        events.append({"dedupeKey": key, "received": iso_from_us(received_us), "status": status,
                       "event": json.loads(payload)})
    return {
        "message": _masked(t.message.to_v1()) if t.message else None,
        "events": events,
        "callbacks": [
            {"id": c.id, "eventId": c.event_id, "url": mask_userinfo(c.url),
             "fallbackUrl": mask_userinfo(c.fallback_url) if c.fallback_url else None, "status": c.status,
             "attempts": c.attempts, "lastError": scrub(c.last_error) if c.last_error else None,
             "created": iso_from_us(c.created_us), "updated": iso_from_us(c.updated_us)}
            for c in t.callbacks
        ],
        "attempts": [attempt_json(a) for a in t.attempts],
    }
