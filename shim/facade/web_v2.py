"""The v2 passthrough (SPEC §8, staged migration): code already moved to v2 keeps shim's base URL.

``POST /api/v2/users/{accountId}/messages`` and the v2 media API (``/api/v2/users/{accountId}/media
[/{name}]``) are forwarded unchanged to ``upstream.base_url`` with the caller's own v2 Basic
credentials, which must be those of a configured user of that account (anything else is v2's
401: shim never forwards arbitrary credentials to arbitrary accounts). Bodies are streamed, v2's
status, body and headers returned as they are. An accepted send is recorded as a native message
(history, report), so its events go to the user's ``native_events`` route at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from urllib.parse import unquote

import orjson
from aiohttp import web
from pydantic import ValidationError

from shim.basic_auth import basic_credentials, check_pair
from shim.config import Config, UserConfig
from shim.core import V2Message, native_record
from shim.keys import CONFIG, REQUEST_ID, STORE, UPSTREAM, USAGE, USER_ID
from shim.upstream import ConnectFailed, RequestFailed, Response

log = logging.getLogger("shim.passthrough")
PREFIX = "/api/v2"
CHUNK = 64 * 1024
# Request headers passed on (besides the caller's Authorization), and response headers passed back.
FORWARDED = ("Content-Type", "Content-Length", "Cache-Control", "Continuation-Token", "Accept")
RETURNED = ("Content-Type", "Continuation-Token", "Location", "Retry-After", "Cache-Control", "ETag",
            "Last-Modified", "Content-Disposition")


def v2_error(status: int, type_: str, description: str, headers: dict[str, str] | None = None) -> web.Response:
    """An error in v2's own shape (``{"type", "description"}``): the caller speaks v2."""
    return web.Response(body=orjson.dumps({"type": type_, "description": description}), status=status,
                        headers={"Content-Type": "application/json"} | (headers or {}))


class _Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


def v2_user(request: web.Request, cfg: Config) -> UserConfig:
    """The configured user of ``accountId`` whose v2 credentials the caller gave; else v2's 401."""
    account = request.match_info["accountId"]
    given = basic_credentials(request.headers.get("Authorization"))
    found: UserConfig | None = None
    checked = False
    for user in cfg.users:
        if user.account_id == account:
            checked = True
            if found is None and check_pair(given, user.v2_username, user.v2_password.get_secret_value()):
                found = user
    if not checked:  # the same work for an unknown account: timing tells nothing
        check_pair(given, "\0" * 16, "\0" * 32)
    if found is None:
        raise _Refused(v2_error(401, "unauthorized", "Authentication Failed",
                                {"WWW-Authenticate": 'Basic realm="shim"'}))
    request[USER_ID] = found.user_id
    return found


def _upstream_path(request: web.Request) -> str:
    """The path below ``base_url`` exactly as the caller wrote it (still percent-encoded), with its query."""
    raw = request.rel_url.raw_path
    if any(seg in ("..", ".") for seg in unquote(raw).split("/")):
        raise _Refused(v2_error(400, "request-validation", "Invalid path"))
    query = request.rel_url.raw_query_string
    return raw[len(PREFIX):] + (f"?{query}" if query else "")


def _forward_headers(request: web.Request) -> dict[str, str]:
    headers = {"Authorization": request.headers["Authorization"]}
    for name in FORWARDED:
        if name in request.headers:
            headers[name] = request.headers[name]
    rid = request.get(REQUEST_ID)
    if rid:
        headers["X-Request-Id"] = rid
    return headers


def _returned_headers(resp: Response) -> dict[str, str]:
    return {name: resp.headers[name] for name in RETURNED if name in resp.headers}


def _unreachable(err: Exception) -> web.Response:
    if isinstance(err, ConnectFailed):
        return v2_error(503, "service-unavailable", "The v2 API could not be reached; nothing was sent")
    return v2_error(502, "bad-gateway", "The v2 API did not answer in full; the request may have been processed")


async def post_messages(request: web.Request) -> web.StreamResponse:
    cfg = request.app[CONFIG]
    try:
        user = v2_user(request, cfg)
        path = _upstream_path(request)
    except _Refused as refused:
        return refused.response
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return v2_error(413, "request-entity-too-large", "The request body is too large")
    headers = _forward_headers(request)
    headers.pop("Content-Length", None)
    try:
        async with request.app[UPSTREAM].passthrough("POST", path, headers=headers, body=raw) as resp:
            status, body, out = resp.status, await resp.read(), _returned_headers(resp)
    except (ConnectFailed, RequestFailed) as e:
        log.error("passthrough send failed", extra={"error": str(e), "user_id": user.user_id})
        return _unreachable(e)
    if status in (200, 201, 202):
        await _record(request, cfg, user, body)
    return web.Response(status=status, body=body, headers=out)


async def _record(request: web.Request, cfg: Config, user: UserConfig, body: bytes) -> None:
    """Record an accepted native send (history, report, native routing of its events). It was sent
    whatever happens here: a failure is logged, the caller still gets v2's answer."""
    try:
        msg = V2Message.model_validate(orjson.loads(body))
    except (ValueError, ValidationError):
        log.warning("passthrough send accepted without a message id: not recorded", extra={"user_id": user.user_id})
        return
    # The message belongs to the user of its application when that is another user of the account.
    owner = next((u for u in cfg.users if u.account_id == user.account_id and u.application_id == msg.applicationId),
                 user)
    request.app[USAGE].hit(owner.user_id, "native:message")
    try:
        await request.app[STORE].record_native(native_record(msg, owner, request.app[STORE].clock()))
    except Exception:
        log.exception("passthrough send not recorded", extra={"message_id": msg.id, "user_id": owner.user_id})


async def forward_media(request: web.Request) -> web.StreamResponse:
    cfg = request.app[CONFIG]
    try:
        v2_user(request, cfg)
        path = _upstream_path(request)
    except _Refused as refused:
        return refused.response
    headers = _forward_headers(request)
    body: AsyncIterator[bytes] | None = None
    if request.method == "PUT":
        length = request.content_length
        if length is None:
            return v2_error(411, "length-required", "A media upload needs a Content-Length header")
        if length > cfg.upstream.max_media_bytes:
            return v2_error(413, "request-entity-too-large",
                            f"The media file is {length} bytes; the limit is {cfg.upstream.max_media_bytes} bytes")

        async def stream() -> AsyncIterator[bytes]:
            async for chunk in request.content.iter_chunked(CHUNK):
                yield chunk

        body = stream()
    else:
        headers.pop("Content-Length", None)
    out: web.StreamResponse | None = None
    try:
        async with request.app[UPSTREAM].passthrough(request.method, path, headers=headers, body=body,
                                                      streamed=True) as resp:
            out = web.StreamResponse(status=resp.status, headers=_returned_headers(resp))
            out.headers["X-Request-Id"] = request.get(REQUEST_ID, "")
            if resp.content_length is not None:
                out.content_length = resp.content_length
            if request.method == "HEAD":
                return out
            await out.prepare(request)
            async for chunk in resp.iter_chunked(CHUNK):
                await out.write(chunk)
            await out.write_eof()
            return out
    except (ConnectFailed, RequestFailed) as e:
        log.error("passthrough media call failed", extra={"error": str(e)})
        if out is not None and out.prepared:
            raise  # the answer is under way: the connection is cut, the client sees it short
        return _unreachable(e)


def setup(app: web.Application) -> None:
    app.router.add_post(f"{PREFIX}/users/{{accountId}}/messages", post_messages)
    app.router.add_get(f"{PREFIX}/users/{{accountId}}/media", forward_media)
    app.router.add_put(f"{PREFIX}/users/{{accountId}}/media/{{mediaName:.+}}", forward_media)
    app.router.add_get(f"{PREFIX}/users/{{accountId}}/media/{{mediaName:.+}}", forward_media)
    app.router.add_delete(f"{PREFIX}/users/{{accountId}}/media/{{mediaName:.+}}", forward_media)
