"""Typed application state (aiohttp ``web.AppKey``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .config import Config
    from .delivery import DeliveryEngine
    from .metrics import Metrics
    from .store import Store
    from .upstream import UpstreamClient

CONFIG: web.AppKey[Config] = web.AppKey("config")
STORE: web.AppKey[Store] = web.AppKey("store")
UPSTREAM: web.AppKey[UpstreamClient] = web.AppKey("upstream")
DELIVERY: web.AppKey[DeliveryEngine] = web.AppKey("delivery")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
