"""The operator console: server-rendered pages at ``/admin/`` over the same store and engine state
as the admin JSON API, behind the same admin credentials. No script runs in the pages (the
Content-Security-Policy allows none), so they render on the first response and work with the
keyboard and without a network beyond shim; the one stylesheet ships in the package."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined

from shim.config import mask_userinfo
from shim.core import v2_request_of
from shim.errors import BadRequest, NotFound, ShimError
from shim.keys import CONFIG, DELIVERY, MAIN_APP, REQUEST_ID, STORE, UPSTREAM, USAGE
from shim.ops import report, scrub
from shim.ops._guard import form_token, token_ok
from shim.ops.web_ops import admin_app
from shim.store import DeliveryFilter, Timeline

from ._views import ago, days_back, per_second, read_query, read_time, share, show_time, usage_chart

ROOT = "/admin/"
UI = "/admin/ui"
SEARCH_LIMIT = 50
LIST_LIMIT = 100
CHART_DAYS = 30
MAX_FIELD = 300
# Windows the health page counts events and attempts over (store index range scans).
RATE_WINDOWS_S = ((60, "minute"), (300, "5 minutes"))
log = logging.getLogger("shim.console")

_CSS = files("shim.console").joinpath("static/console.css").read_bytes()
CSS_URL = f"{UI}/console.css?v={hashlib.sha256(_CSS).hexdigest()[:12]}"
NAV = ((ROOT, "Search", "search"), (f"{UI}/deliveries", "Deliveries", "deliveries"),
       (f"{UI}/migration", "Migration", "migration"), (f"{UI}/health", "Health", "health"))
# No script, no frames, forms and styles from shim only: a page cannot be turned against itself.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self';"
                               " frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # no-referrer would make browsers send "Origin: null" with the console's own forms.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_env = Environment(loader=PackageLoader("shim.console", "templates"), autoescape=True, undefined=StrictUndefined,
                   trim_blocks=True, lstrip_blocks=True)

Page = Callable[[web.Request, web.Application], Awaitable[web.StreamResponse]]


def _now_us(main: web.Application) -> int:
    return main[STORE].clock()


def _render(request: web.Request, main: web.Application | None, template: str, status: int = 200,
            **ctx: Any) -> web.Response:
    now = _now_us(main) if main is not None else None
    body = _env.get_template(template).render(
        nav=NAV, css_url=CSS_URL, root=ROOT, now=show_time(now) if now else "", error=ctx.pop("error", None), **ctx)
    resp = web.Response(body=body.encode(), status=status, content_type="text/html", charset="utf-8",
                        headers=HEADERS)
    resp.enable_compression()
    return resp


def _page(active: str, title: str) -> Callable[[Page], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """A console page: admin-authorised, and its errors shown to a browser (``Accept: text/html``)
    as a page (401 still asks for credentials); other clients get the v1 JSON error."""
    def wrap(handler: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def page(request: web.Request) -> web.StreamResponse:
            main: web.Application | None = None
            if not request.app.get(MAIN_APP, request.app)[CONFIG].admin.enabled:
                raise NotFound("The requested resource was not found")  # as any unknown path
            try:
                main = admin_app(request)
                return await handler(request, main)
            except ShimError as err:
                if "text/html" not in request.headers.get("Accept", ""):
                    raise  # an API client (curl, an SDK): the v1 JSON error, as everywhere else
                resp = _render(request, main if err.status != 401 else None, "error.html", err.status,
                               title=title, active=active, heading=f"{err.status}: {err.category}",
                               message=err.message)
                if err.status == 401:
                    resp.headers["WWW-Authenticate"] = 'Basic realm="shim admin"'
                return resp
            except web.HTTPException:
                raise
            except Exception:
                # A store that failed (locked, unreachable) or a bug: a browser gets a page it can
                # read, not a JSON body; the traceback goes to the log only, under the request id.
                if "text/html" not in request.headers.get("Accept", ""):
                    raise  # the v1 JSON 500, logged by the v1 middleware
                rid = request.get(REQUEST_ID) or ""
                log.exception("console page failed", extra={"request_id": rid, "path": request.path})
                return _render(request, main, "error.html", 500, title=title, active=active,
                               heading="500: internal error",
                               message="This page could not be built" + (f" (request id {rid})" if rid else "")
                                       + ": shim's log has the cause. Reload to try again.")
        return page
    return wrap


def _token(main: web.Application) -> str:
    cfg = main[CONFIG].admin
    assert cfg.username is not None and cfg.password is not None
    return form_token(cfg.password.get_secret_value(), cfg.username, _now_us(main) // 1_000_000)


def _check_token(main: web.Application, token: str | None) -> None:
    cfg = main[CONFIG].admin
    assert cfg.username is not None and cfg.password is not None
    if not token_ok(token, cfg.password.get_secret_value(), cfg.username, _now_us(main) // 1_000_000):
        raise ShimError("This form has expired or did not come from the console: reload the page and try again",
                        status=403, category="forbidden", code="form-expired")


def _see_other(location: str) -> web.Response:
    # A response, not aiohttp's HTTPSeeOther: the v1 middleware turns raised exceptions into errors.
    return web.Response(status=303, headers={"Location": location, **HEADERS})


def _href(message_id: str) -> str:
    return f"{UI}/messages/{quote(message_id, safe='')}"


def _order_link(order_key: str) -> dict[str, str]:
    """An outbox row's message id (a native v2 message's rows are keyed ``native_<id>``) and its link."""
    message_id = order_key.removeprefix("native_")
    return {"message_id": message_id, "href": _href(message_id)}


_NUMBER = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit() takes "²", which int() refuses


def _state_class(state: str) -> str:
    return {"sent": "ok", "received": "ok", "error": "bad"}.get(state, "warn")


# -- search ---------------------------------------------------------------------------------
@_page("search", "Search")
async def search(request: web.Request, main: web.Application) -> web.StreamResponse:
    store = main[STORE]
    q = request.query.get("q", "")[:MAX_FIELD]
    user = request.query.get("user", "")[:MAX_FIELD]
    raw_since, raw_until = request.query.get("since", "")[:40], request.query.get("until", "")[:40]
    users = [u.user_id for u in main[CONFIG].users]
    error = None
    since_us = until_us = None
    try:
        since_us, until_us = read_time(raw_since), read_time(raw_until)
    except ValueError as e:
        error = str(e)
    kind, value = read_query(q) if q.strip() else ("", "")
    if kind == "id" and error is None:
        t = await store.message_timeline(value)
        if t.message is not None or t.events or t.callbacks:
            return _see_other(_href(value))
    heading = "Latest messages"
    records = []
    if error is None and kind != "id":
        records = await store.find_messages(number=value or None, user_id=user or None, since_us=since_us,
                                            until_us=until_us, limit=SEARCH_LIMIT + 1)
        if value or user or since_us or until_us:
            heading = "Messages" + (f" to or from {value}" if value else "") + (f" of {user}" if user else "")
    elif kind == "id":
        heading = "No message, event or callback has this id"
    messages = [{
        "time": show_time(r.time_us), "id": r.id, "href": _href(r.id), "user": r.user_id, "direction": r.direction,
        "from_": r.from_, "to": r.to, "state": r.state, "state_class": _state_class(r.state),
        "delivery": r.delivery_state or "", "note": "dry-run" if r.dry_run else ("native v2" if r.native else
                                                 ("not bound to v2" if r.id.startswith("pending-") else "")),
    } for r in records[:SEARCH_LIMIT]]
    return _render(request, main, "search.html", title="Search", active="search", q=q, user=user, users=users,
                   since=raw_since, until=raw_until, heading=heading, messages=messages,
                   more=len(records) > SEARCH_LIMIT, error=error)


# -- timeline -------------------------------------------------------------------------------
def _v1_pairs(t: Timeline) -> list[tuple[str, str]]:
    if t.message is None:
        return []
    return [(k, mask_userinfo(v if isinstance(v, str) else json.dumps(v))) for k, v in t.message.to_v1().items()]


def _shown_json(value: Any) -> str:
    """JSON for a ``<pre>``, with every URL's userinfo masked (media URLs, base URLs, event payloads)."""
    return mask_userinfo(json.dumps(value, indent=2, ensure_ascii=False))


@_page("search", "Timeline")
async def timeline(request: web.Request, main: web.Application) -> web.StreamResponse:
    message_id = request.match_info["messageId"]
    t = await main[STORE].message_timeline(message_id)
    if t.message is None and not t.events and not t.callbacks and not t.attempts:
        raise NotFound("Nothing is stored for this message id")
    rec = t.message
    tags: list[tuple[str, str]] = []
    v2_body = None
    v2_url = ""
    v2_none = "shim sent no v2 request for this message."
    if rec is not None:
        tags = [(_state_class(rec.state), rec.state), ("", "outbound" if rec.direction == "out" else "inbound"),
                ("", f"user {rec.user_id}")]
        if rec.delivery_state:
            tags.append(("", f"delivery {rec.delivery_state}"))
        if rec.dry_run:
            tags.append(("warn", "dry-run"))
        if rec.native:
            tags.append(("", "sent natively on v2"))
            v2_none = "Sent natively on v2 through the passthrough: its request is the caller's own."
        elif rec.direction == "in":
            v2_none = "An inbound message: v2 sent it to shim."
        user = main[CONFIG].user(rec.user_id)
        if user is not None:
            body = v2_request_of(rec, user, main[CONFIG].server.public_url, main[UPSTREAM].base_url)
            if body is not None:
                v2_body = _shown_json(body)
                v2_url = mask_userinfo(f"{main[UPSTREAM].base_url}/users/{user.account_id}/messages")
        elif rec.direction == "out":
            v2_none = "This message's user is no longer configured: its v2 request cannot be rebuilt."
    events = []
    for _key, payload, status, received_us in t.events:
        try:
            ev = json.loads(payload)
        except ValueError:
            ev = {}
        ev = ev if isinstance(ev, dict) else {}
        events.append({"received": show_time(received_us), "type": str(ev.get("type", "")), "status": status,
                       "description": str(ev.get("description", "")),
                       "json": _shown_json(ev)})
    callbacks = [{
        "id": c.id, "event_id": c.event_id, "url": mask_userinfo(c.url),
        "fallback": mask_userinfo(c.fallback_url) if c.fallback_url else "", "status": c.status,
        "cls": {"delivered": "ok", "dead": "bad"}.get(c.status, "warn"), "attempts": c.attempts,
        "error": scrub(c.last_error) if c.last_error else "",
    } for c in t.callbacks]
    attempts = [{
        "time": show_time(a.at_us), "event_id": a.event_id, "target": a.target, "host": a.host,
        "status": a.status if a.status is not None else "—", "latency": f"{a.latency_us / 1000:.1f} ms",
        "outcome": a.outcome, "cls": "ok" if a.outcome == "ok" else "bad", "error": scrub(a.error),
    } for a in t.attempts]
    return _render(request, main, "timeline.html", title=f"Message {message_id}", active="search",
                   message_id=message_id, tags=tags, v1=_v1_pairs(t), v2_request=v2_body, v2_url=v2_url,
                   v2_none=v2_none, dry_run=bool(rec and rec.dry_run), events=events, callbacks=callbacks,
                   attempts=attempts, token=_token(main), confirm_url=f"{UI}/deliveries/confirm")


# -- deliveries -----------------------------------------------------------------------------
DONE = {"replay": "Replayed {n} callback{s}: they are queued for delivery again.",
        "discard": "Discarded {n} dead letter{s}."}


@_page("deliveries", "Deliveries")
async def deliveries(request: web.Request, main: web.Application) -> web.StreamResponse:
    store = main[STORE]
    now = _now_us(main)
    gauges = await store.outbox_gauges()
    dead = await store.dead_letters(LIST_LIMIT)
    pending = await store.pending_callbacks(LIST_LIMIT)
    hosts = []
    for h in main[DELIVERY].health.snapshot():
        lat = h["latencyMs"]
        hosts.append({
            "host": h["host"], "state": h["state"], "cls": {"closed": "ok", "open": "bad"}.get(h["state"], "warn"),
            "successes": h["successes"], "failures": h["failures"], "consecutive": h["consecutiveFailures"],
            "p50": lat["p50"] if lat["p50"] is not None else "—", "p99": lat["p99"] if lat["p99"] is not None else "—",
            "probe": show_time(h["nextProbeUs"]) if h["nextProbeUs"] else "",
        })
    done = ""
    action, n = request.query.get("done", ""), request.query.get("n", "")
    if action in DONE and _NUMBER.fullmatch(n):
        done = DONE[action].format(n=int(n), s="" if int(n) == 1 else "s")
    return _render(
        request, main, "deliveries.html", title="Deliveries", active="deliveries", done=done, gauges=gauges,
        oldest=ago(now - gauges["oldest_us"]) if gauges["oldest_us"] else "—",
        failing_count=sum(1 for h in hosts if h["state"] != "closed"), hosts=hosts,
        users=[u.user_id for u in main[CONFIG].users],
        dead_hosts=sorted({d.host for d in dead if d.host}),
        dead=[{"id": d.id, **_order_link(d.message_id), "user": d.user_id or "",
               "url": mask_userinfo(d.url), "attempts": d.attempts, "error": scrub(d.last_error or ""),
               "updated": show_time(d.updated_us)} for d in dead],
        pending=[{**_order_link(p.message_id), "user": p.user_id or "",
                  "url": mask_userinfo(p.url), "attempts": p.attempts, "next": show_time(p.next_attempt_us),
                  "leased": p.leased, "error": scrub(p.last_error or ""), "created": show_time(p.created_us)}
                 for p in pending],
        token=_token(main), confirm_url=f"{UI}/deliveries/confirm")


FORM_KEYS = ("action", "outcome", "userId", "host", "since", "until", "ids")


def _bulk_form(form: Any) -> tuple[str, DeliveryFilter, list[tuple[str, str]]]:
    """The replay/discard form: the action, its filter, and the fields to carry to the confirm
    step. ``BadRequest`` says what is wrong."""
    fields = {k: str(form.get(k, ""))[:MAX_FIELD].strip() for k in FORM_KEYS}
    action = fields["action"]
    if action not in ("replay", "discard"):
        raise BadRequest("action must be replay or discard")
    f = DeliveryFilter(user_id=fields["userId"] or None, host=fields["host"] or None,
                       outcome=fields["outcome"] or None)
    if f.outcome not in (None, "dead", "delivered", "pending"):
        raise BadRequest("Callbacks must be dead letters, delivered, pending or any")
    try:
        f.since_us, f.until_us = read_time(fields["since"]), read_time(fields["until"])
    except ValueError as e:
        raise BadRequest(str(e)) from None
    if fields["ids"]:
        parts = fields["ids"].replace(",", " ").split()
        if not parts or len(parts) > LIST_LIMIT or not all(_NUMBER.fullmatch(p) for p in parts):
            raise BadRequest("ids must be callback ids (numbers)")
        f.ids = [int(p) for p in parts]
    if f.empty():
        raise BadRequest("Choose at least one filter: callbacks, user, host, time or a callback")
    if action == "discard" and f.outcome != "dead":
        raise BadRequest("Discard removes dead letters only: choose dead letters")
    if f.outcome in (None, "delivered") and not (f.user_id or f.host or f.ids or f.since_us or f.until_us):
        # Dead and pending rows have their own indexes; "every delivered callback" is the history.
        raise BadRequest("Every delivered callback at once is too broad for the console: narrow it by user, host,"
                         " time or callback (the command line's `shim deliveries replay --all` does everything)")
    bound = str(form.get("upto", ""))
    if bound:
        if not _NUMBER.fullmatch(bound):
            raise BadRequest("upto must be an outbox id")
        f.max_id = int(bound)
    return action, f, list(fields.items())


def _describe(action: str, f: DeliveryFilter) -> list[tuple[str, str]]:
    out = [("Action", action), ("Callbacks", {"dead": "dead letters", None: "any"}.get(f.outcome, f.outcome or ""))]
    if f.ids:
        out.append(("Callback ids", ", ".join(map(str, f.ids))))
    if f.user_id:
        out.append(("User", f.user_id))
    if f.host:
        out.append(("Host", f.host))
    if f.since_us is not None:
        out.append(("Last change since", show_time(f.since_us)))
    if f.until_us is not None:
        out.append(("Last change before", show_time(f.until_us)))
    return out


async def _form(request: web.Request) -> Any:
    try:
        return await request.post()
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("The form could not be read (it must be UTF-8, url-encoded)") from None


async def _bulk_request(request: web.Request, main: web.Application, title: str, confirmed: bool
                        ) -> tuple[str, DeliveryFilter, list[tuple[str, str]]] | web.Response:
    """A replay/discard form posted from the console (its token checked), or the page that says
    why nothing was changed. ``confirmed``: the apply step, which acts only up to what was counted."""
    form = await _form(request)
    _check_token(main, str(form.get("token", "")))
    try:
        action, f, fields = _bulk_form(form)
        if confirmed and f.max_id is None:
            raise BadRequest("Confirm from the page that shows the count (upto is missing)")
    except BadRequest as e:
        return _render(request, main, "error.html", 400, title=title, active="deliveries",
                       heading="Nothing was changed", message=e.message)
    return action, f, fields


async def _run(main: web.Application, action: str, f: DeliveryFilter, dry_run: bool) -> int:
    store = main[STORE]
    if action == "replay":
        count = await store.replay_matching(f, dry_run)
        if count and not dry_run:
            main[DELIVERY].wake()
        return count
    return await store.discard_matching(f, dry_run)


@_page("deliveries", "Confirm")
async def confirm(request: web.Request, main: web.Application) -> web.StreamResponse:
    got = await _bulk_request(request, main, "Confirm", confirmed=False)
    if isinstance(got, web.Response):
        return got
    action, f, fields = got
    if f.max_id is None:
        # What is counted now is what a confirmation acts on: nothing enqueued after this.
        f.max_id = (await main[STORE].outbox_gauges())["max_id"]
    count = await _run(main, action, f, dry_run=True)
    fields.append(("upto", str(f.max_id)))
    verb = "Replay" if action == "replay" else "Discard"
    consequence = ("They are delivered again with their original webhook-id." if action == "replay"
                   else "They are deleted and cannot be replayed afterwards.")
    return _render(request, main, "confirm.html", title=f"{verb} callbacks", active="deliveries", verb=verb,
                   action=action, count=count, described=_describe(action, f), consequence=consequence,
                   hidden=fields, token=_token(main), apply_url=f"{UI}/deliveries/apply", back=f"{UI}/deliveries")


@_page("deliveries", "Apply")
async def apply(request: web.Request, main: web.Application) -> web.StreamResponse:
    got = await _bulk_request(request, main, "Apply", confirmed=True)
    if isinstance(got, web.Response):
        return got
    action, f, _ = got
    count = await _run(main, action, f, dry_run=False)
    return _see_other(f"{UI}/deliveries?" + urlencode({"done": action, "n": count}))


# -- migration ------------------------------------------------------------------------------
@_page("migration", "Migration")
async def migration(request: web.Request, main: web.Application) -> web.StreamResponse:
    usage = main[USAGE]
    store = main[STORE]
    await usage.flush()
    rep = report(await store.usage_rows(), usage.unflushed(), [u.user_id for u in main[CONFIG].users])
    today = datetime.fromtimestamp(_now_us(main) / 1_000_000, UTC).date()
    days = days_back(today, CHART_DAYS)
    by_user: dict[str, list[tuple[str, str, int]]] = {}
    for uid, day, feature, count in await store.usage_daily(days[0]):
        by_user.setdefault(uid, []).append((day, feature, count))
    users = []
    for u in rep["users"]:
        cfg = main[CONFIG].user(u["userId"])
        users.append({
            "id": u["userId"], "mode": cfg.mode if cfg else "not configured", "v1_calls": u["v1Calls"],
            "v1_messages": u["v1Messages"], "native_messages": u["nativeMessages"],
            "share": share(u["nativeMessages"], u["v1Messages"]),
            "v1_features": [f for f in u["features"] if not f["feature"].startswith("native:")],
            "features": [{"feature": f["feature"], "count": f["count"], "last": show_time_iso(f["lastSeen"])}
                         for f in u["features"]],
            "chart": usage_chart(days, by_user.get(u["userId"], [])),
        })
    return _render(request, main, "migration.html", title="Migration", active="migration", users=users,
                   days=CHART_DAYS)


def show_time_iso(iso: str | None) -> str:
    return iso.replace("T", " ").removesuffix("Z") if iso else "—"


# -- health ---------------------------------------------------------------------------------
@_page("health", "Health")
async def health(request: web.Request, main: web.Application) -> web.StreamResponse:
    store = main[STORE]
    now = _now_us(main)
    try:
        await store.ping()
    except Exception:
        return _render(request, main, "health.html", 503, title="Health", active="health", store="unreachable",
                       gauges={"pending": "?", "dead": "?"}, oldest="?", open_hosts="?", rates=[])
    gauges = await store.outbox_gauges()
    rates = []
    for window_s, label in RATE_WINDOWS_S:
        a = await store.activity(now - window_s * 1_000_000)
        rates.append({"window": label, **{k: f"{a[k]} ({per_second(a[k], window_s)})"
                                          for k in ("events", "attempts_ok", "attempts_failed")}})
    open_hosts = sum(1 for h in main[DELIVERY].health.snapshot() if h["state"] == "open")
    return _render(request, main, "health.html", title="Health", active="health", store="ok", gauges=gauges,
                   oldest=ago(now - gauges["oldest_us"]) if gauges["oldest_us"] else "—", open_hosts=open_hosts,
                   rates=rates)


async def stylesheet(request: web.Request) -> web.StreamResponse:
    admin_app(request)
    resp = web.Response(body=_CSS, content_type="text/css", charset="utf-8",
                        headers={"Cache-Control": "private, max-age=86400, immutable",
                                 "X-Content-Type-Options": "nosniff"})
    resp.enable_compression()
    return resp


async def to_root(request: web.Request) -> web.StreamResponse:
    if not request.app.get(MAIN_APP, request.app)[CONFIG].admin.enabled:
        raise NotFound("The requested resource was not found")
    return web.Response(status=301, headers={"Location": ROOT})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin", to_root, allow_head=False)
    app.router.add_get(ROOT, search, allow_head=False)
    app.router.add_get(f"{UI}/messages/{{messageId}}", timeline, allow_head=False)
    app.router.add_get(f"{UI}/deliveries", deliveries, allow_head=False)
    app.router.add_post(f"{UI}/deliveries/confirm", confirm)
    app.router.add_post(f"{UI}/deliveries/apply", apply)
    app.router.add_get(f"{UI}/migration", migration, allow_head=False)
    app.router.add_get(f"{UI}/health", health, allow_head=False)
    app.router.add_get(f"{UI}/console.css", stylesheet, allow_head=False)

