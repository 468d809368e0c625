"""The v1 messages resource: send (single and batch), get, list, redact."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from shim.core import FILTER_KEYS, next_link, parse_list_query
from shim.errors import BadRequest, InvalidProperty, MessageNotFound, error_body
from shim.keys import CONFIG, REQUEST_ID, SENDER, STORE, USAGE

from ._send import batch_item_error, message_path
from .web_auth import authenticate
from .web_v1 import V1Request, json_response, read_json

log = logging.getLogger("shim.messages")


async def post_messages(request: V1Request) -> web.StreamResponse:
    user = authenticate(request, request.app[CONFIG])
    data = await read_json(request)
    sender = request.app[SENDER]
    if isinstance(data, dict):
        location = await sender.send(user, data, (request.get(REQUEST_ID) or ""))
        return web.Response(status=201, headers={"Location": location})
    if not isinstance(data, list):
        raise BadRequest(
            f"The request body must be a JSON object or an array of objects, not {_json_type(data)}"
        )
    if not data:
        raise BadRequest("The request body is an empty array; send 1 to 50 messages")
    request.app[USAGE].hit(user.user_id, "v1:batch")
    results = await sender.send_batch(user, data, (request.get(REQUEST_ID) or ""))
    # Once any item was sent the answer is the 202 with per-item results, whatever happens here.
    try:
        return json_response(results, status=202)
    except Exception:
        log.exception("batch results could not be encoded")
        return json_response([_plain_result(r) for r in results], status=202)


def _plain_result(result: dict[str, Any]) -> dict[str, Any]:
    if result.get("result") == "accepted" and isinstance(result.get("location"), str):
        return {"result": "accepted", "location": result["location"]}
    return {"result": "error", "error": error_body(batch_item_error(None))}


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
    usage = request.app[USAGE]
    for key in FILTER_KEYS:
        if key in request.query:
            usage.hit(user.user_id, f"list:filter:{key}")
    if "page" in request.query:
        usage.hit(user.user_id, "list:page")
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
