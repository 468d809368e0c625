"""Every piece of typed application state (aiohttp ``web.AppKey``), shim's and the sandbox's, in one
place so a reader sees what each app carries."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from shim.config import Config
    from shim.facade import Sender
    from shim.gateway import Gateway
    from shim.ops import AccessLog, Metrics, UsageTracker
    from shim.outbox import DeliveryEngine
    from shim.reconcile import Reconciler
    from shim.sandbox import SandboxState
    from shim.store import Store
    from shim.upstream import UpstreamClient
    from shim.web_fastpath import FastRoutes

# shim
CONFIG: web.AppKey[Config] = web.AppKey("config")
STORE: web.AppKey[Store] = web.AppKey("store")
UPSTREAM: web.AppKey[UpstreamClient] = web.AppKey("upstream")
DELIVERY: web.AppKey[DeliveryEngine] = web.AppKey("delivery")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")
SENDER: web.AppKey[Sender] = web.AppKey("sender")
RECONCILER: web.AppKey[Reconciler] = web.AppKey("reconciler")
# The migration report's counters (v1 features used, per user).
USAGE: web.AppKey[UsageTracker] = web.AppKey("usage")
# On the admin listener's app: the main app whose state it serves.
MAIN_APP: web.AppKey[web.Application] = web.AppKey("main_app")
ACCESS_LOG: web.AppKey[AccessLog] = web.AppKey("access_log")
# The connection fast path's routes (set by ``make_runner`` when ``server.fast_path`` is on).
FAST_PATH: web.AppKey[FastRoutes] = web.AppKey("fast_path")
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
# The v1 user a request authenticated as (for its access-log line).
USER_ID: web.RequestKey[str] = web.RequestKey("user_id")
# Headers every response to that user carries (its configured deprecation signals), set by v1 auth.
USER_HEADERS: web.RequestKey[tuple[tuple[str, str], ...]] = web.RequestKey("user_headers")

# the sandbox (a separate app)
SANDBOX: web.AppKey[SandboxState] = web.AppKey("sandbox")
SANDBOX_SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("sandbox_session")
SANDBOX_TASKS: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("sandbox_tasks")
