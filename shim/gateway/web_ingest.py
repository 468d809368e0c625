"""Ingest of Bandwidth's v2 callback arrays at ``callbacks.path``.

Answers 2xx only once the events are committed; 5xx when they cannot be, so Bandwidth retries.
One malformed event never costs the valid events of its array (SPEC §4): it is left out, counted
(``shim_callback_events_rejected_total{reason}``), kept for inspection in the store's
``rejected_events`` (escaped ASCII, at most ``KEPT_CHARS``) and logged at warning level with a
shorter excerpt; the others are stored and the answer is 2xx. An array with no
valid event at all is a 400 (nothing in it could be stored).
Basic auth uses the RFC 7235 challenge Bandwidth expects (401 + ``WWW-Authenticate``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from shim.basic_auth import basic_credentials, check_pair
from shim.errors import AccessDenied, BadRequest, StoreUnavailable
from shim.facade.web_v1 import V1Request, read_json
from shim.gateway._routing import Gateway
from shim.keys import CONFIG, DELIVERY, GATEWAY, METRICS, REQUEST_ID, STORE
from shim.store import IncomingEvent

log = logging.getLogger("shim.callbacks")
MAX_EVENTS = 1000
EXCERPT_CHARS = 500
KEPT_CHARS = 64 * 1024


def excerpt(value: Any, limit: int) -> str:
    """ASCII-only JSON of ``value`` (surrogates and control characters escaped), cut at ``limit``."""
    try:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=True, default=str)
    except (ValueError, RecursionError):
        text = repr(value)
    text = text.encode("ascii", "backslashreplace").decode()
    return text if len(text) <= limit else text[:limit] + "...(truncated)"


async def ingest(request: V1Request) -> web.StreamResponse:
    cfg = request.app[CONFIG].callbacks
    if cfg.username is not None:
        password = cfg.password.get_secret_value() if cfg.password else ""
        if not check_pair(basic_credentials(request.headers.get("Authorization")), cfg.username, password):
            raise AccessDenied()
    data = await read_json(request)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise BadRequest("The callback body must be a JSON array of v2 events")
    if len(data) > MAX_EVENTS:
        raise BadRequest(f"At most {MAX_EVENTS} events per callback")
    gateway = request.app[GATEWAY]
    metrics = request.app[METRICS]
    rid = request.get(REQUEST_ID)
    prepared: list[IncomingEvent] = []
    rejected: list[tuple[str, str, str | None]] = []
    first_bad = ""
    for i, item in enumerate(data):
        reason, why = "not-an-object", "not a JSON object"
        if isinstance(item, dict):
            try:
                prepared.append(gateway.prepare(item, rid))
                continue
            except ValidationError as e:
                err = e.errors()[0]
                reason = "unencodable" if err["type"] == "string_unicode" else "invalid"
                why = f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            except (UnicodeError, ValueError, OverflowError, RecursionError) as e:
                # A lone surrogate (no UTF-8 form to store or hash), a time off the calendar...
                reason, why = "unencodable", type(e).__name__
        first_bad = first_bad or f"Event {i} is not a v2 message event ({reason})"
        metrics.events_rejected.labels(reason).inc()
        rejected.append((reason, excerpt(item, KEPT_CHARS), rid))
        log.warning(
            "callback event rejected",
            extra={"request_id": rid, "index": i, "reason": reason, "error": excerpt(why, 200),
                   "event": excerpt(item, EXCERPT_CHARS)},
        )
    if rejected:
        try:
            await request.app[STORE].keep_rejected(rejected)
        except Exception:  # inspection only: never costs the valid events
            log.exception("could not keep rejected callback events")
    if not prepared:
        # Nothing valid to lose: the sender learns its whole array was refused.
        raise BadRequest(first_bad)
    try:
        enqueued = await request.app[STORE].ingest(prepared)
    except Exception:
        log.exception("could not store callback events")
        raise StoreUnavailable("The events could not be stored; retry later") from None
    metrics.events_ingested.inc(len(prepared))
    if enqueued:
        request.app[DELIVERY].wake()
    return web.Response(status=200)


def setup(app: web.Application, gateway: Gateway) -> None:
    app[GATEWAY] = gateway
    app.router.add_post(app[CONFIG].callbacks.path, ingest)
