"""Ingest of Bandwidth's v2 callback arrays at ``callbacks.path``.

Answers 2xx only once the events are committed; 5xx when they cannot be, so Bandwidth retries.
Basic auth uses the RFC 7235 challenge Bandwidth expects (401 + ``WWW-Authenticate``).
"""

from __future__ import annotations

import logging

from aiohttp import web
from pydantic import ValidationError

from shim.basic_auth import basic_credentials, check_pair
from shim.errors import AccessDenied, BadRequest, StoreUnavailable
from shim.facade.web_v1 import read_json
from shim.gateway._routing import Gateway
from shim.keys import CONFIG, DELIVERY, GATEWAY, METRICS, REQUEST_ID, STORE
from shim.store import IncomingEvent

log = logging.getLogger("shim.callbacks")
MAX_EVENTS = 1000


async def ingest(request: web.Request) -> web.StreamResponse:
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
    prepared: list[IncomingEvent] = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise BadRequest(f"Event {i} is not a JSON object")
        try:
            prepared.append(gateway.prepare(item, request.get(REQUEST_ID)))
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise BadRequest(f"Event {i} is not a v2 message event: {loc}: {err['msg']}") from None
    try:
        enqueued = await request.app[STORE].ingest(prepared)
    except Exception:
        log.exception("could not store callback events")
        raise StoreUnavailable("The events could not be stored; retry later") from None
    request.app[METRICS].events_ingested.inc(len(prepared))
    if enqueued:
        request.app[DELIVERY].wake()
    return web.Response(status=200)


def setup(app: web.Application, gateway: Gateway) -> None:
    app[GATEWAY] = gateway
    app.router.add_post(app[CONFIG].callbacks.path, ingest)
