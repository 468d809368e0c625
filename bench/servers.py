"""Helper servers for the benchmarks, each run as its own process:

- ``upstream``: a fast v2 stand-in (202 + message JSON), optional fixed delay, optional TLS (the
  fallback when nginx is missing, and the slow upstream of the batch figures);
- ``forwarder``: a bare aiohttp forwarder (parse, forward, return 201) — the baseline;
- ``receiver``: a legacy callback endpoint that records arrival times (or never answers);
  ``GET /summary`` gives the count of distinct message ids and the first and last arrival.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import ssl
import string
import time

import aiohttp
from aiohttp import web


def upstream_app(delay_s: float) -> web.Application:
    chars = string.ascii_lowercase + string.digits

    async def send(request: web.Request) -> web.Response:
        body = await request.json()
        if delay_s:
            await asyncio.sleep(delay_s)
        mid = f"{int(time.time() * 1000):013d}" + "".join(random.choices(chars, k=16))
        return web.json_response({
            "id": mid, "owner": body["from"], "applicationId": body["applicationId"],
            "time": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), "segmentCount": 1,
            "direction": "out", "to": body["to"], "from": body["from"], "text": body.get("text", ""),
        }, status=202)

    async def root(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/users/{account}/messages", send)
    app.router.add_get("/", root)
    return app


def forwarder_app(upstream: str) -> web.Application:
    session_key: web.AppKey[aiohttp.ClientSession] = web.AppKey("session")

    async def send(request: web.Request) -> web.Response:
        item = await request.json()
        body = {"applicationId": "app", "to": [item["to"]], "from": item["from"], "text": item.get("text", "")}
        async with request.app[session_key].post(f"{upstream}/users/1/messages", json=body) as resp:
            data = await resp.json()
        location = f"http://127.0.0.1/v1/users/{request.match_info['user']}/messages/{data['id']}"
        return web.Response(status=201, headers={"Location": location})

    async def ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[session_key] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        yield
        await app[session_key].close()

    app = web.Application()
    app.router.add_post("/v1/users/{user}/messages", send)
    app.cleanup_ctx.append(ctx)
    return app


def receiver_app(hang: bool) -> web.Application:
    arrivals: dict[str, float] = {}

    async def callback(request: web.Request) -> web.Response:
        body = await request.read()
        if hang:
            await asyncio.sleep(3600)
        try:
            mid = json.loads(body)["messageId"]
        except (ValueError, KeyError):
            mid = request.headers.get("webhook-id", "")
        arrivals.setdefault(mid, time.time())
        return web.Response()

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(arrivals)

    async def summary(request: web.Request) -> web.Response:
        times = arrivals.values()
        return web.json_response({"count": len(arrivals), "first": min(times, default=0.0),
                                  "last": max(times, default=0.0)})

    async def reset(request: web.Request) -> web.Response:
        arrivals.clear()
        return web.Response()

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_get("/summary", summary)
    app.router.add_post("/reset", reset)
    app.router.add_post("/{tail:.*}", callback)
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["upstream", "forwarder", "receiver"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--upstream", default="")
    p.add_argument("--hang", action="store_true")
    p.add_argument("--cert", help="serve TLS with this certificate (PEM) ...")
    p.add_argument("--key", help="... and this key")
    a = p.parse_args()
    tls: ssl.SSLContext | None = None
    if a.cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(a.cert, a.key)
    if a.role == "upstream":
        app = upstream_app(a.delay)
    elif a.role == "forwarder":
        app = forwarder_app(a.upstream)
    else:
        app = receiver_app(a.hang)
    web.run_app(app, host="127.0.0.1", port=a.port, access_log=None, print=None, ssl_context=tls)


if __name__ == "__main__":
    main()
