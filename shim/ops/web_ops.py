"""Operations: health, readiness, metrics and the admin API (dead letters, deliveries, timelines)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from shim.basic_auth import basic_credentials, check_pair
from shim.config import mask_userinfo, user_mode
from shim.core import iso_from_us
from shim.errors import AccessDenied, BadRequest, Forbidden, NotFound, Unavailable
from shim.facade.web_v1 import json_response, read_json
from shim.keys import CONFIG, DELIVERY, MAIN_APP, METRICS, STORE, UPSTREAM, USAGE
from shim.ops._deliveries import FILTER_KEYS, attempt_json, parse_filter, timeline_json
from shim.ops._guard import cross_origin
from shim.ops._logs import scrub
from shim.ops._usage import report

MAX_LIST = 1000
# ASCII digits only: str.isdigit() accepts "²", which int() refuses.
_DIGITS = re.compile(r"[0-9]{1,9}")
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


def admin_app(request: web.Request) -> web.Application:
    """Authorise an admin request; returns the app holding shim's state (the main app, also when
    the admin API has its own listener). Off (404) unless admin credentials are configured. A
    request that changes state is refused when a browser says it comes from another site: the
    credentials are Basic auth, which browsers attach by themselves (``_guard``)."""
    main = request.app.get(MAIN_APP, request.app)
    cfg = main[CONFIG].admin
    if not cfg.enabled or cfg.username is None or cfg.password is None:
        raise NotFound("The requested resource was not found")
    if not check_pair(basic_credentials(request.headers.get("Authorization")), cfg.username,
                      cfg.password.get_secret_value()):
        raise AccessDenied()
    if request.method not in ("GET", "HEAD"):
        why = cross_origin(request.headers, (request.host, urlsplit(main[CONFIG].server.public_url).netloc))
        if why is not None:
            raise Forbidden(f"Cross-site admin requests are refused ({why})")
    return main


async def _admin_json(request: web.Request) -> Any:
    """An admin POST's JSON body (None when empty). Only ``application/json``: a form on another
    site can post ``text/plain`` that parses as JSON, but not this without the browser asking first."""
    if not await request.read():
        return None
    if request.content_type != "application/json":
        raise BadRequest("Admin requests with a body must be sent with Content-Type: application/json")
    return await read_json(request)


async def list_dead(request: web.Request) -> web.StreamResponse:
    main = admin_app(request)
    raw = request.query.get("limit", "100")
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIST:
        raise BadRequest(f"limit must be an integer between 1 and {MAX_LIST}")
    rows = await main[STORE].dead_letters(int(raw))
    return json_response([
        {"id": r.id, "eventId": r.event_id, "url": mask_userinfo(r.url), "attempts": r.attempts,
         "lastError": scrub(r.last_error or ""), "updatedUs": r.updated_us}
        for r in rows
    ])


async def replay_dead(request: web.Request) -> web.StreamResponse:
    main = admin_app(request)
    usage = 'The body must be {"ids": [int, ...]} or {"all": true}'
    data = await _admin_json(request)
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


async def timeline(request: web.Request) -> web.StreamResponse:
    """A message's stored v1 record, its v2 events, its v1 callbacks and every attempt of them."""
    main = admin_app(request)
    try:
        t = await main[STORE].message_timeline(request.match_info["messageId"])
    except Exception:
        raise Unavailable("The store is unavailable", code="store-unavailable") from None
    if t.message is None and not t.events and not t.callbacks and not t.attempts:
        raise NotFound("Nothing is stored for this message id")
    return json_response(timeline_json(t))


async def list_deliveries(request: web.Request) -> web.StreamResponse:
    """Attempts by filter, newest first: ``status`` is an HTTP status (the attempt's) or an
    outcome (dead | delivered | pending: its callback's now)."""
    main = admin_app(request)
    query = dict(request.query)
    raw = query.pop("limit", "100")
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIST:
        raise BadRequest(f"limit must be an integer between 1 and {MAX_LIST}")
    status = query.pop("status", None)
    http_status = None
    if status is not None:
        if re.fullmatch(r"[0-9]{3}", status):
            http_status = int(status)
        else:
            query["outcome"] = status
    try:
        f = parse_filter(query, {"userId", "host", "since", "until", "outcome", "messageId", "webhookId"})
    except ValueError as e:
        raise BadRequest(str(e).replace("outcome", "status (an HTTP status or outcome)")) from None
    try:
        rows = await main[STORE].list_attempts(f, http_status, int(raw))
    except Exception:
        raise Unavailable("The store is unavailable", code="store-unavailable") from None
    return json_response([attempt_json(a, s) for a, s in rows])


async def _bulk(request: web.Request, action: str) -> web.StreamResponse:
    main = admin_app(request)
    data = await _admin_json(request)
    if not isinstance(data, dict):
        raise BadRequest('The body must be a JSON object: a filter ({"userId", "host", "since", "until", "outcome",'
                         ' "ids"}), "all": true to match everything, "dryRun": true to count only')
    dry_run = data.pop("dryRun", False)
    match_all = data.pop("all", False)
    if not isinstance(dry_run, bool) or not isinstance(match_all, bool):
        raise BadRequest("dryRun and all must be booleans")
    try:
        f = parse_filter(data, FILTER_KEYS - {"messageId", "webhookId"})
    except ValueError as e:
        raise BadRequest(str(e)) from None
    if f.empty() and not match_all:
        raise BadRequest('Give a filter or ids ("all": true to match everything)')
    if action == "discard" and f.outcome not in (None, "dead"):
        raise BadRequest("discard removes dead letters only (outcome dead)")
    store = main[STORE]
    try:
        if action == "replay":
            count = await store.replay_matching(f, dry_run)
        else:
            count = await store.discard_matching(f, dry_run)
    except Exception:
        raise Unavailable("The store is unavailable", code="store-unavailable") from None
    if action == "replay" and not dry_run and count:
        main[DELIVERY].wake()
    key = "replayed" if action == "replay" else "discarded"
    return json_response({"matched": count, "dryRun": True} if dry_run else {key: count})


async def replay_deliveries(request: web.Request) -> web.StreamResponse:
    return await _bulk(request, "replay")


async def discard_deliveries(request: web.Request) -> web.StreamResponse:
    return await _bulk(request, "discard")


async def hosts(request: web.Request) -> web.StreamResponse:
    """This replica's view of callback endpoint health (in memory): per host its breaker state,
    recent successes and failures, latency, and when an open breaker lets its probe through."""
    main = admin_app(request)
    out = []
    for h in main[DELIVERY].health.snapshot():
        opened, probe = h.pop("openedUs"), h.pop("nextProbeUs")
        out.append(h | {"openedAt": iso_from_us(opened) if opened is not None else None,
                        "nextProbeAt": iso_from_us(probe) if probe is not None else None})
    return json_response(out)


async def migration(request: web.Request) -> web.StreamResponse:
    """The migration report (SPEC §8): every replica's counts (this one's flushed first)."""
    main = admin_app(request)
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
    main = admin_app(request)
    user = main[CONFIG].user(request.match_info["userId"])
    if user is None:
        raise NotFound("No users[] entry has this user_id")
    data = await _admin_json(request)
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
    app.router.add_get("/admin/messages/{messageId}/timeline", timeline, allow_head=False)
    app.router.add_get("/admin/deliveries", list_deliveries, allow_head=False)
    app.router.add_post("/admin/deliveries/replay", replay_deliveries)
    app.router.add_post("/admin/deliveries/discard", discard_deliveries)
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
