"""The v1 media resource, mapped onto the v2 media API of the user's account.

Bodies are streamed both ways (never buffered whole); uploads over v2's limit are refused
before anything is sent upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

from aiohttp import web

from shim.config import UserConfig
from shim.core import v1_media_url, v2_error_to_v1
from shim.errors import BadRequest, MediaSizeOverflow
from shim.keys import CONFIG, UPSTREAM, USER_HEADERS

from .web_auth import authenticate
from .web_v1 import add_user_headers, json_response

CHUNK = 64 * 1024


async def list_media(request: web.Request) -> web.StreamResponse:
    cfg = request.app[CONFIG]
    user = authenticate(request, cfg)
    items, token = await request.app[UPSTREAM].media_list(user, request.query.get("continuationToken"))
    out = []
    for item in items:
        name = str(item.get("mediaName", ""))
        entry = {"mediaName": name, "content": v1_media_url(cfg.server.public_url, user.user_id, name)}
        if isinstance(item.get("contentLength"), int):
            entry["contentLength"] = item["contentLength"]
        out.append(entry)
    headers = {}
    if token:
        url = f"{cfg.server.public_url}/v1/users/{user.user_id}/media?continuationToken={quote(token, safe='')}"
        headers["Link"] = f'<{url}>; rel="next"'
    return json_response(out, headers=headers)


def _name(request: web.Request) -> str:
    name = request.match_info["mediaName"]
    if not name or ".." in name.split("/"):
        raise BadRequest("Invalid media name")
    return name


async def put_media(request: web.Request) -> web.StreamResponse:
    cfg = request.app[CONFIG]
    user: UserConfig = authenticate(request, cfg)
    name = _name(request)
    length = request.content_length
    if length is None:
        raise BadRequest("A media upload needs a Content-Length header")
    if length > cfg.upstream.max_media_bytes:
        raise MediaSizeOverflow(
            f"The media file is {length} bytes; the limit is {cfg.upstream.max_media_bytes} bytes",
            details={"mediaName": name},
        )
    headers = {
        "Content-Type": request.headers.get("Content-Type", "application/octet-stream"),
        "Content-Length": str(length),
    }
    if "Cache-Control" in request.headers:
        headers["Cache-Control"] = request.headers["Cache-Control"]

    async def body() -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_chunked(CHUNK):
            yield chunk

    async with request.app[UPSTREAM].media_request("PUT", user, name, body=body(), headers=headers) as resp:
        await resp.read()
        if resp.status >= 300:
            raise v2_error_to_v1(resp.status, None, media_name=name)
    return web.Response(status=200)


async def get_media(request: web.Request) -> web.StreamResponse:
    user = authenticate(request, request.app[CONFIG])
    name = _name(request)
    async with request.app[UPSTREAM].media_request("GET", user, name) as resp:
        if resp.status >= 300:
            await resp.read()
            raise v2_error_to_v1(resp.status, None, media_name=name)
        out = web.StreamResponse(status=200)
        out.content_type = resp.headers.get("Content-Type", "application/octet-stream")
        # Whatever the file is (an inbound MMS can be text/html), it never runs as a page of shim's
        # origin, where the operator console lives.
        out.headers["Content-Security-Policy"] = "sandbox"
        out.headers["X-Content-Type-Options"] = "nosniff"
        if resp.content_length is not None:
            out.content_length = resp.content_length
        if request.method == "HEAD":
            # Ruby's Media.get_info: the type and length, no body (the upstream one is not read).
            return out
        extra = request.get(USER_HEADERS)
        if extra:  # streamed: the middleware comes after the headers are sent
            add_user_headers(out, extra)
        await out.prepare(request)
        async for chunk in resp.iter_chunked(CHUNK):
            await out.write(chunk)
        await out.write_eof()
        return out


async def delete_media(request: web.Request) -> web.StreamResponse:
    user = authenticate(request, request.app[CONFIG])
    name = _name(request)
    async with request.app[UPSTREAM].media_request("DELETE", user, name) as resp:
        await resp.read()
        if resp.status >= 300 and resp.status != 404:
            raise v2_error_to_v1(resp.status, None, media_name=name)
    return web.Response(status=200)


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/users/{userId}/media", list_media, allow_head=False)
    app.router.add_put("/v1/users/{userId}/media/{mediaName:.+}", put_media)
    app.router.add_get("/v1/users/{userId}/media/{mediaName:.+}", get_media)
    app.router.add_delete("/v1/users/{userId}/media/{mediaName:.+}", delete_media)
