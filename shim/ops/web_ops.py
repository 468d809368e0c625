"""Operations: health, readiness, metrics and the dead-letter admin API."""

from __future__ import annotations

import ipaddress

from aiohttp import web

from shim.basic_auth import basic_credentials, check_pair
from shim.errors import AccessDenied, BadRequest, NotFound, Unavailable
from shim.facade.web_v1 import json_response, read_json
from shim.keys import CONFIG, DELIVERY, METRICS, STORE, UPSTREAM


async def healthz(request: web.Request) -> web.StreamResponse:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    checks = {"store": "ok", "upstream": "ok"}
    try:
        await request.app[STORE].ping()
    except Exception:
        checks["store"] = "unreachable"
    if not await request.app[UPSTREAM].ping():
        checks["upstream"] = "unreachable"
    ok = all(v == "ok" for v in checks.values())
    return json_response({"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503)


async def metrics(request: web.Request) -> web.StreamResponse:
    m = request.app[METRICS]
    try:
        counts = await request.app[STORE].outbox_counts()
        m.queue_depth.set(counts["pending"])
        m.dead_letters.set(counts["dead"])
    except Exception:
        pass
    return web.Response(body=m.render(), headers={"Content-Type": "text/plain; version=0.0.4"})


def _admin(request: web.Request) -> None:
    cfg = request.app[CONFIG].callbacks
    if cfg.admin_username:
        pw = cfg.admin_password.get_secret_value() if cfg.admin_password else ""
        if not check_pair(basic_credentials(request.headers.get("Authorization")), cfg.admin_username, pw):
            raise AccessDenied()
        return
    # Without admin credentials the admin API answers loopback callers only.
    try:
        if ipaddress.ip_address(request.remote or "").is_loopback:
            return
    except ValueError:
        pass
    raise NotFound("The requested resource was not found")


async def list_dead(request: web.Request) -> web.StreamResponse:
    _admin(request)
    try:
        limit = min(1000, int(request.query.get("limit", "100")))
    except ValueError:
        raise BadRequest("limit must be an integer") from None
    rows = await request.app[STORE].dead_letters(limit)
    return json_response([
        {"id": r.id, "eventId": r.event_id, "url": r.url, "attempts": r.attempts,
         "lastError": r.last_error, "updatedUs": r.updated_us}
        for r in rows
    ])


async def replay_dead(request: web.Request) -> web.StreamResponse:
    _admin(request)
    ids = None
    if await request.read():
        data = await read_json(request)
        raw = data.get("ids") if isinstance(data, dict) else None
        if raw is not None:
            if not isinstance(raw, list) or not all(isinstance(i, int) for i in raw):
                raise BadRequest('The body must be {"ids": [int, ...]} or empty to replay all')
            ids = raw
    try:
        count = await request.app[STORE].replay(ids)
    except Exception:
        raise Unavailable("The store is unavailable", code="store-unavailable") from None
    request.app[DELIVERY].wake()
    return json_response({"replayed": count})


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)
    app.router.add_get("/admin/dead-letters", list_dead, allow_head=False)
    app.router.add_post("/admin/dead-letters/replay", replay_dead)
