"""The v1 messages resource: send (single and batch), get, list, redact."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from shim.config import UserConfig
from shim.core import next_link, now_us, parse_list_query, parse_send_item, record_from_send, to_v2_request
from shim.errors import (
    BadRequest,
    InvalidProperty,
    MessageNotFound,
    MultiMessageLimit,
    ShimError,
    StoreUnavailable,
    error_body,
)
from shim.keys import CONFIG, DELIVERY, REQUEST_ID, STORE, UPSTREAM

from .web_auth import authenticate
from .web_v1 import json_response, read_json

log = logging.getLogger("shim.messages")
BATCH_LIMIT = 50


def message_path(user_id: str, message_id: str = "") -> str:
    base = f"/v1/users/{user_id}/messages"
    return f"{base}/{message_id}" if message_id else base


async def send_one(request: web.Request, user: UserConfig, item: Any) -> str:
    """Validate, send to v2, store; returns the absolute v1 Location."""
    app = request.app
    cfg = app[CONFIG]
    req = parse_send_item(item)
    body = to_v2_request(req, user, cfg.server.public_url, app[UPSTREAM].base_url)
    received = now_us()
    v2msg = await app[UPSTREAM].send_message(user, body, request.get(REQUEST_ID, ""))
    record = record_from_send(req, v2msg, user, received)
    try:
        enqueued = await app[STORE].insert_message(record, request.get(REQUEST_ID))
    except Exception:
        log.exception(
            "message sent on v2 but not stored", extra={"message_id": record.id, "user_id": user.user_id}
        )
        raise StoreUnavailable(
            "The message was sent but could not be recorded", details={"messageId": record.id}
        ) from None
    if enqueued:
        app[DELIVERY].wake()
    return f"{cfg.server.public_url}{message_path(user.user_id, record.id)}"


async def post_messages(request: web.Request) -> web.StreamResponse:
    cfg = request.app[CONFIG]
    user = authenticate(request, cfg)
    data = await read_json(request)
    if isinstance(data, dict):
        location = await send_one(request, user, data)
        return web.Response(status=201, headers={"Location": location})
    if not isinstance(data, list):
        raise BadRequest(
            f"The request body must be a JSON object or an array of objects, not {_json_type(data)}"
        )
    if len(data) > BATCH_LIMIT:
        raise MultiMessageLimit(len(data), BATCH_LIMIT)
    if not data:
        raise BadRequest("The request body is an empty array; send 1 to 50 messages")
    gate = asyncio.Semaphore(cfg.upstream.batch_concurrency)

    async def one(item: Any) -> dict[str, Any]:
        async with gate:
            try:
                return {"result": "accepted", "location": await send_one(request, user, item)}
            except ShimError as err:
                return {"result": "error", "error": error_body(err)}
            except Exception:
                log.exception("batch item failed")
                return {"result": "error", "error": error_body(ShimError("An internal error occurred"))}

    results = await asyncio.gather(*(one(item) for item in data))
    return json_response(list(results), status=202)


def _json_type(value: Any) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


async def get_message(request: web.Request) -> web.StreamResponse:
    user = authenticate(request, request.app[CONFIG])
    message_id = request.match_info["messageId"]
    rec = await request.app[STORE].get_message(user.user_id, message_id)
    if rec is None:
        raise MessageNotFound(message_id)
    return json_response(rec.to_v1())


async def list_messages(request: web.Request) -> web.StreamResponse:
    cfg = request.app[CONFIG]
    user = authenticate(request, cfg)
    q = parse_list_query(request.query)
    records = await request.app[STORE].list_messages(user.user_id, q)
    headers = {}
    if len(records) > q.size:
        records = records[: q.size]
        last = records[-1].seq
        assert last is not None
        headers["Link"] = next_link(cfg.server.public_url, message_path(user.user_id), q, last)
    return json_response([r.to_v1() for r in records], headers=headers)


async def patch_message(request: web.Request) -> web.StreamResponse:
    user = authenticate(request, request.app[CONFIG])
    message_id = request.match_info["messageId"]
    data = await read_json(request)
    if data != {"text": ""}:
        raise InvalidProperty(
            'Only redaction is supported: the body must be exactly {"text": ""}',
            details={"propertyName": "text"},
        )
    if not await request.app[STORE].redact_text(user.user_id, message_id):
        raise MessageNotFound(message_id)
    return web.Response(status=200)


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/users/{userId}/messages", post_messages)
    app.router.add_get("/v1/users/{userId}/messages", list_messages, allow_head=False)
    app.router.add_get("/v1/users/{userId}/messages/{messageId}", get_message, allow_head=False)
    app.router.add_patch("/v1/users/{userId}/messages/{messageId}", patch_message)
