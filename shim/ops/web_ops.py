"""Operations: health, readiness, metrics and the dead-letter admin API."""

from __future__ import annotations

from aiohttp import web

from shim.basic_auth import basic_credentials, check_pair
from shim.config import mask_userinfo, user_mode
from shim.core import iso_from_us
from shim.errors import AccessDenied, BadRequest, NotFound, Unavailable
from shim.facade.web_v1 import json_response, read_json
from shim.keys import CONFIG, DELIVERY, MAIN_APP, METRICS, STORE, UPSTREAM, USAGE
from shim.ops._logs import scrub
from shim.ops._usage import report

MAX_LIST = 1000
# How often each replica reads the modes set at run time by the others.
MODE_REFRESH_S = 10.0


async def healthz(request: web.Request) -> web.StreamResponse:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready = the store answers. Bandwidth being unreachable must not take ingest out of the
    load balancer; upstream reachability is the ``shim_upstream_up`` gauge instead."""
    try:
        await request.app[STORE].ping()
    except Exception:
        return json_response({"status": "unavailable", "checks": {"store": "unreachable"}}, 503)
    return json_response({"status": "ok", "checks": {"store": "ok"}})


async def metrics(request: web.Request) -> web.StreamResponse:
    # Queue depth and dead letters are the gauges the delivery sweeper refreshes (every few
    # seconds, on indexes): a scrape never queries the outbox.
    m = request.app[METRICS]
    m.upstream_up.set(1 if await request.app[UPSTREAM].ping() else 0)
    return web.Response(body=m.render(), headers={"Content-Type": "text/plain; version=0.0.4"})


def _admin(request: web.Request) -> web.Application:
    """Authorise an admin request; returns the app holding shim's state (the main app, also when
    the admin API has its own listener). Off (404) unless admin credentials are configured."""
    main = request.app.get(MAIN_APP, request.app)
    cfg = main[CONFIG].admin
    if not cfg.enabled or cfg.username is None or cfg.password is None:
        raise NotFound("The requested resource was not found")
    if not check_pair(basic_credentials(request.headers.get("Authorization")), cfg.username,
                      cfg.password.get_secret_value()):
        raise AccessDenied()
    return main


async def list_dead(request: web.Request) -> web.StreamResponse:
    main = _admin(request)
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST:
        raise BadRequest(f"limit must be an integer between 1 and {MAX_LIST}")
    rows = await main[STORE].dead_letters(int(raw))
    return json_response([
        {"id": r.id, "eventId": r.event_id, "url": mask_userinfo(r.url), "attempts": r.attempts,
         "lastError": scrub(r.last_error or ""), "updatedUs": r.updated_us}
        for r in rows
    ])


async def replay_dead(request: web.Request) -> web.StreamResponse:
    main = _admin(request)
    usage = 'The body must be {"ids": [int, ...]} or {"all": true}'
    data = await read_json(request) if await request.read() else None
    if not isinstance(data, dict):
        raise BadRequest(usage)
    ids: list[int] | None
    if data.get("all") is True and "ids" not in data:
        ids = None
    else:
        raw = data.get("ids")
        if not isinstance(raw, list) or not raw or not all(isinstance(i, int) and not isinstance(i, bool) for i in raw):
            raise BadRequest(usage)
        ids = raw
    try:
        count = await main[STORE].replay(ids)
    except Exception:
        raise Unavailable("The store is unavailable", code="store-unavailable") from None
    main[DELIVERY].wake()
    return json_response({"replayed": count})


async def hosts(request: web.Request) -> web.StreamResponse:
    """This replica's view of callback endpoint health (in memory): per host its breaker state,
    recent successes and failures, latency, and when an open breaker lets its probe through."""
    main = _admin(request)
    out = []
    for h in main[DELIVERY].health.snapshot():
        opened, probe = h.pop("openedUs"), h.pop("nextProbeUs")
        out.append(h | {"openedAt": iso_from_us(opened) if opened is not None else None,
                        "nextProbeAt": iso_from_us(probe) if probe is not None else None})
    return json_response(out)


async def migration(request: web.Request) -> web.StreamResponse:
    """The migration report (SPEC §8): every replica's counts (this one's flushed first)."""
    main = _admin(request)
    usage = main[USAGE]
    await usage.flush()
    try:
        rows = await main[STORE].usage_rows()
    except Exception:
        raise Unavailable("The store is unavailable", code="store-unavailable") from None
    return json_response(report(rows, usage.unflushed(), [u.user_id for u in main[CONFIG].users]))


async def set_mode(request: web.Request) -> web.StreamResponse:
    """A user's mode (live | dry-run), at once on this replica, on every other within
    ``MODE_REFRESH_S`` (kept in the store, where it wins over ``users[].mode`` from then on)."""
    main = _admin(request)
    user = main[CONFIG].user(request.match_info["userId"])
    if user is None:
        raise NotFound("No users[] entry has this user_id")
    data = await read_json(request) if await request.read() else None
    mode = user_mode(data.get("mode")) if isinstance(data, dict) else None
    if mode is None:
        raise BadRequest('The body must be {"mode": "live"} or {"mode": "dry-run"}')
    try:
        await main[STORE].set_user_mode(user.user_id, mode)
    except Exception:
        raise Unavailable("The store is unavailable", code="store-unavailable") from None
    user.mode = mode
    return json_response({"userId": user.user_id, "mode": mode})


async def sync_modes(app: web.Application) -> None:
    """Apply the modes set at run time (by any replica) to this replica's users."""
    modes = await app[STORE].user_modes()
    for user in app[CONFIG].users:
        mode = user_mode(modes.get(user.user_id))
        if mode is not None:
            user.mode = mode


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/admin/dead-letters", list_dead, allow_head=False)
    app.router.add_post("/admin/dead-letters/replay", replay_dead)
    app.router.add_get("/admin/migration", migration, allow_head=False)
    app.router.add_get("/admin/hosts", hosts, allow_head=False)
    app.router.add_post("/admin/users/{userId}/mode", set_mode)


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)
    # With admin.listen the admin API has its own listener only (see web_app.build_admin_app).
    if not app[CONFIG].admin.listen:
        add_admin_routes(app)
