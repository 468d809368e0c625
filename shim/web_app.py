"""The HTTP server: app factory, middlewares (request id, logs, v1 errors) and lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from shim import __version__, console
from shim.basic_auth import basic_credentials, check_pair
from shim.clock import Clock, new_request_id, now_us
from shim.config import Config, UserConfig
from shim.errors import BodyTooLarge, MethodNotAllowed, NotFound, ShimError
from shim.facade import Sender, web_account, web_media, web_messages, web_v2
from shim.facade.web_v1 import V1Request, add_user_headers, v1_error_response
from shim.gateway import Gateway, web_ingest
from shim.keys import (
    ACCESS_LOG,
    CONFIG,
    DELIVERY,
    FAST_PATH,
    GATEWAY,
    MAIN_APP,
    METRICS,
    RECONCILER,
    REQUEST_ID,
    SENDER,
    STORE,
    UPSTREAM,
    USAGE,
    USER_HEADERS,
    USER_ID,
)
from shim.ops import AccessLog, Metrics, UsageTracker, web_ops
from shim.outbox import DeliveryEngine
from shim.reconcile import Reconciler
from shim.store import Store, open_store
from shim.upstream import Transport, UpstreamClient
from shim.web_fastpath import FastRoutes
from shim.web_server import V1AppRunner, undecodable_body

log = logging.getLogger("shim.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _from_http_exception(exc: web.HTTPException) -> ShimError:
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("The requested resource was not found")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"The method {exc.method} is not allowed on this resource")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return BodyTooLarge("The request body is larger than the limit")
    return ShimError(exc.reason or "Request failed", status=exc.status, category="bad-request",
                     code="bad-request") if exc.status < 500 else ShimError("Internal error")


MAX_REQUEST_ID = 128
# Probes and scrapes: their access lines are debug-level (they would drown the rest).
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REQUEST_ID_CHARS = frozenset(string.ascii_letters + string.digits + "-_.:/+=@")


def request_id(given: str | None) -> str:
    """The caller's ``X-Request-Id`` when it is a sane token (it is echoed, logged and passed on to
    v2 and callbacks), else a fresh one."""
    if given and len(given) <= MAX_REQUEST_ID and _REQUEST_ID_CHARS.issuperset(given):
        return given
    return new_request_id()


@web.middleware
async def v1_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, one JSON access-log line, and every error as a v1 body."""
    route = request.match_info.route.resource
    return await serve_v1(request, handler, route.canonical if route is not None else None)


async def serve_v1(request: V1Request, handler: Callable[[Any], Awaitable[web.StreamResponse]],
                   route_name: str | None) -> web.StreamResponse:
    """What every v1 request gets around its handler, on aiohttp's path (``v1_middleware``) and on
    the connection's fast path (``web_fastpath``) alike: ``route_name`` is the matched route's
    pattern, None when no route matched."""
    rid = request_id(request.headers.get("X-Request-Id"))
    request[REQUEST_ID] = rid
    started = time.perf_counter()
    try:
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            raise _from_http_exception(exc) from None
        except web.RequestPayloadError:
            # The body broke off, or did not decode (Content-Encoding: gzip on a body that isn't).
            raise undecodable_body() from None
    except ShimError as err:
        resp = v1_error_response(request, err)
    except Exception:
        log.exception("unhandled error", extra={"request_id": rid, "path": request.path})
        resp = v1_error_response(request, ShimError("An internal error occurred"))
    resp.headers["X-Request-Id"] = rid
    extra = request.get(USER_HEADERS)  # the user's deprecation signals, if configured
    if extra:
        add_user_headers(resp, extra)
    app = request.app
    elapsed = time.perf_counter() - started
    method = request.method if request.method in METHODS else "OTHER"  # labels stay bounded
    route = route_name or "unmatched"
    log_route = route
    usage = app.get(USAGE)
    if usage is not None:
        uid = request.get(USER_ID)
        if uid is not None:
            usage.endpoint(uid, request.method, route)
        elif route_name is None and request.path.startswith("/v1/"):
            # A v1 endpoint shim does not serve: counted (by its path shape) for the user whose
            # v1 credentials came with it.
            user = _v1_caller(request, app[CONFIG])
            if user is not None:
                request[USER_ID] = user.user_id
                log_route = "unsupported " + usage.unsupported(user.user_id, request.method, request.path)
    metrics = app.get(METRICS)
    if metrics is not None:
        metrics.count_request(route, method, resp.status, elapsed)
    access = app.get(ACCESS_LOG)
    quiet = route in QUIET_ROUTES
    if access is not None and access.enabled(debug=quiet):
        access.request(rid, request.method, log_route, resp.status, round(elapsed * 1000, 2),
                       request.get(USER_ID), "debug" if quiet else "info")
    return resp


def _v1_caller(request: V1Request, cfg: Config) -> UserConfig | None:
    """The configured user whose v1 credentials a request carries (their ``api_token`` names them)."""
    given = basic_credentials(request.headers.get("Authorization"))
    if given is None:
        return None
    user = next((u for u in cfg.users if u.api_token == given[0]), None)
    if user is None or not check_pair(given, user.api_token, user.api_secret.get_secret_value()):
        return None
    return user


# What a reload (SIGHUP) applies: the users. Everything else is read once at start.
RESTART_SECTIONS = ("server", "upstream", "store", "callbacks", "admin", "retention", "reconcile", "sandbox")


def apply_reload(app: web.Application, new: Config) -> list[str]:
    """Swap in ``new``'s users (credentials, modes, routes, deprecation signals) without a restart:
    every component reads ``cfg.users`` through the one config object, the gateway re-indexes.
    Returns the other sections that differ: they need a restart and are not applied."""
    cfg = app[CONFIG]
    differ = []
    for name in RESTART_SECTIONS:
        old_section, new_section = getattr(cfg, name), getattr(new, name)
        if name == "upstream" and cfg.upstream.mode == "sandbox":  # base_url is the embedded simulator's
            new_section = new_section.model_copy(update={"base_url": old_section.base_url})
        if old_section != new_section:
            differ.append(name)
    cfg.users[:] = new.users
    app[GATEWAY].index_users()
    return differ


def make_runner(app: web.Application, cfg: Config, **kwargs: Any) -> web.AppRunner:
    """The one way shim is served (``cli.serve`` and the tests): aiohttp's own errors as v1 JSON
    and the request-head timeout ``server.header_timeout_s``. ``kwargs`` go to ``web.AppRunner``."""
    fast = None
    if cfg.server.fast_path and SENDER in app:  # the main app (the admin listener's has no hot route)
        fast = FastRoutes(app, serve_v1, web_messages.post_messages, cfg.callbacks.path, web_ingest.ingest,
                          cfg.server.max_body_bytes)
        app[FAST_PATH] = fast
    return V1AppRunner(app, header_timeout_s=cfg.server.header_timeout_s, fast=fast, **kwargs)


def build_app(
    cfg: Config, *, store: Store | None = None, start_workers: bool = True, transport: Transport | None = None,
    clock: Clock = now_us,
) -> web.Application:
    """The whole service as one aiohttp app. ``store``, ``transport`` (the way to v2) and ``clock``
    can be injected; by default they come from the config and the real clock."""
    app = web.Application(middlewares=[v1_middleware], client_max_size=cfg.server.max_body_bytes)
    app[CONFIG] = cfg
    app[METRICS] = Metrics()
    app[METRICS].set_build_info(__version__, cfg.upstream.mode)
    gateway = Gateway(cfg, clock)
    gateway.on_unroutable = app[METRICS].events_unroutable.inc
    app[USAGE] = UsageTracker(clock)
    app[METRICS].registry.register(app[USAGE].collector())
    app[STORE] = store or open_store(cfg.store.url, gateway, pool_size=cfg.store.pool_size, clock=clock,
                                         sqlite_writer=cfg.store.sqlite_writer)
    app[STORE].observer = app[METRICS].observe_store
    app[ACCESS_LOG] = AccessLog()
    app[UPSTREAM] = UpstreamClient(cfg.upstream, cfg.upstream.base_url, transport=transport,
                                   observer=app[METRICS].observe_upstream)
    app[DELIVERY] = DeliveryEngine(cfg, app[STORE], app[METRICS], clock=clock)
    app[DELIVERY].attempt_log = app[ACCESS_LOG]
    app[SENDER] = Sender(cfg, app[UPSTREAM], app[STORE], clock, on_enqueued=app[DELIVERY].wake,
                         url_refused=app[DELIVERY].policy.refuses_literal, usage=app[USAGE])
    app[RECONCILER] = Reconciler(cfg, app[STORE], app[UPSTREAM], app[METRICS], clock=clock,
                                 on_enqueued=app[DELIVERY].wake)
    web_ops.setup(app)
    if not cfg.admin.listen:
        console.add_routes(app)
    web_messages.setup(app)
    web_media.setup(app)
    web_account.setup(app)
    web_v2.setup(app)
    web_ingest.setup(app, gateway)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await app[ACCESS_LOG].start()
        await app[STORE].open()
        await app[UPSTREAM].start()
        await app[USAGE].start(app[STORE])
        await web_ops.sync_modes(app)

        async def refresh_modes() -> None:
            while True:
                await asyncio.sleep(web_ops.MODE_REFRESH_S)
                try:
                    await web_ops.sync_modes(app)
                except Exception:
                    logging.getLogger("shim").exception("could not read the users' modes")

        modes_task = asyncio.ensure_future(refresh_modes())
        if start_workers:
            await app[DELIVERY].start()
            if cfg.reconcile.enabled:
                await app[RECONCILER].start()
        yield
        modes_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await modes_task
        await app[RECONCILER].stop()
        await app[DELIVERY].stop()
        await app[USAGE].stop()
        await app[UPSTREAM].close()
        await app[STORE].close()
        await app[ACCESS_LOG].stop()

    if cfg.callbacks.username is None:
        logging.getLogger("shim").warning(
            "callbacks.username is not set: the callback endpoint accepts events without credentials")
    app.cleanup_ctx.append(lifecycle)
    return app


def build_admin_app(main: web.Application) -> web.Application:
    """The admin API alone, for its own listener (``admin.listen``); it serves ``main``'s state
    and has no lifecycle of its own (start it after ``main``, stop it before)."""
    admin = web.Application(middlewares=[v1_middleware], client_max_size=main[CONFIG].server.max_body_bytes)
    admin[MAIN_APP] = main
    admin[ACCESS_LOG] = main[ACCESS_LOG]
    web_ops.add_admin_routes(admin)
    console.add_routes(admin)
    return admin
